"""Learning-rate schedules: the rate at chosen steps equals the formula, alone and inside a real run."""

import math

import mlflow
import pytest

from conftest import tiny_config
from tftrain.config import TrainConfig
from tftrain.training.schedules import build_learning_rate
from tftrain.training.trainer import train

LR = 0.002


def at(schedule, step: int) -> float:
    return float(schedule(step))


def test_constant_is_a_plain_number():
    assert build_learning_rate(TrainConfig.from_flat(lr_schedule="constant"), 100, LR) == LR


def test_piecewise_explicit_like_the_write_up():
    cfg = TrainConfig.from_flat(lr_schedule="piecewise", lr_boundaries="100,200,300", lr_values="0.1,0.01,0.001,0.0001")
    s = build_learning_rate(cfg, 50, LR)
    expected = {0: 0.1, 100: 0.1, 101: 0.01, 200: 0.01, 201: 0.001, 301: 0.0001, 5000: 0.0001}
    for step, lr in expected.items():
        assert at(s, step) == pytest.approx(lr), step


def test_piecewise_default_drops_tenfold_at_half_and_three_quarters():
    s = build_learning_rate(TrainConfig.from_flat(lr_schedule="piecewise", learning_rate=LR, epochs=4), 25, LR)  # 100 steps
    assert [at(s, t) for t in (50, 51, 75, 76)] == pytest.approx([LR, LR / 10, LR / 10, LR / 100])


@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_cosine(alpha):
    s = build_learning_rate(
        TrainConfig.from_flat(lr_schedule="cosine", learning_rate=LR, decay_steps=400, cosine_alpha=alpha), 10, LR
    )
    for t in (0, 100, 200, 400, 800):
        cosine = 0.5 * (1 + math.cos(math.pi * min(t, 400) / 400))
        assert at(s, t) == pytest.approx(LR * ((1 - alpha) * cosine + alpha), abs=1e-9), t


def test_warmup_cosine_rises_linearly_then_decays():
    cfg = TrainConfig.from_flat(lr_schedule="warmup_cosine", learning_rate=LR, warmup_steps=50, decay_steps=250)
    s = build_learning_rate(cfg, 10, LR)
    for t in (0, 10, 25, 50):
        assert at(s, t) == pytest.approx(LR * t / 50, abs=1e-9), t
    for t in (50, 150, 250):
        assert at(s, t) == pytest.approx(LR * 0.5 * (1 + math.cos(math.pi * (t - 50) / 200)), abs=1e-9), t


def test_warmup_defaults_to_one_epoch_and_decay_to_all_steps():
    s = build_learning_rate(TrainConfig.from_flat(lr_schedule="warmup_cosine", learning_rate=LR, epochs=5), 20, LR)  # 100 steps
    assert at(s, 10) == pytest.approx(LR / 2) and at(s, 20) == pytest.approx(LR)
    assert at(s, 100) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"lr_schedule": "cosine", "reduce_lr_on_plateau": "true"}, "invalid combination: reduce_lr_on_plateau=true"),
        ({"lr_boundaries": "10,5"}, "invalid value for lr_boundaries: received '10,5'"),
        ({"lr_boundaries": "10", "lr_values": "1,2,3"}, "allowed: 2 values"),
        ({"lr_values": "0.1,-1,0.01"}, "invalid value for lr_values"),
        ({"cosine_alpha": 2.0}, "invalid value for cosine_alpha"),
        ({"warmup_steps": -1}, "invalid value for warmup_steps"),
    ],
)
def test_bad_schedule_settings(settings, message):
    from tftrain.errors import UserError

    with pytest.raises(UserError, match=message):
        TrainConfig.from_flat(**settings)


def test_plateau_is_off_by_default_under_a_schedule():
    assert TrainConfig.from_flat(lr_schedule="constant").trainer.plateau_enabled
    assert not TrainConfig().trainer.plateau_enabled
    assert not TrainConfig.from_flat(reduce_lr_on_plateau="false").trainer.plateau_enabled


@pytest.mark.parametrize("engine", ["fit", "custom"])
def test_logged_learning_rate_follows_the_schedule(store, tiny_data, engine):
    """640 examples, 512 for training, batch 64: 8 steps an epoch, 24 in all; warmup 8, then cosine over 16."""
    cfg = tiny_config(tiny_data, epochs=3, lr_schedule="warmup_cosine", engine=engine, log_lr_every_n_steps=4,
                      steps_per_execution=2, early_stopping=False, tensorboard=False)  # fmt: skip
    result = train(cfg)
    client = mlflow.MlflowClient()
    per_step = {m.step: m.value for m in client.get_metric_history(result.run_id, "learning_rate_step")}
    assert sorted(per_step) == [4, 8, 12, 16, 20, 24]
    formula = build_learning_rate(cfg, 8, cfg.training_batch(512, 1)[1])
    for step, value in per_step.items():
        assert value == pytest.approx(at(formula, step), rel=1e-5), step
    per_epoch = [m.value for m in client.get_metric_history(result.run_id, "learning_rate")]
    assert per_epoch == pytest.approx([at(formula, 8), at(formula, 16), at(formula, 24)], abs=1e-9)
