"""The `serve` step: MLflow's scoring server (its FastAPI app and protocol: POST /invocations, /ping, /health,
/version) run by uvicorn in several worker processes, behind a guard that refuses, before anything is parsed,
what would otherwise cost the server seconds or end in a 5xx:

- a body over the limit (413, from its Content-Length, or counted as it streams in);
- a missing or unknown Content-Type (415);
- JSON nested deeper than any request of an image model (400; Python's parser dies with RecursionError).

Inside each worker, concurrent requests share the network's calls (serving.Batcher); the server answers from a
pool of threads large enough for them to meet. uvicorn stops gracefully on SIGTERM or Ctrl-C: it stops accepting,
answers the requests in flight, then exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tftrain.checks import check_address
from tftrain.tracking.logged_models import resolve_model

log = logging.getLogger(__name__)

MAX_BODY_MB = 10.0  # the default limit of a request body: 1,000 Fashion-MNIST images as JSON, or a 7 MB photo
MAX_DEPTH = 32  # JSON nesting: a batch of colour images in `instances` is 5 deep
THREADS = 64  # per worker: how many requests can be in the model at once, so that the batcher sees them together
GRACE_SECONDS = 30  # on SIGTERM, how long requests in flight get to finish
BODY_SECONDS = 60  # how long a request's body may take to arrive
CONTENT_TYPES = ("application/json", "text/csv", "application/vnd.apache.parquet")  # MLflow's scoring protocol
# Environment of the worker processes (uvicorn starts them, each calls create_app)
MODEL_ENV, MAX_BODY_ENV = "TFTRAIN_SERVE_MODEL", "TFTRAIN_SERVE_MAX_BODY"
# Memory of one worker beyond its model file, measured with the Fashion-MNIST champions (TensorFlow's runtime, or
# LiteRT's interpreter without TensorFlow, plus MLflow and uvicorn)
WORKER_BASE_BYTES = {"keras": 900e6, "litert": 220e6}

DUPLICATE = b"\0duplicate"  # what `header_map` gives a header sent more than once


def header_map(raw: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """An ASGI request's headers by lowercase name; one sent twice maps to DUPLICATE (servers differ on which of
    the two counts: MLflow's app takes the first, a dict of them the last)."""
    headers: dict[bytes, bytes] = {}
    for name, value in raw:
        name = name.lower()
        headers[name] = DUPLICATE if name in headers else value
    return headers


# A JSON string, escapes included, or an unterminated one to the end (a lone backslash last included): it always
# matches where it starts, so the search reads each byte once (a pattern that could fail rescanned from each quote)
_STRING = re.compile(rb'"[^"\\]*(?:\\[\s\S][^"\\]*)*(?:"|\\?\Z)')
# Python refuses to turn longer digit runs into an int (sys.get_int_max_str_digits, 4300 by default; since 3.10.7),
# with an error MLflow's scoring server does not catch (a 500)
MAX_DIGITS = getattr(sys, "get_int_max_str_digits", lambda: 4300)() or 10**9
_LONG_INT = re.compile(rb"[0-9]{%d}" % min(MAX_DIGITS, 10**6))


def without_strings(body: bytes) -> bytes:
    return _STRING.sub(b'""', body)


def json_depth(body: bytes) -> int:
    """How deep a JSON text nests arrays and objects (brackets inside strings do not count): the brackets' running
    sum outside strings, in numpy (about 10 ms for 10 MB)."""
    codes = np.frombuffer(without_strings(body), np.uint8)
    step = np.isin(codes, (ord("["), ord("{"))).astype(np.int32) - np.isin(codes, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))


def refusal(method: str, path: str, headers: dict[bytes, bytes], max_body: int) -> tuple[int, str] | None:
    """Status and reason for a request that is refused from its headers alone; None to read its body (or, for
    another path than /invocations, to let the app answer)."""
    if path != "/invocations":
        return None
    if method != "POST":
        return 405, f"method {method[:20]} not allowed; /invocations takes POST"
    if headers.get(b"content-type") == DUPLICATE:
        return 400, "more than one Content-Type header; allowed: one"
    content_type = headers.get(b"content-type", b"").decode("latin-1").strip()
    if _mime(headers) not in CONTENT_TYPES:
        received = repr(content_type) if content_type else "no Content-Type header"
        return 415, f"unsupported Content-Type: received {received}; allowed: {', '.join(CONTENT_TYPES)}"
    length = headers.get(b"content-length")
    if length is not None:
        if not length.isdigit():
            return 400, f"invalid Content-Length: received {length.decode('latin-1')[:40]!r}; allowed: a number"
        if int(length) > max_body:
            return 413, too_large(int(length), max_body)
    return None


