"""The Keras privates tftrain leans on (tftrain.keras_hooks) and the ModelCheckpoint naming it copies, checked on
tiny real models: each test fails if Keras renames or changes what it wraps."""


import json

import keras
import numpy as np
import pytest

from tftrain.keras_hooks import initial_epoch, should_save
from tftrain.training.callbacks import checkpoint_path


def tiny_model() -> keras.Model:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def tiny_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 4)).astype("float32"), rng.integers(0, 2, size=16)


def test_initial_epoch_is_the_epoch_backup_and_restore_restores(tmp_path):
    x, y = tiny_data()
    backup = keras.callbacks.BackupAndRestore(str(tmp_path), delete_checkpoint=False)
    tiny_model().fit(x, y, epochs=3, batch_size=8, callbacks=[backup], verbose=0)
    resumed = tiny_model()
    assert initial_epoch(resumed) == 0  # nothing restored yet
    restore = keras.callbacks.BackupAndRestore(str(tmp_path))
    restore.set_model(resumed)
    restore.on_train_begin()
    assert initial_epoch(resumed) == 3


def test_should_save_only_on_improvement_and_tracks_the_best(tmp_path):
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "m.keras"), monitor="val_accuracy", mode="max", save_best_only=True
    )
    checkpoint.set_model(tiny_model())
    decisions = [should_save(checkpoint, e, {"val_accuracy": v}, "m.keras") for e, v in enumerate([0.5, 0.4, 0.6])]
    assert decisions == [True, False, True]
    assert checkpoint.best == 0.6


def test_checkpoint_path_names_files_as_model_checkpoint_does(tmp_path):
    x, y = tiny_data()
    template = str(tmp_path / "m_{epoch:02d}_{val_accuracy:.4f}.keras")
    checkpoint = keras.callbacks.ModelCheckpoint(template)
    history = tiny_model().fit(x, y, epochs=2, batch_size=8, validation_data=(x, y), callbacks=[checkpoint], verbose=0)
    epochs = [{k: v[e] for k, v in history.history.items()} for e in range(2)]
    assert {checkpoint_path(template, e, logs) for e, logs in enumerate(epochs)} == {
        str(p) for p in tmp_path.glob("*.keras")
    }
    with pytest.raises(KeyError, match="val_accuracy"):
        checkpoint_path(template, 0, {"loss": 1.0})


def test_backup_and_restore_writes_the_files_resume_reads(tmp_path):
    """BackupAndRestore(double_checkpoint=True) names its files as keras_hooks says, the copy before each too."""
    from tftrain.keras_hooks import BACKUP_COPY, BACKUP_EPOCH, BACKUP_WEIGHTS

    x, y = tiny_data()
    backup = keras.callbacks.BackupAndRestore(str(tmp_path), double_checkpoint=True, delete_checkpoint=False)
    tiny_model().fit(x, y, epochs=2, batch_size=8, callbacks=[backup], verbose=0)
    for name in (BACKUP_WEIGHTS, BACKUP_EPOCH):
        assert (tmp_path / name).is_file() and (tmp_path / f"{name}{BACKUP_COPY}").is_file()
    assert json.loads((tmp_path / BACKUP_EPOCH).read_text())["epoch"] == 2


def test_the_counters_resume_restores_are_what_keras_callbacks_keep():
    """Each counter in COUNTERS is an attribute its callback sets when training begins (and EarlyStopping keeps
    best_weights), so a resumed run can put them back."""
    from tftrain.keras_hooks import COUNTERS

    x, y = tiny_data()
    made = [kind(monitor="loss") for kind in (keras.callbacks.EarlyStopping, keras.callbacks.ReduceLROnPlateau)]
    made.append(keras.callbacks.ModelCheckpoint("/dev/null/never.keras", monitor="loss", save_best_only=True))
    model = tiny_model()
    for callback in made:
        callback.set_model(model)
        callback.on_train_begin()
        assert set(COUNTERS[type(callback)]) <= set(vars(callback)), type(callback).__name__
    assert hasattr(made[0], "best_weights")
