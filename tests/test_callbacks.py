from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import tiny_config
from tftrain.models.build import build_model
from tftrain.training.callbacks import BestCheckpoint, EpochSummary, SaveClock, StopOnNonFiniteLoss, build_callbacks

KINDS = {
    "early_stopping": keras.callbacks.EarlyStopping,
    "checkpoint": BestCheckpoint,
    "reduce_lr_on_plateau": keras.callbacks.ReduceLROnPlateau,
    "tensorboard": keras.callbacks.TensorBoard,
    "epoch_summary": EpochSummary,
}


def kinds(callbacks):
    """The switchable ones: the save clock and the non-finite-loss guard are always there, first."""
    assert isinstance(callbacks[0], SaveClock) and isinstance(callbacks[1], StopOnNonFiniteLoss)
    return {type(c) for c in callbacks[2:]}


def write_up(tmp_path, **overrides):
    """The write-up's constant learning rate, under which its ReduceLROnPlateau is on (auto)."""
    return tiny_config(tmp_path, lr_schedule="constant", **overrides)


def test_all_write_up_callbacks_are_on_by_default(tmp_path):
    assert kinds(build_callbacks(write_up(tmp_path), tmp_path, SaveClock(0))) == set(KINDS.values())
    # the default schedule, warmup-cosine, sets the rate itself: the plateau rule is off under it
    by_default = kinds(build_callbacks(tiny_config(tmp_path), tmp_path, SaveClock(0)))
    assert by_default == set(KINDS.values()) - {keras.callbacks.ReduceLROnPlateau}


@pytest.mark.parametrize("switch", list(KINDS))
def test_each_callback_can_be_switched_off(tmp_path, switch):
    off = "false" if switch == "reduce_lr_on_plateau" else False  # a three-way switch: auto, true, false
    callbacks = build_callbacks(write_up(tmp_path, **{switch: off}), tmp_path, SaveClock(0))
    assert kinds(callbacks) == set(KINDS.values()) - {KINDS[switch]}


def test_callbacks_get_their_parameters(tmp_path):
    cfg = write_up(
        tmp_path, early_stopping_monitor="val_accuracy", early_stopping_patience=7, restore_best_weights=False,
        plateau_factor=0.5, plateau_patience=4, plateau_min_lr=1e-5, histogram_freq=3, checkpoint_monitor="val_loss",
    )  # fmt: skip
    by_kind = {type(c): c for c in build_callbacks(cfg, tmp_path / "run", SaveClock(0))}
    stop = by_kind[keras.callbacks.EarlyStopping]
    assert (stop.monitor, stop.patience, stop.restore_best_weights) == ("val_accuracy", 7, False)
    plateau = by_kind[keras.callbacks.ReduceLROnPlateau]
    assert (plateau.factor, plateau.patience, plateau.min_lr) == (0.5, 4, 1e-5)
    assert by_kind[keras.callbacks.TensorBoard].histogram_freq == 3
    checkpoint = by_kind[BestCheckpoint]
    assert checkpoint.monitor == "val_loss" and checkpoint.save_best_only
    assert checkpoint.filepath.endswith("run/checkpoints/model_{epoch:02d}_{val_accuracy:.4f}.keras")


def test_checkpoint_and_summary_during_a_real_fit(tmp_path, capsys):
    model = build_model("mlp")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x = np.random.default_rng(0).integers(0, 256, size=(64, 28, 28)).astype(np.float32)
    y = np.arange(64) % 10
    cfg = tiny_config(tmp_path, epochs=2, tensorboard=False, epoch_summary=False)
    callbacks = build_callbacks(cfg, tmp_path, SaveClock(0))
    capsys.readouterr()
    model.fit(x, y, validation_data=(x, y), epochs=2, verbose=0, callbacks=[*callbacks, EpochSummary(2)])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and lines[1].startswith("epoch 2/2  accuracy ")
    assert "val_loss" in lines[0] and "lr 1.00e-03" in lines[0]
    saved = list((tmp_path / "checkpoints").glob("model_0*_*.keras"))
    assert saved and all(p.stat().st_size > 100_000 for p in saved)


def _drive(clock: SaveClock, checkpoint: BestCheckpoint, model, epochs: list[tuple[float, float]]):
    """Epoch ends as fit would call them: (val_accuracy, a value every weight is set to before the epoch ends)."""
    for c in (clock, checkpoint):
        c.set_model(model)
        c.on_train_begin()
    for epoch, (accuracy, value) in enumerate(epochs):
        model.set_weights([np.full_like(w, value) for w in model.get_weights()])
        for c in (clock, checkpoint):
            c.on_epoch_end(epoch, {"val_accuracy": accuracy})


def test_best_checkpoint_between_save_points_is_written_at_the_end_with_the_best_weights(tmp_path):
    model = build_model("mlp")
    clock = SaveClock(3600.0)  # no save point during these epochs
    checkpoint = BestCheckpoint(str(tmp_path / "model_{epoch:02d}_{val_accuracy:.4f}.keras"), clock,
                                monitor="val_accuracy", mode="max")  # fmt: skip
    _drive(clock, checkpoint, model, [(0.5, 1.0), (0.7, 2.0), (0.6, 3.0)])
    assert not list(tmp_path.glob("*.keras"))  # nothing written yet
    checkpoint.on_train_end()
    (saved,) = tmp_path.glob("*.keras")
    assert saved.name == "model_02_0.7000.keras"  # the best epoch, not the last
    assert all((w == 2.0).all() for w in keras.models.load_model(saved).get_weights())
    assert all((w == 3.0).all() for w in model.get_weights())  # training's own weights are left as they were


