"""Served models under load, on 127.0.0.1: concurrent keep-alive clients, each sending one Fashion-MNIST test image
a request, against each server kind (`tftrain serve` with N workers, batching on or off; MLflow's own `mlflow
models serve -w 2` for comparison; Ray Serve with --ray); then one quiet client while two others stream 15 MB bodies;
then the hostile-input table. Prints Markdown tables.

    .venv/bin/python scripts/load.py                          # both champions, 16 clients, 10 s a row
    .venv/bin/python scripts/load.py --model-uri models:/tftrain-fashion-mnist-litert@champion --clients 32 --seconds 5
    .venv/bin/python scripts/load.py --rows tftrain-2 --ray   # one server kind, and Ray Serve

Bounded: each row runs --seconds after a 2-second warm-up; nothing listens beyond 127.0.0.1. The clients run in
this process on one asyncio loop (raw HTTP/1.1, the bodies encoded beforehand), so on a small machine they take
their share of the cores, as any client beside the server would. Every answer's class is checked against an
in-process prediction of the same model ("right" column).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CHAMPIONS = ("models:/tftrain-fashion-mnist@champion", "models:/tftrain-fashion-mnist-litert@champion")
STARTED = "Application startup complete."  # uvicorn says it once a worker (with the period)
# Server kinds: label -> (tftrain serve arguments, extra environment, stock mlflow models serve, what the log says
# when it is ready, how many times)
KINDS = {
    "tftrain-1": (("--workers", "1"), {}, False, STARTED, 1),
    "tftrain-2": (("--workers", "2"), {}, False, STARTED, 2),
    "tftrain-2-nobatch": (("--workers", "2"), {"TFTRAIN_BATCH_IMAGES": "1"}, False, STARTED, 2),
    "tftrain-2-wait1ms": (("--workers", "2"), {"TFTRAIN_BATCH_WAIT_MS": "1"}, False, STARTED, 2),
    "mlflow-2": (("-w", "2"), {}, True, STARTED, 2),
    "ray-2": (("--engine", "ray", "--replicas", "2"), {"RAY_DISABLE_USAGE_STATS": "1"}, False, "on Ray Serve at", 1),
}
DEFAULT_KINDS = [k for k in KINDS if not k.startswith("ray")]
BIG_BODY = 15_000_000


@dataclass
class Tally:
    times: list[float] = field(default_factory=list)
    errors: int = 0
    right: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


def request(body: bytes, content_type: str | None = "application/json", length: int | None = None) -> bytes:
    head = "POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    head += f"Content-Length: {len(body) if length is None else length}\r\n\r\n"
    return head.encode() + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Status, body and whether the server keeps the connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, body, headers.get("connection", "").lower() != "close"


async def client(port: int, bodies: list[bytes], expected: np.ndarray, offset: int, until: float, start: float,
                 tally: Tally) -> None:  # fmt: skip
    """One keep-alive connection sending one image a request until `until`; times those after `start`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    try:
        while (now := time.perf_counter()) < until:
            writer.write(bodies[i % len(bodies)])
            status, body, _ = await read_answer(reader)
            elapsed = time.perf_counter() - now
            if now >= start:
                tally.times.append(elapsed)
                if status != 200:
                    tally.errors += 1
                elif json.loads(body)["predictions"][0]["class"] == expected[i % len(expected)]:
                    tally.right += 1
            i += 1
    finally:
        writer.close()


