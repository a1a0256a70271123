"""Where and how training runs: devices, the tf.distribute strategy, the precision policy, the seed.

Order matters: logical CPU devices must be declared, and MultiWorkerMirroredStrategy created, before TensorFlow
runs its first op; `build_runtime` is therefore the first thing `train` calls.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from tftrain.config import FIT_CANNOT_RUN, NO_TF_CONFIG, TrainConfig
from tftrain.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    strategy: tf.distribute.Strategy
    strategy_name: str  # what was picked (auto resolves to one of the others)
    replicas: int
    is_chief: bool  # the one worker that logs to MLflow and keeps files
    worker_count: int
    precision: str  # the dtype policy in force (auto resolves to one of the others)
    policy_before: str = "float32"  # Keras' global dtype policy before build_runtime set `precision`


def tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise UserError(f"invalid value for TF_CONFIG: received {raw[:80]!r}; allowed: JSON ({e.msg})") from None


def _worker_count(config: dict) -> int:
    cluster = config.get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def _is_chief(config: dict) -> bool:
    task = config.get("task", {})
    if "chief" in config.get("cluster", {}):
        return task.get("type") == "chief"
    return task.get("type", "worker") == "worker" and int(task.get("index", 0)) == 0


def worker_index() -> str:
    """This process's task in TF_CONFIG, as type-index (worker-1), for per-worker files."""
    task = tf_config().get("task", {})
    return f"{task.get('type', 'worker')}-{task.get('index', 0)}"


def _multi_worker(cfg: TrainConfig, workers: int) -> bool:
    return cfg.runtime.strategy == "multi_worker" or (cfg.runtime.strategy == "auto" and workers > 1)


def is_chief_process(cfg: TrainConfig) -> bool:
    """Whether this process logs to MLflow: always, except on a non-chief worker of a multi-worker job."""
    config = tf_config()
    return not _multi_worker(cfg, _worker_count(config)) or _is_chief(config)


def _declare_cpu_replicas(n: int) -> None:
    if n < 2:
        return
    if tf.config.list_physical_devices("GPU"):
        raise UserError(
            f"invalid value for cpu_replicas: received {n}; allowed: 0 on a host with GPUs (mirrored uses them)"
        )
    cpu = tf.config.list_physical_devices("CPU")[0]
    if len(tf.config.get_logical_device_configuration(cpu) or []) == n:
        return  # this process set it up already
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError:
        running = len(tf.config.list_logical_devices("CPU"))
        raise UserError(
            f"cpu_replicas={n}: TensorFlow already started in this process with {running} CPU device(s); "
            "allowed: a fresh process (the tftrain CLI and mlflow run start one)"
        ) from None


def _resolve(cfg: TrainConfig, workers: int) -> str:
    if _multi_worker(cfg, workers):
        return "multi_worker"
    if cfg.runtime.strategy != "auto":
        return cfg.runtime.strategy
    if len(tf.config.list_physical_devices("GPU")) > 1 or cfg.runtime.cpu_replicas > 1:
        return "mirrored"
    return "default"


def _mirrored() -> tf.distribute.Strategy:
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices)


def _one_device() -> tf.distribute.Strategy:
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")


def build_runtime(cfg: TrainConfig) -> Runtime:
    config = tf_config()
    workers = _worker_count(config)
    name = _resolve(cfg, workers)
    if name == "multi_worker" and cfg.runtime.resolved_engine == "fit":
        raise UserError(f"invalid combination: engine=fit with strategy=multi_worker; {FIT_CANNOT_RUN}")
    if name == "multi_worker" and workers < 1:
        raise UserError(NO_TF_CONFIG)
    _declare_cpu_replicas(cfg.runtime.cpu_replicas)
    strategies = {
        "multi_worker": tf.distribute.MultiWorkerMirroredStrategy,
        "mirrored": _mirrored,
        "one_device": _one_device,
        # TensorFlow's own default (first GPU, else CPU): what one_device does, with less overhead per step
        # (a default MLP epoch here: 0.86 s against 1.14 s under OneDeviceStrategy)
        "default": tf.distribute.get_strategy,
    }
    strategy = strategies[name]()
    precision = resolve_precision(cfg)
    before = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(cfg.runtime.seed)
    chief = name != "multi_worker" or _is_chief(config)
    return Runtime(strategy, name, strategy.num_replicas_in_sync, chief, max(workers, 1), precision, before)


@contextlib.contextmanager
def precision_in_force(rt: Runtime) -> Iterator[None]:
    """The dtype policy build_runtime set stays Keras' global one until the block ends, then the one before it
    comes back: a model built afterwards in the same process (a user's own, the benchmark's plain Keras, a test's)
    is not mixed by a training that went before it."""
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(rt.policy_before)


# precision=auto on a CPU, per built-in model: the bfloat16 instructions (oneDNN uses them) with which `tftrain bench`
# measured it faster than float32. The MLP's small products gain only with AMX (a Xeon: 13.0 s against 13.9 s for
# 20 epochs); with AVX512-BF16 alone its casts cost more than they save (an EPYC: 0.254 s against 0.234 s an epoch).
BFLOAT16_CPU_FLAGS = {"mlp": ("amx_bf16",), "cnn": ("amx_bf16", "avx512_bf16"), "cnn_bn": ("amx_bf16", "avx512_bf16")}


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def resolve_precision(cfg: TrainConfig) -> str:
    """precision=auto: what measured fastest at equal accuracy (docs/benchmarks.md). On a CPU, bfloat16 only
    for the built-in models, on the CPUs where it measured faster (BFLOAT16_CPU_FLAGS); other architectures are
    not measured here, so they stay in float32 there."""
    if cfg.runtime.precision != "auto":
        if cfg.runtime.precision == "mixed_float16" and not tf.config.list_physical_devices("GPU"):
            log.info("note: precision=mixed_float16 on a CPU has no float16 hardware to use and runs much slower than "
                  "float32 (the CNN about 15x here); use precision=auto, or mixed_bfloat16 on CPUs with AMX or "
                  "AVX512-BF16")  # fmt: skip
        return cfg.runtime.precision
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability") or (0, 0)
        return "mixed_bfloat16" if capability >= (8, 0) else "mixed_float16" if capability >= (7, 0) else "float32"
    if set(BFLOAT16_CPU_FLAGS.get(cfg.model.name, ())) & cpu_flags():
        return "mixed_bfloat16"
    return "float32"


def gathered(rt: Runtime, value: float) -> list[float]:
    """`value` from every worker of a multi-worker job (one per replica, in rank order): an all-gather, which also
    waits until every worker gets here. One process: [value]."""
    if rt.worker_count == 1:
        return [value]

    def local() -> tf.Tensor:
        return tf.distribute.get_replica_context().all_gather(tf.constant([value], tf.float64), axis=0)

    @tf.function  # in a graph: no eager warning; named functions, which AutoGraph can read (lambdas warn)
    def gather() -> tf.Tensor:
        return rt.strategy.run(local)

    return rt.strategy.experimental_local_results(gather())[0].numpy().tolist()


def barrier(rt: Runtime) -> None:
    """Multi-worker only: wait until every worker gets here, so that no worker exits while the chief is still
    logging, which the coordination service reports as a crash."""
    gathered(rt, 1.0)