def test_every_improvement_is_written_when_every_epoch_is_a_save_point(tmp_path):
    model = build_model("mlp")
    clock = SaveClock(0.0)
    checkpoint = BestCheckpoint(str(tmp_path / "model_{epoch:02d}.keras"), clock, monitor="val_accuracy", mode="max")
    _drive(clock, checkpoint, model, [(0.5, 1.0), (0.7, 2.0), (0.6, 3.0)])
    assert sorted(p.name for p in tmp_path.glob("*.keras")) == ["model_01.keras", "model_02.keras"]


def test_a_metrics_write_the_store_refuses_stops_training_instead_of_vanishing(store):
    """mlflow.keras.MlflowCallback would turn this into a warning and drop the epoch; tftrain's callback does not."""
    import mlflow

    from tftrain.errors import TrainingFailed
    from tftrain.tracking.epoch_metrics import EpochMetrics
    from tftrain.tracking.journal import Journal

    model = build_model("mlp")
    model.compile(optimizer=keras.optimizers.Adam(name="adam"), loss="sparse_categorical_crossentropy")
    with mlflow.start_run() as run:
        journal = Journal(Path(store.removeprefix("sqlite:///")).parent / "run", run.info.run_id)
        callback = EpochMetrics(SaveClock(0), journal)
        callback.set_model(model)
        callback.on_train_begin()
        callback.on_epoch_begin(0)
        with pytest.raises(TrainingFailed, match=r"^training stopped: the tracking store refused to log \(.*bad key"):
            callback.on_epoch_end(0, {"loss": 0.5, "bad key!?": 1.0})  # '!' and '?' are not allowed in metric names
    logged_files = [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)]
    assert "model_summary.txt" in logged_files and "optimizer.json" in logged_files
    assert not journal.active and not journal.folder.exists()  # refused, not lost: nothing went to the journal


def test_plateau_and_early_stopping_messages_land_in_the_epoch_lines(tmp_path, capfd):
    """A loss that cannot move (zero inputs, balanced labels in one batch: every gradient is 0 but for rounding,
    which plain SGD does not amplify the way Adam does): ReduceLROnPlateau cuts the LR and EarlyStopping stops;
    both say so inside tftrain's epoch lines, and Keras prints nothing of its own."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="sparse_categorical_crossentropy")
    x, y = np.zeros((60, 4), np.float32), np.arange(60) % 10
    cfg = write_up(
        tmp_path, epochs=8, checkpoint=False, tensorboard=False, plateau_patience=1, plateau_factor=0.2,
        early_stopping_patience=3,
    )  # fmt: skip
    callbacks = build_callbacks(cfg, tmp_path, SaveClock(0))
    model.fit(x, y, batch_size=60, validation_data=(x, y), epochs=8, verbose=0, callbacks=callbacks)
    out = capfd.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 4 and all(line.startswith(f"epoch {i}/8  loss ") for i, line in enumerate(lines, 1)), out
    assert "lr 1.00e-03  " in lines[0] and "plateau" not in lines[0]
    assert "lr 1.00e-03 -> 2.00e-04 (val_loss plateau)" in lines[1]
    assert "lr 2.00e-04 -> 4.00e-05 (val_loss plateau)" in lines[2]
    assert lines[3].endswith("s  early stop: no val_loss improvement in 3 epochs  (keeping epoch 1's weights)")


def test_without_the_epoch_summary_keras_prints_its_own_messages(tmp_path):
    by_kind = {type(c): c for c in build_callbacks(write_up(tmp_path, epoch_summary=False), tmp_path, SaveClock(0))}
    assert by_kind[keras.callbacks.EarlyStopping].verbose == 1
    assert by_kind[keras.callbacks.ReduceLROnPlateau].verbose == 1


def test_validation_near_chance_while_training_learns_is_a_warning_not_a_quiet_success():
    from tftrain.training.callbacks import chance_warning

    collapsed = chance_warning({"accuracy": 0.88, "val_accuracy": 0.09}, 11)
    assert collapsed.startswith(
        "warning: val_accuracy 0.09 is near chance (0.09 for 11 classes) while accuracy is 0.88"
    )
    assert chance_warning({"accuracy": 0.88, "val_accuracy": 0.70}, 11) == ""  # carries over
    assert chance_warning({"accuracy": 0.20, "val_accuracy": 0.10}, 11) == ""  # not learning yet: no claim
    assert chance_warning({"loss": 1.0}, 11) == ""


def test_under_a_decaying_schedule_early_stopping_and_the_best_checkpoint_watch_the_last_quarter(tmp_path):
    """Stopping mid-schedule stops at a high learning rate on a noisy validation; the checkpoint follows early
    stopping, so the file is the epoch training ends with."""
    from tftrain.config import TrainConfig

    callbacks = build_callbacks(TrainConfig.from_flat(epochs=20), tmp_path, SaveClock(0.0))
    (stopping,) = [c for c in callbacks if isinstance(c, keras.callbacks.EarlyStopping)]
    (best,) = [c for c in callbacks if isinstance(c, BestCheckpoint)]
    assert stopping.start_from_epoch == best.start_from_epoch == 15 and best.monitor == "val_loss"
    constant = build_callbacks(TrainConfig.from_flat(epochs=20, lr_schedule="constant"), tmp_path, SaveClock(0.0))
    assert [c.start_from_epoch for c in constant if isinstance(c, keras.callbacks.EarlyStopping)] == [0]
    chosen = build_callbacks(TrainConfig.from_flat(epochs=20, checkpoint_monitor="val_accuracy"), tmp_path, SaveClock(0.0))
    assert [(c.start_from_epoch, c.monitor) for c in chosen if isinstance(c, BestCheckpoint)] == [(0, "val_accuracy")]
