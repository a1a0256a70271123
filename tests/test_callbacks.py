import io

import keras
import numpy as np
import pytest

from conftest import tiny_config
from tftrain.callbacks import EpochSummary, StopOnNonFiniteLoss, build_callbacks
from tftrain.models import build_model

KINDS = {
    "early_stopping": keras.callbacks.EarlyStopping,
    "checkpoint": keras.callbacks.ModelCheckpoint,
    "reduce_lr_on_plateau": keras.callbacks.ReduceLROnPlateau,
    "tensorboard": keras.callbacks.TensorBoard,
    "epoch_summary": EpochSummary,
}


def kinds(callbacks):
    """The switchable ones: the non-finite-loss guard is always there, first."""
    assert isinstance(callbacks[0], StopOnNonFiniteLoss)
    return {type(c) for c in callbacks[1:]}


def test_all_write_up_callbacks_are_on_by_default(tmp_path):
    assert kinds(build_callbacks(tiny_config(tmp_path), tmp_path)) == set(KINDS.values())


@pytest.mark.parametrize("switch", list(KINDS))
def test_each_callback_can_be_switched_off(tmp_path, switch):
    off = "false" if switch == "reduce_lr_on_plateau" else False  # a three-way switch: auto, true, false
    callbacks = build_callbacks(tiny_config(tmp_path, **{switch: off}), tmp_path)
    assert kinds(callbacks) == set(KINDS.values()) - {KINDS[switch]}


def test_callbacks_get_their_parameters(tmp_path):
    cfg = tiny_config(
        tmp_path, early_stopping_monitor="val_accuracy", early_stopping_patience=7, restore_best_weights=False,
        plateau_factor=0.5, plateau_patience=4, plateau_min_lr=1e-5, histogram_freq=3, checkpoint_monitor="val_loss",
    )  # fmt: skip
    by_kind = {type(c): c for c in build_callbacks(cfg, tmp_path / "run")}
    stop = by_kind[keras.callbacks.EarlyStopping]
    assert (stop.monitor, stop.patience, stop.restore_best_weights) == ("val_accuracy", 7, False)
    plateau = by_kind[keras.callbacks.ReduceLROnPlateau]
    assert (plateau.factor, plateau.patience, plateau.min_lr) == (0.5, 4, 1e-5)
    assert by_kind[keras.callbacks.TensorBoard].histogram_freq == 3
    checkpoint = by_kind[keras.callbacks.ModelCheckpoint]
    assert checkpoint.monitor == "val_loss" and checkpoint.save_best_only
    assert checkpoint.filepath.endswith("run/checkpoints/model_{epoch:02d}_{val_accuracy:.4f}.keras")


def test_checkpoint_and_summary_during_a_real_fit(tmp_path):
    model = build_model("mlp")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x = np.random.default_rng(0).integers(0, 256, size=(64, 28, 28)).astype(np.float32)
    y = np.arange(64) % 10
    out = io.StringIO()
    callbacks = build_callbacks(tiny_config(tmp_path, epochs=2, tensorboard=False, epoch_summary=False), tmp_path)
    model.fit(x, y, validation_data=(x, y), epochs=2, verbose=0, callbacks=[*callbacks, EpochSummary(2, out)])
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("epoch 2/2  accuracy ")
    assert "val_loss" in lines[0] and "lr 1.00e-03" in lines[0]
    saved = list((tmp_path / "checkpoints").glob("model_0*_*.keras"))
    assert saved and all(p.stat().st_size > 100_000 for p in saved)