async def big_sender(port: int, until: float, tally: Tally) -> None:
    """Streams 15 MB bodies (pixels of a batch too large, as JSON), one after another, until `until`."""
    body = request(b'{"instances": [' + b"[0]," * (BIG_BODY // 4) + b"[0]]}")
    while time.perf_counter() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(body)
            status, _, _ = await read_answer(reader)
            tally.statuses[status] = tally.statuses.get(status, 0) + 1
            writer.close()
        except (ConnectionError, asyncio.IncompleteReadError):
            tally.statuses[0] = tally.statuses.get(0, 0) + 1  # the server closed while we still sent: fine


async def load(port: int, bodies: list[bytes], expected: np.ndarray, clients: int, seconds: float) -> Tally:
    start = time.perf_counter() + 2.0
    until = start + seconds
    tally = Tally()
    await asyncio.gather(*(client(port, bodies, expected, 97 * c, until, start, tally) for c in range(clients)))
    return tally


def loud_load(port: int, bodies: list[bytes], expected: np.ndarray, seconds: float) -> tuple[Tally, dict[int, int]]:
    """One client while two others (in a process of their own, as other machines' clients would be) stream 15 MB
    bodies; the big bodies' answers by status (0: the server closed the connection first)."""
    senders = subprocess.Popen([sys.executable, __file__, "--stream-big", str(port), str(seconds + 4)],
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(1.0)  # they are sending by the time the warm-up ends
    tally = asyncio.run(load(port, bodies, expected, 1, seconds))
    out, _ = senders.communicate(timeout=120)
    return tally, {int(k): v for k, v in json.loads(out).items()}


async def stream_big(port: int, seconds: float) -> dict[int, int]:
    until, tally = time.perf_counter() + seconds, Tally()
    await asyncio.gather(big_sender(port, until, tally), big_sender(port, until, tally))
    return tally.statuses


def stats(tally: Tally, seconds: float) -> str:
    ms = np.array(tally.times) * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    right = f"{tally.right / max(1, len(ms) - tally.errors):.1%}"
    return f"{len(ms) / seconds:,.0f} | {p50:.1f} | {p95:.1f} | {p99:.1f} | {tally.errors} | {right}"


def hostile_requests(image: np.ndarray) -> dict[str, bytes]:
    """The fuzz set's hostile cases, as raw HTTP requests."""
    one = json.dumps({"instances": [image.tolist()]}).encode()
    return {
        "no Content-Type": request(one, content_type=None),
        "Content-Type text/plain": request(one, content_type="text/plain"),
        "JSON nested 100,000 deep": request(b"[" * 100_000 + b"]" * 100_000),
        "JSON nested 3,000 deep, in UTF-16": request(
            ('{"a": "\u2200", "instances": ' + "[" * 3000 + "]" * 3000 + "}").encode("utf-16-le")
        ),
        "a 5,000-digit number": request(b'{"instances": [' + b"9" * 5000 + b"]}"),
        "two Content-Type headers": request(b"[" * 3000 + b"]" * 3000, content_type="application/json")
        .replace(b"\r\n\r\n", b"\r\nContent-Type: text/csv\r\n\r\n", 1),
        "malformed JSON": request(b'{"instances": [[1, 2,'),
        "not UTF-8": request(b'{"instances": "\xff\xfe"}'),
        "Content-Length 1 GB, 10 bytes sent": request(b"{}", length=1_000_000_000)[:-2],
        "a 1,001-image batch": request(json.dumps({"instances": [image.tolist()] * 1001}).encode()),
        "wrong image shape": request(b'{"instances": [[1, 2, 3]]}'),
        "NaN pixels": request(b'{"instances": [[[NaN]]]}'),
        "b64 that is not base64": request(b'{"instances": [{"b64": "%%%"}]}'),
        "b64 that is not an image": request(b'{"instances": [{"b64": "aGVsbG8="}]}'),
        "an unknown input name": request(b'{"instances": [{"photo": "aGVsbG8="}]}'),
    }


def hostile(port: int, cases: dict[str, bytes], timeout: float = 5.0) -> dict[str, str]:
    """Each case on a fresh connection: the status, or what happened instead (a server waiting for a body that
    never comes: "none in 5 s")."""
    found = {}
    for name, raw in cases.items():
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            with contextlib.suppress(OSError):  # the server answered and closed while the rest was being sent
                s.sendall(raw)
            try:
                answer = s.recv(64).split(b"\r\n")[0].decode("latin-1")
                found[name] = answer.split(" ", 2)[1] if answer else "closed"
            except TimeoutError:
                found[name] = f"none in {timeout:g} s"
            except OSError as e:
                found[name] = type(e).__name__
    return found


def main() -> None:
    if sys.argv[1:2] == ["--stream-big"]:  # the loud clients' own process
        print(json.dumps(asyncio.run(stream_big(int(sys.argv[2]), float(sys.argv[3])))))
        return
    import mlflow

    from tftrain.data.datasets import load_dataset
    from tftrain.ship.predict import answers

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from servers import running_server, wait_for_log  # (the tests' server harness, not part of the package)

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", action="append", help="model to serve (repeatable); default: both champions")
    parser.add_argument("--clients", type=int, default=16, help="concurrent keep-alive clients")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds a row (after 2 s of warm-up)")
    parser.add_argument("--rows", default=",".join(DEFAULT_KINDS), help=f"server kinds, of: {', '.join(KINDS)}")
    parser.add_argument("--ray", action="store_true", help="also ray-2: Ray Serve on a local Ray cluster, 2 replicas")
    args = parser.parse_args()
    kinds = [k.strip() for k in args.rows.split(",") if k.strip()] + (["ray-2"] if args.ray else [])
    if unknown := [k for k in kinds if k not in KINDS]:
        parser.error(f"--rows: unknown kind(s) {', '.join(unknown)}; allowed: {', '.join(KINDS)}")
    if not 1 <= args.clients <= 256 or not 1 <= args.seconds <= 120:
        parser.error(f"--clients 1..256 and --seconds 1..120; received {args.clients}, {args.seconds}")

    images = load_dataset("fashion_mnist").x_test[:500]
    bodies = [request(json.dumps({"instances": [image.tolist()]}).encode()) for image in images]
    cases = hostile_requests(images[0])
    rows, quiet_rows, hostile_rows = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for uri in args.model_uri or list(CHAMPIONS):
            expected = np.array([row["class"] for row in answers(mlflow.pyfunc.load_model(uri), images)])
            served = [(kind, *KINDS[kind]) for kind in kinds]
            for kind, server_args, env, stock, ready, count in served:
                log_path = Path(tmp) / f"{kind}.log"
                print(f"{uri}: {kind} ...", file=sys.stderr, flush=True)
                with running_server(uri, log_path, args=server_args, env=env, stock=stock) as url:
                    wait_for_log(log_path, ready, count)
                    port = int(url.rsplit(":", 1)[1])
                    tally = asyncio.run(load(port, bodies, expected, args.clients, args.seconds))
                    rows.append(f"| {uri} | {kind} | {args.clients} | {stats(tally, args.seconds)} |")
                    print(rows[-1], file=sys.stderr, flush=True)  # progress; the tables at the end
                    if kind == "tftrain-2" or kind == kinds[0]:
                        quiet = asyncio.run(load(port, bodies, expected, 1, args.seconds))
                        loud, big = loud_load(port, bodies, expected, args.seconds)
                        big_answers = ", ".join(f"{n} x {s or 'closed'}" for s, n in sorted(big.items()))
                        quiet_rows.append(f"| {uri} | {kind} | {stats(quiet, args.seconds)} | "
                                          f"{stats(loud, args.seconds)} | {big_answers} |")  # fmt: skip
                        print(quiet_rows[-1], file=sys.stderr, flush=True)
                    hostile_rows[kind] = hostile(port, cases)

    print(f"\n{args.clients} concurrent keep-alive clients, one image a request, {args.seconds:g} s a row, "
          f"{platform.machine()}, {os.cpu_count()} cores shared by server and clients:\n")  # fmt: skip
    print("| model | server | clients | req/s | p50 ms | p95 ms | p99 ms | errors | right |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print("\nOne client alone, then while two others stream 15 MB bodies:\n")
    print("| model | server | quiet req/s | p50 | p95 | p99 | errors | right | loud req/s | p50 | p95 | p99 | errors "
          "| right | 15 MB bodies answered |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    print("\n".join(quiet_rows))
    print("\nHostile requests (HTTP status; the last model's servers):\n")
    print(f"| request | {' | '.join(hostile_rows)} |")
    print(f"|---|{'---|' * len(hostile_rows)}")
    for name in cases:
        print(f"| {name} | {' | '.join(found[name] for found in hostile_rows.values())} |")


if __name__ == "__main__":
    main()
