"""The write-up's learning-rate schedules, built from the config once the number of steps is known."""

from __future__ import annotations

import keras

from tftrain.config import DEFAULT_BOUNDARY_FRACTIONS, TrainConfig


def build_learning_rate(
    cfg: TrainConfig, steps_per_epoch: int, peak: float
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """A constant `peak`, or a schedule over optimizer steps (`total` = epochs x steps_per_epoch) that peaks
    there."""
    total = cfg.epochs * steps_per_epoch
    if cfg.lr_schedule == "constant":
        return peak
    if cfg.lr_schedule == "piecewise":
        boundaries = cfg.piecewise_boundaries() or [max(1, int(total * f)) for f in DEFAULT_BOUNDARY_FRACTIONS]
        values = cfg.piecewise_values(peak)
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    decay_steps = cfg.decay_steps or total
    if cfg.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(peak, decay_steps, alpha=cfg.cosine_alpha)
    warmup = cfg.warmup_steps or steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(1, decay_steps - warmup),
        alpha=cfg.cosine_alpha,
        warmup_target=peak,
        warmup_steps=warmup,
    )