def _mime(headers: dict[bytes, bytes]) -> str:
    """The media type of a request's Content-Type, without its parameters: application/json."""
    return headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()


def too_large(size: int | str, max_body: int) -> str:
    return (
        f"the request body is {size} bytes, over this server's limit of {max_body:,} bytes; send fewer images a "
        "request, or start the server with a larger --max-body-mb"
    )


def body_refusal(body: bytes, headers: dict[bytes, bytes]) -> tuple[int, str] | None:
    """Status and reason for a JSON body Python's parser would fail on with other errors than a syntax error (MLflow
    answers those with a 500): nested too deep, not UTF-8 (json.loads would take UTF-16 and UTF-32 too, past
    the checks here), an integer too long; None to let MLflow parse it."""
    if _mime(headers) != "application/json":
        return None
    if not body.strip():
        return 400, 'the request body is empty; allowed: JSON such as {"instances": [image, ...]}'
    if (encoding := json.detect_encoding(body)) not in ("utf-8", "utf-8-sig"):
        return 415, f"the JSON is {encoding.upper()}; allowed: UTF-8"
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH and (depth := json_depth(body)) > MAX_DEPTH:
        return 400, f"the JSON nests {depth} levels deep; allowed: at most {MAX_DEPTH} (images nest 5)"
    if _LONG_INT.search(body) and _LONG_INT.search(without_strings(body)):
        return 400, f"a number of the JSON has more than {MAX_DIGITS - 1} digits; pixels are 0..255"
    return None


async def checked(body: bytes, headers: dict[bytes, bytes], pool=None) -> tuple[int, str] | None:
    """body_refusal, off the event loop for a large body (about 10 ms for 10 MB), in place for a small one."""
    if len(body) < 65536:
        return body_refusal(body, headers)
    return await asyncio.get_running_loop().run_in_executor(pool, body_refusal, body, headers)


def error_body(status: int, reason: str) -> bytes:
    """An error answer in the shape of MLflow's own ({"error_code", "message"})."""
    codes = {400: "MALFORMED_REQUEST", 404: "ENDPOINT_NOT_FOUND", 408: "DEADLINE_EXCEEDED", 413: "REQUEST_LIMIT_EXCEEDED"}
    return json.dumps({"error_code": codes.get(status, "INVALID_PARAMETER_VALUE"), "message": reason}).encode()


