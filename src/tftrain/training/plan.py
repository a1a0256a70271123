"""How a run steps through its data: the batch size and learning rate worked out for the runtime, steps per epoch
and per compiled call, and the datasets each engine takes (fit: global batches; the custom loop: per-replica
batches, sharded per worker)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import tensorflow as tf

from tftrain.config import TrainConfig
from tftrain.data.augment import batch_augmenter
from tftrain.data.datasets import make_dataset
from tftrain.errors import UserError
from tftrain.training.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """How the run steps through its data: worked out from the config, the runtime and the training split."""

    batch: int  # per replica
    learning_rate: float  # the peak, before any schedule
    replicas: int
    steps_per_epoch: int
    steps_per_execution: int  # steps per compiled call

    @property
    def global_batch(self) -> int:
        return self.batch * self.replicas


def plan_steps(cfg: TrainConfig, rt: Runtime, examples: int) -> Plan:
    batch, rate = cfg.training_batch(examples, rt.replicas)
    steps = _steps_per_epoch(cfg, rt, examples, batch)
    if note := _few_steps_note(batch, rt, examples, steps):
        log.info(note)
    return Plan(batch, rate, rt.replicas, steps, steps_per_execution(cfg, rt))


def steps_per_execution(cfg: TrainConfig, rt: Runtime) -> int:
    """Keras 3's fit fails with steps_per_execution > 1 under a multi-replica strategy ("You must feed a value for
    placeholder tensor", keras-team/keras#19246): there, fit runs one step per call, and says so."""
    if cfg.runtime.resolved_engine == "fit" and rt.replicas > 1 and cfg.trainer.steps_per_execution > 1:
        log.info(f"note: engine=fit with {rt.replicas} replicas runs steps_per_execution=1 (keras-team/keras#19246)")
        return 1
    return cfg.trainer.steps_per_execution


def datasets(cfg: TrainConfig, rt: Runtime, train_xy, val_xy, global_batch: int, augment: str):
    """fit takes global batches and splits them itself; the custom loop takes per-replica batches, sharded per
    worker, through distribute_datasets_from_function. The `augment` preset changes training batches only."""
    augmenter = batch_augmenter(augment, cfg.runtime.seed)
    if cfg.runtime.resolved_engine == "fit":
        return (
            make_dataset(*train_xy, global_batch, shuffle=True, seed=cfg.runtime.seed, augment=augmenter),
            make_dataset(*val_xy, global_batch, shuffle=False),
        )

    def per_worker(xy, shuffle):
        def fn(ctx: tf.distribute.InputContext):
            shard = (ctx.num_input_pipelines, ctx.input_pipeline_id)
            batch = ctx.get_per_replica_batch_size(global_batch)
            # training: full batches only with several replicas (see full_batches_only)
            drop = shuffle and full_batches_only(cfg, rt)
            return make_dataset(*xy, batch, shuffle=shuffle, seed=cfg.runtime.seed, shard=shard, drop_remainder=drop,
                                augment=augmenter if shuffle else None)  # fmt: skip

        return rt.strategy.distribute_datasets_from_function(fn)

    return per_worker(train_xy, True), per_worker(val_xy, False)


def full_batches_only(cfg: TrainConfig, rt: Runtime) -> bool:
    """The custom engine over several replicas trains on full global batches only: an epoch's last, smaller batch
    left a replica an empty one, whose gradient fails in TensorFlow (ReluGrad shapes [0,19,14,32] != [0,20,15,3],
    the CNN on 40x30 images), and workers whose shards end at different steps would wait on each other. Each
    epoch is reshuffled, so what one epoch leaves out another trains on."""
    return cfg.runtime.resolved_engine == "custom" and rt.replicas > 1


def _steps_per_epoch(cfg: TrainConfig, rt: Runtime, examples: int, batch: int) -> int:
    global_batch = batch * rt.replicas
    if not full_batches_only(cfg, rt):
        return math.ceil(examples / global_batch)
    if examples < global_batch:
        raise UserError(
            f"invalid value for batch_size: received {batch}; with {rt.replicas} replicas the global batch "
            f"is {global_batch}, more than the {examples} training images; allowed: at most {examples // rt.replicas}"
        )
    return examples // global_batch


def _few_steps_note(batch: int, rt: Runtime, examples: int, steps: int) -> str | None:
    """A word when an epoch is only a few optimizer steps (a small folder at the default batch size), which can
    leave a model at chance after all its epochs."""
    suggested = max(8, 2 ** int(math.log2(max(1, examples // (20 * rt.replicas)))))
    if steps >= 4 or suggested >= batch:
        return None
    return (
        f"note: {examples} training images in batches of {batch * rt.replicas} make {steps} step"
        f"{'s' if steps > 1 else ''} an epoch; a smaller batch_size (such as {suggested}) learns more per epoch"
    )
