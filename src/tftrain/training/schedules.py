"""The write-up's learning-rate schedules, built from the config once the number of steps is known."""

from __future__ import annotations

import keras

from tftrain.config import DEFAULT_BOUNDARY_FRACTIONS, TrainConfig


def build_learning_rate(
    cfg: TrainConfig, steps_per_epoch: int, peak: float
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """A constant `peak`, or a schedule over optimizer steps (`total` = epochs x steps_per_epoch) that peaks
    there."""
    total = cfg.trainer.epochs * steps_per_epoch
    if cfg.trainer.lr_schedule == "constant":
        return peak
    if cfg.trainer.lr_schedule == "piecewise":
        boundaries = cfg.trainer.piecewise_boundaries() or [max(1, int(total * f)) for f in DEFAULT_BOUNDARY_FRACTIONS]
        values = cfg.trainer.piecewise_values(peak)
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    decay_steps = cfg.trainer.decay_steps or total
    if cfg.trainer.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(peak, decay_steps, alpha=cfg.trainer.cosine_alpha)
    warmup = cfg.trainer.warmup_steps or steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(1, decay_steps - warmup),
        alpha=cfg.trainer.cosine_alpha,
        warmup_target=peak,
        warmup_steps=warmup,
    )
