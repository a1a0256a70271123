"""The one place tftrain touches Keras private APIs, each where Keras 3 has no public one: a Keras upgrade that
renames or changes them breaks here (and in tests/test_keras_hooks.py), not across the package."""

from __future__ import annotations

import keras

# BackupAndRestore's files in its folder (Keras 3 names them privately): the weights and optimizer state, and the
# number of completed epochs; with double_checkpoint=True, the copy before each is <name>.bkp. resume.py reads them
# to tell a torn backup from a whole one.
BACKUP_WEIGHTS = "latest.weights.h5"
BACKUP_EPOCH = "training_metadata.json"
BACKUP_COPY = ".bkp"
# The counters that decide when Keras' callbacks act next, as their attributes (not documented as state): a resumed
# run puts them back so that it stops, cuts the rate and keeps checkpoints when an uninterrupted one would.
# EarlyStopping's `best_weights` goes with its counters when it restores the best weights.
COUNTERS = {
    keras.callbacks.EarlyStopping: ("wait", "best", "best_epoch"),
    keras.callbacks.ReduceLROnPlateau: ("wait", "best", "cooldown_counter"),
    keras.callbacks.ModelCheckpoint: ("best",),
}


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