async def _answer(send, status: int, reason: str, close: bool = False) -> None:
    body = error_body(status, reason)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:  # the rest of an over-limit body is not read: end the connection after the answer
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware in front of MLflow's app: the refusals above, then the body as read, replayed to the app."""

    def __init__(self, app, max_body: int):
        self.app, self.max_body = app, max_body
        self._pool: ThreadPoolExecutor | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self._pool is None:  # MLflow runs each request's parse and predict in the loop's default executor
            self._pool = ThreadPoolExecutor(THREADS, thread_name_prefix="request")
            asyncio.get_running_loop().set_default_executor(self._pool)
        headers = header_map(scope["headers"])
        if refused := refusal(scope["method"], scope["path"], headers, self.max_body):
            return await _answer(send, *refused, close=refused[0] == 413)
        if scope["path"] != "/invocations":
            return await self.app(scope, receive, send)
        try:  # a client that stops sending does not hold a request forever
            body = await asyncio.wait_for(self._body(receive), BODY_SECONDS)
        except asyncio.TimeoutError:
            return await _answer(send, 408, f"the body did not arrive within {BODY_SECONDS} s", close=True)
        if body is None:  # the client went away
            return None
        if len(body) > self.max_body:
            return await _answer(send, 413, too_large(f"over {len(body):,}", self.max_body), close=True)
        if refused := await checked(body, headers):
            return await _answer(send, *refused)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _body(self, receive) -> bytes | None:
        """The request's body as it streams in, stopped once past the limit (then longer than it); None if the
        client disconnects."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body or not message.get("more_body"):
                return b"".join(chunks)


def create_app():
    """uvicorn's factory, called in each worker: the model from the folder `serve` downloaded, in MLflow's app."""
    from mlflow.pyfunc import scoring_server

    model = scoring_server.load_model_with_mlflow_config(os.environ[MODEL_ENV])
    return Guard(scoring_server.init(model), int(os.environ[MAX_BODY_ENV]))


def runtime(local: Path) -> str:
    """Which runtime a downloaded tftrain model runs in: "litert" or "keras"."""
    return "litert" if any(local.rglob("*.tflite")) else "keras"


def default_workers(local: Path, cores: int | None = None, available: float | None = None) -> tuple[int, str]:
    """One worker per core, as many as half the available memory holds; and why, in words."""
    import psutil

    cores = cores or os.cpu_count() or 1
    available = psutil.virtual_memory().available if available is None else available
    files = sum(f.stat().st_size for f in local.rglob("*") if f.is_file())
    each = WORKER_BASE_BYTES[runtime(local)] + 2 * files
    workers = max(1, min(cores, int(available / 2 // each)))
    return workers, f"{cores} cores, each worker ~{each / 1e9:.2f} GB of {available / 1e9:.1f} GB available"


def serve(model_uri: str, host: str, port: int, workers: int | None, max_body_mb: float) -> None:
    """Download the model once, then run the guarded scoring server until SIGTERM or Ctrl-C."""
    import mlflow
    import uvicorn

    resolve_model(model_uri)
    check_address(host, port)
    folder = Path(tempfile.mkdtemp(prefix="tftrain-serve-"))
    try:
        local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(folder)))
        auto, why = default_workers(local)
        count = workers or auto
        max_body = int(max_body_mb * 1_000_000)
        threads = max(1, (os.cpu_count() or 1) // count)  # TensorFlow's threads in each worker: cores shared out
        os.environ.update({MODEL_ENV: str(local), MAX_BODY_ENV: str(max_body), "TF_NUM_INTRAOP_THREADS": str(threads)})
        log.info(
            f"serving {model_uri} ({runtime(local)}) at http://{host}:{port}/invocations: {count} worker"
            f"{'s' if count > 1 else ''} ({'--workers' if workers else why}), bodies up to {max_body_mb:g} MB; "
            "loading the model (ready when the server says 'Application startup complete')"
        )
        sys.stdout.flush()
        if count == 1:
            uvicorn.run(APP, factory=True, host=host, port=port, **UVICORN)
        else:
            _supervise(count, host, port)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


APP = "tftrain.ship.serve:create_app"
UVICORN = {"access_log": False, "timeout_graceful_shutdown": GRACE_SECONDS}


def _worker(host: str, port: int) -> None:
    """One worker process: a listening socket of its own on the shared port (SO_REUSEPORT), so that the kernel
    spreads new connections over the workers. (uvicorn's own workers share one socket, and asyncio accepts every
    pending connection at each wake-up: 16 keep-alive clients connecting together all landed on one worker, the
    other idle.)"""
    import socket

    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    uvicorn.Server(uvicorn.Config(APP, factory=True, host=host, port=port, **UVICORN)).run(sockets=[sock])


def _supervise(count: int, host: str, port: int) -> None:
    """`count` worker processes until SIGTERM or Ctrl-C, passed on to each (each answers what is in flight, then
    exits); a worker that dies otherwise is started again. (Plain processes, not multiprocessing's: its resource
    tracker outlived the workers holding the console's pipe, which kept the command from ending for 5 s.)"""
    import signal
    import subprocess
    import threading

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    command = [sys.executable, "-c", f"from tftrain.ship.serve import _worker; _worker({host!r}, {port})"]

    def start() -> subprocess.Popen:
        return subprocess.Popen(command, start_new_session=True)  # Ctrl-C reaches them through this process only

    processes = [start() for _ in range(count)]
    while not stop.wait(0.5):
        for i, process in enumerate(processes):
            if process.poll() is not None:
                log.warning(f"worker {process.pid} ended (exit code {process.returncode}); starting another")
                processes[i] = start()
    for process in processes:
        process.terminate()  # SIGTERM: uvicorn's graceful shutdown
    for process in processes:
        try:
            process.wait(GRACE_SECONDS + 10)
        except subprocess.TimeoutExpired:
            process.kill()
