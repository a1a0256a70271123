"""Serving on Ray Serve: the same model, requests, answers and refusals as `tftrain serve`, in replicas spread over a
Ray cluster, batched by Ray Serve's `@serve.batch`.

Each replica downloads the model from the tracking store (so every node must reach it: a tracking server, or a
file store they share) and loads it with MLflow; a request goes through the same guard as `tftrain serve`
(ship/serve.py), then MLflow's scoring protocol (its `invocations`: parsing, the model's checks, the answer's
JSON). The model's network runs in `Scorer.batched`, where Ray gathers concurrent requests into one call.

`tftrain serve --engine ray` runs it from the command line; on Kubernetes, KubeRay's RayService runs `build`
(deploy/kuberay-rayservice.yaml).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from ray import serve

from tftrain import serving
from tftrain.cluster import ray_cluster
from tftrain.errors import UserError
from tftrain.ship.serve import MAX_BODY_MB, checked, error_body, header_map, refusal, too_large

log = logging.getLogger(__name__)

BATCH_IMAGES, BATCH_WAIT_S = 64, 0.002  # Ray Serve's batch: up to 64 requests, waiting up to 2 ms for them
APP_NAME = "tftrain"
# Warnings and errors only, and no access log: a line a request costs CPU and says nothing the client does not know
LOGGING = {"log_level": "WARNING", "enable_access_log": False}


class _OnLoop:
    """The network as MLflow's predict (in a thread) sees it; each call goes through the replica's batched method
    on its event loop."""

    def __init__(self, network, batched, loop: asyncio.AbstractEventLoop):
        self.input_shape, self.classes = network.input_shape, network.classes
        self._batched, self._loop = batched, loop

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return asyncio.run_coroutine_threadsafe(self._batched(images), self._loop).result()


@serve.deployment(max_ongoing_requests=BATCH_IMAGES, ray_actor_options={"num_cpus": 1})
class Scorer:
    """One replica: the model loaded once, answering POST /invocations (and /ping, /health, /version)."""

    def __init__(self, model_uri: str, max_body_mb: float = MAX_BODY_MB):
        import mlflow
        from mlflow.pyfunc import scoring_server

        os.environ[serving.BATCH_IMAGES_ENV] = "1"  # Ray batches; the model's own batcher passes calls through
        self._folder = tempfile.mkdtemp(prefix="tftrain-serve-")
        local = mlflow.artifacts.download_artifacts(model_uri, dst_path=self._folder)
        self._model = mlflow.pyfunc.load_model(local)
        self._schema = self._model.metadata.get_input_schema()
        self._invocations = scoring_server.invocations
        self._version = mlflow.__version__
        self._max_body = int(max_body_mb * 1_000_000)
        self._classifier = self._model.get_raw_model()
        self._network = self._classifier.network
        # Threads of their own: a request's parse and checks (one each, as many as Serve lets in), and the network
        # (one). In the loop's default pool, requests waiting for their batch took every thread, and the batch
        # none was left to run in.
        self._requests = ThreadPoolExecutor(BATCH_IMAGES, thread_name_prefix="request")
        self._runner = ThreadPoolExecutor(1, thread_name_prefix="network")

    def __del__(self):  # Ray Serve calls it when it stops the replica
        shutil.rmtree(self._folder, ignore_errors=True)

    @serve.batch(max_batch_size=BATCH_IMAGES, batch_wait_timeout_s=BATCH_WAIT_S)
    async def batched(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """Ray Serve's dynamic batching: the images of concurrent requests in calls of the network of up to
        BATCH_IMAGES images (Ray counts requests, each up to serving.MAX_BATCH images; a larger one alone)."""
        loop, rows, start = asyncio.get_running_loop(), [], 0
        while start < len(batches):
            end, count = start + 1, len(batches[start])
            while end < len(batches) and count + len(batches[end]) <= BATCH_IMAGES:
                count, end = count + len(batches[end]), end + 1
            rows.append(await loop.run_in_executor(self._runner, self._network, np.concatenate(batches[start:end])))
            start = end
        return np.split(np.concatenate(rows), np.cumsum([len(b) for b in batches])[:-1])

    async def __call__(self, request):
        from mlflow.exceptions import MlflowException
        from starlette.responses import Response

        if not isinstance(self._classifier.network, _OnLoop):  # the replica's event loop, which runs this
            self._classifier.network = _OnLoop(self._network, self.batched, asyncio.get_running_loop())
        path, method = request.url.path, request.method
        if path in ("/ping", "/health"):
            return Response("\n", media_type="application/json")
        if path == "/version":
            return Response(self._version, media_type="application/json")
        if path != "/invocations":
            return _error(404, f"no such path {path[:100]!r}; allowed: /invocations, /ping, /health, /version")
        if method != "POST":
            return _error(405, f"method {method} not allowed; /invocations takes POST")
        headers = header_map(request.scope["headers"])
        if refused := refusal(method, path, headers, self._max_body):
            return _error(*refused)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self._max_body:
                return _error(413, too_large(f"over {len(body):,}", self._max_body))
        if refused := await checked(bytes(body), headers, self._requests):
            return _error(*refused)
        content_type = headers[b"content-type"].decode("latin-1")
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                self._requests, self._invocations, bytes(body), content_type, self._model, self._schema
            )
        except MlflowException as e:
            return Response(e.serialize_as_json(), e.get_http_status_code(), media_type="application/json")
        except (ValueError, RecursionError) as e:  # what MLflow's parsing lets through: its own server gives a 500
            return _error(400, f"the request cannot be parsed: {str(e)[:200]}")
        return Response(result.response, result.status, media_type=result.mimetype)


def _error(status: int, reason: str):
    from starlette.responses import Response

    return Response(error_body(status, reason), status, media_type="application/json")


def build(args: dict):
    """The application Ray Serve runs (a RayService's import_path points here): args model_uri, and optionally
    replicas, max_body_mb, num_cpus (a replica's CPUs)."""
    unknown = set(args) - {"model_uri", "replicas", "max_body_mb", "num_cpus"}
    if unknown or "model_uri" not in args:
        raise ValueError(
            f"tftrain's Ray Serve application takes args model_uri (required), replicas, max_body_mb, num_cpus; "
            f"received {sorted(args)}"
        )
    cpus = float(args.get("num_cpus", 1))
    threads = {"TF_NUM_INTRAOP_THREADS": str(max(1, int(cpus)))}  # TensorFlow's threads: the replica's CPUs
    options = {
        "num_replicas": int(args.get("replicas", 1)),
        "ray_actor_options": {"num_cpus": cpus, "runtime_env": {"env_vars": threads}},
    }
    return Scorer.options(**options).bind(args["model_uri"], float(args.get("max_body_mb", MAX_BODY_MB)))


def serve_on_ray(model_uri: str, host: str, port: int, replicas: int, max_body_mb: float) -> None:
    """Run the application on the Ray cluster of RAY_ADDRESS (or a local one this command starts), with Ray Serve's
    HTTP proxy on host:port, until SIGTERM or Ctrl-C; then shut Serve down."""
    import mlflow
    import ray

    env = {k: v for k, v in os.environ.items() if k.startswith(("MLFLOW_", "TFTRAIN_", "PYTHONPATH"))}
    env.update(MLFLOW_TRACKING_URI=mlflow.get_tracking_uri(), MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    joined = bool(os.environ.get("RAY_ADDRESS"))
    cpus = os.cpu_count() or 1
    if not joined and replicas > cpus:  # they would wait for CPUs forever (a joined cluster may grow: Ray says so)
        raise UserError(f"--replicas {replicas} need {replicas} CPUs (one each); this machine has {cpus}: say "
                        f"--replicas {cpus} or fewer, or join a larger cluster with RAY_ADDRESS")  # fmt: skip
    # The replicas' own lines (TensorFlow Lite's, Ray's on stopping) stay in Ray's logs: a failing deployment
    # still ends serve.run with its error here
    ray_cluster.connect(os.environ.get("RAY_ADDRESS", ""), cpus, env, log_to_driver=False)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its INFO lines say what the next line says
    try:
        serve.start(http_options={"host": host, "port": port}, logging_config=LOGGING)
        log.info(f"starting {replicas} replica{'s' if replicas > 1 else ''} of {model_uri} on Ray Serve ...")
        serve.run(build({"model_uri": model_uri, "replicas": replicas, "max_body_mb": max_body_mb}),
                  name=APP_NAME, route_prefix="/", logging_config=LOGGING)  # fmt: skip
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        # (where Serve already ran on a joined cluster, its proxy keeps its address, and Ray warns so above)
        log.info(f"serving {model_uri} on Ray Serve at http://{host}:{port}/invocations; Ctrl-C or SIGTERM stops")
        while not stop.wait(1):
            pass
    finally:
        log.info("stopping Ray Serve: answering the requests in flight")
        if joined:  # the cluster's other Serve applications stay
            serve.delete(APP_NAME)
        else:
            serve.shutdown()
        ray.shutdown()
