"""The one place tftrain touches Keras private APIs, each where Keras 3 has no public one: a Keras upgrade that
renames or changes them breaks here (and in tests/test_keras_hooks.py), not across the package."""

from __future__ import annotations

import keras


def initial_epoch(model: keras.Model) -> int:
    """The epoch training goes on from: the number of epochs done in the backup that BackupAndRestore's
    on_train_begin restored, 0 without one. Touches `model._initial_epoch`, which BackupAndRestore sets and
    `model.fit` reads; Keras exposes no public accessor, and the custom loop must start where fit would."""
    return getattr(model, "_initial_epoch", None) or 0


def should_save(checkpoint: keras.callbacks.ModelCheckpoint, epoch: int, logs: dict, filepath: str) -> bool:
    """ModelCheckpoint's own decision to save at `epoch`'s end: with save_best_only, whether the monitored value
    improved (then it becomes `checkpoint.best`), with its warnings and verbose messages. Touches
    `_set_monitor_op` (run first, as ModelCheckpoint.on_epoch_end does, once the metrics are built) and
    `_should_save_model`: BestCheckpoint decides as ModelCheckpoint does but writes later, and Keras has no public
    way to ask the one without the other."""
    if checkpoint.monitor_op is None:
        checkpoint._set_monitor_op()
    return checkpoint._should_save_model(epoch, None, logs, filepath)
