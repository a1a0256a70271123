"""Failures that lose nothing: resume after SIGKILL (one run, every epoch once), a non-finite loss, a tracking
server that is not there, a model file carrying code."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest

from conftest import activated_env, mlflow_run_args, mlflow_store, tiny_config
from servers import free_port, responds
from tftrain.serving import KerasNetwork
from tftrain.values import registered_model_name

EPOCHS = 6


def command(tiny_data, out, engine: str, name: str) -> list[str]:
    return [sys.executable, "-m", "tftrain", "train", "--data-dir", str(tiny_data), "--epochs", str(EPOCHS),
            "--engine", engine, "--early-stopping", "false", "--tensorboard", "false", "--batch-size", "4",
            "--steps-per-execution", "1",  # about 0.4 s an epoch: room to be killed mid-epoch
            "--save-interval", "0",  # a backup every epoch: the kills below land between any two
            "--output-dir", str(out), "--run-name", name, "--model-name", name]  # fmt: skip


def run_killed(args: list[str], cwd, rng: random.Random, epochs_first: int = 1, when=None) -> bool:
    """Start the command; once it has printed `epochs_first` epochs, SIGKILL it after a random pause, or as soon as
    `when()` says so. False if it finished before that (nothing left to kill)."""
    process = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = threading.Event()

    def watch():
        count = 0
        for line in process.stdout:
            count += line.startswith("epoch ")
            if count >= epochs_first:
                seen.set()

    threading.Thread(target=watch, daemon=True).start()
    deadline = time.monotonic() + 300
    while not seen.is_set() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if when is None:
        time.sleep(rng.uniform(0.0, 0.4))  # anywhere in the next epoch: mid-step, mid-checkpoint, mid-logging
    while when is not None and not when() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGKILL)
    process.wait()
    return True


def kill_group_after(args: list[str], cwd, env: dict, prefix: str, pause: float = 0.0) -> None:
    """Start `args` in a process group of its own; when a line starting with `prefix` is printed, wait `pause`
    seconds and SIGKILL the whole group (the launcher or `mlflow run`, and the processes they started)."""
    process = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)  # fmt: skip
    for line in process.stdout:
        if line.startswith(prefix):
            break
    time.sleep(pause)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fit", "custom"])
def test_killed_three_times_then_finished_is_one_run_with_every_epoch_once(tmp_path, tiny_data, engine):
    rng = random.Random(f"resume-{engine}")
    with mlflow_store(tmp_path):
        subprocess.run(command(tiny_data, tmp_path / "ref", engine, "reference"), cwd=tmp_path, check=True,
                       capture_output=True, timeout=600)  # fmt: skip
        args = command(tiny_data, tmp_path / "out", engine, "crashy")
        kills = sum(run_killed(args, tmp_path, rng) for _ in range(3))
        assert kills == 3
        done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        assert "continuing run" in done.stdout
        said = re.search(r"training goes on after epoch (\d+)|training starts again at epoch 1", done.stdout)
        first = re.search(r"^epoch (\d+)/", done.stdout, re.MULTILINE)  # None: every epoch was done before
        restored = int(said.group(1) or 0) if said else -1
        assert restored >= 0 and (int(first.group(1)) if first else EPOCHS + 1) == restored + 1, done.stdout[-3000:]

        runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.mlflow.runName = 'crashy'")
        assert len(runs) == 1, runs[["run_id", "status"]]  # no second run
        run_id = runs["run_id"][0]
        assert runs["status"][0] == "FINISHED"
        client = mlflow.MlflowClient()
        for key in ("loss", "val_loss", "val_accuracy", "epoch_seconds"):
            steps = [m.step for m in client.get_metric_history(run_id, key)]
            assert sorted(steps) == list(range(1, EPOCHS + 1)), (key, steps)  # every epoch, once
        reference = mlflow.search_runs(search_all_experiments=True, filter_string="tags.mlflow.runName = 'reference'")
        final, expected = runs["metrics.val_accuracy"][0], reference["metrics.val_accuracy"][0]
        assert abs(final - expected) <= 0.05, (final, expected)
        assert client.get_model_version("crashy", "1").run_id == run_id
        assert not (tmp_path / "out" / ".resume").exists() or not any((tmp_path / "out" / ".resume").iterdir())


@pytest.mark.slow
def test_ctrl_c_between_backups_logs_only_the_epochs_a_backup_holds(tmp_path, tiny_data):
    """Ctrl-C after three epochs with no backup yet (save_interval far away): the interrupted run logs none of
    them, since the same command trains them again; its epochs are then logged once each, with the values of
    the training that the model comes from (logged before, those would have been skipped as already logged)."""
    args = command(tiny_data, tmp_path / "out", "fit", "ctrl-c")
    args[args.index("--save-interval") + 1] = "3600"
    with mlflow_store(tmp_path):
        # Ctrl-C as a terminal delivers it, even when the suite runs as a background job (SIGINT ignored there)
        first = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
        for line in first.stdout:
            if line.startswith("epoch 3/"):
                first.send_signal(signal.SIGINT)
                break
        output = line + first.communicate(timeout=120)[0]
        assert first.returncode == 130 and "Traceback" not in output, output[-3000:]
        (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
        assert f"run {run.info.run_id} stopped; the same command goes on from its last backup" in output
        assert run.info.status == "KILLED" and "loss" not in run.data.metrics, run.data.metrics
        done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "it stopped before its first backup: training starts again at epoch 1" in done.stdout
        printed = [float(v) for v in re.findall(r"^epoch \d+/\d+ .*?\bloss (\S+)", done.stdout, re.MULTILINE)]
        history = sorted(mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
        assert [m.step for m in history] == list(range(1, EPOCHS + 1))
        np.testing.assert_allclose([m.value for m in history], printed, atol=5.1e-5)  # lines show 4 decimals


def test_a_finished_run_is_not_continued(tmp_path, tiny_data):
    with mlflow_store(tmp_path):
        args = command(tiny_data, tmp_path / "out", "fit", "twice")
        args[args.index("--epochs") + 1] = "1"
        for _ in range(2):
            subprocess.run(args, cwd=tmp_path, check=True, capture_output=True, timeout=600)
        runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.mlflow.runName = 'twice'")
        assert len(runs) == 2 and set(runs["status"]) == {"FINISHED"}


@pytest.mark.parametrize("save_interval", ["0", "10"])
def test_a_non_finite_loss_fails_the_run_and_keeps_the_last_good_epoch(tmp_path, tiny_data, save_interval):
    """The learning rate jumps to 1e38 after two epochs (16 steps): the weights overflow and the loss is NaN.
    With save points 10 s apart, none has come yet: the failure itself writes the epochs' metrics and the best
    checkpoint."""
    with mlflow_store(tmp_path):
        args = command(tiny_data, tmp_path / "out", "fit", "diverges")
        args[args.index("--batch-size") + 1] = "64"
        args[args.index("--save-interval") + 1] = save_interval
        args += ["--lr-schedule", "piecewise", "--lr-boundaries", "16", "--lr-values", "0.002,1e38"]
        done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
        (line,) = [line for line in done.stderr.splitlines() if line.startswith("tftrain: error: ")]
        assert "the loss became nan in epoch 3" in line and "marked FAILED" in line
        (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
        assert run.info.status == "FAILED" and "the loss became nan" in run.data.tags["tftrain.failure"]
        assert [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")] == [1, 2]
        assert list((tmp_path / "out" / run.info.run_id / "checkpoints").glob("*.keras"))
        backups = list((tmp_path / "out" / ".resume").glob("*/backup-chief/latest.weights.h5"))
        assert len(backups) == (1 if save_interval == "0" else 0)


def silent_server() -> socket.socket:
    """A port on 127.0.0.1 that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    return listener


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_an_unreachable_tracking_server_is_named_before_training(tmp_path, tiny_data, kind):
    with silent_server() as listener:
        port = listener.getsockname()[1] if kind == "silent" else free_port()
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
        start = time.monotonic()
        done = subprocess.run(command(tiny_data, tmp_path / "out", "fit", "nowhere"), cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        seconds = time.monotonic() - start
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert done.stderr.startswith(f"tftrain: error: tracking server http://127.0.0.1:{port} is not reachable")
    assert seconds < 10, seconds
    assert not (tmp_path / "out").exists()  # nothing was started


def test_a_model_file_carrying_code_is_refused(tmp_path):
    """Served models load with Keras' safe_mode: a Lambda layer (arbitrary Python) is not deserialized."""
    import keras

    inputs = keras.Input((28, 28))
    outputs = keras.layers.Lambda(lambda x: keras.ops.sum(x, axis=-1))(inputs)
    keras.Model(inputs, outputs).save(tmp_path / "model.keras")
    with pytest.raises(ValueError, match="(?i)lambda"):
        KerasNetwork(tmp_path / "model.keras")


def backed_up(out: Path, epochs: int) -> bool:
    """Whether a backup in `out` of `epochs` or more epochs is written whole and the next has not begun: Keras
    copies the weights, then the epoch file, to *.bkp, then writes the weights, then the epoch file; so the epoch
    files say k and k - 1 and the four files were written in that order. Reads the epoch files and the times only
    (the weights would be opened under HDF5's lock, which the process, writing them, would fail on)."""
    for folder in out.glob(".resume/*/backup-chief"):
        names = ("latest.weights.h5.bkp", "training_metadata.json.bkp", "latest.weights.h5", "training_metadata.json")
        try:
            times = [(folder / name).stat().st_mtime_ns for name in names]
            before, latest = (json.loads((folder / name).read_text())["epoch"] for name in names[1::2])
        except (OSError, ValueError, KeyError):
            return False
        return latest == before + 1 >= epochs and times == sorted(times)
    return False


@pytest.mark.slow
def test_a_corrupt_backup_falls_back_to_the_copy_before_or_is_named(tmp_path, tiny_data):
    """Each run killed once a backup of its third epoch or later is written whole, then torn by the test: a kill at
    a random moment could tear the copy before it too, while Keras made it, and the test's premise with it (the
    refusal then, both copies torn, is the third case's, and correct)."""
    rng = random.Random("corrupt")
    whole_after_3 = lambda: backed_up(tmp_path / "out", 3)  # noqa: E731
    with mlflow_store(tmp_path):
        # the latest backup torn: training goes on from the copy before it, each epoch still logged once
        args = command(tiny_data, tmp_path / "out", "fit", "torn-once")
        assert run_killed(args, tmp_path, rng, epochs_first=3, when=whole_after_3)
        (backup,) = (tmp_path / "out" / ".resume").glob("*/backup-chief")
        (backup / "latest.weights.h5").write_bytes(b"torn by a crash")
        done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0 and "is corrupt; resuming from the one before it" in done.stdout, done.stderr
        (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
        steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")]
        assert run.info.status == "FINISHED" and sorted(steps) == list(range(1, EPOCHS + 1))

        # the epoch file torn (killed while Keras wrote it, seen in CI): the same fall-back, not a JSONDecodeError
        args = command(tiny_data, tmp_path / "out", "fit", "torn-epoch-file")
        assert run_killed(args, tmp_path, rng, epochs_first=3, when=whole_after_3)
        (backup,) = (tmp_path / "out" / ".resume").glob("*/backup-chief")
        (backup / "training_metadata.json").write_text("")
        done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0 and "is corrupt; resuming from the one before it" in done.stdout, done.stderr
        run = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                 filter_string="tags.mlflow.runName = 'torn-epoch-file'")[0]  # fmt: skip
        steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")]
        assert run.info.status == "FINISHED" and sorted(steps) == list(range(1, EPOCHS + 1))

        # both copies torn: a one-line error naming the file and what to do
        args = command(tiny_data, tmp_path / "out", "fit", "torn-twice")
        args[args.index("--epochs") + 1] = "30"  # long enough to be killed after its third epoch
        assert run_killed(args, tmp_path, rng, epochs_first=3, when=whole_after_3)
        (backup,) = (tmp_path / "out" / ".resume").glob("*/backup-chief")
        (backup / "latest.weights.h5").write_bytes(b"torn by a crash")
        (backup / "latest.weights.h5.bkp").write_bytes(b"torn as well")
        done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
        assert f"cannot resume: the backup {backup / 'latest.weights.h5'} is corrupt" in done.stderr
        assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_mlflow_run_killed_then_run_again_continues_in_one_run(project, tmp_path, tiny_data):
    """`mlflow run` makes a new run each time: the interrupted run's epochs move into it and the old run goes."""
    env = activated_env()
    params = {"data_dir": tiny_data, "epochs": EPOCHS, "early_stopping": "false", "tensorboard": "false",
              "batch_size": 4, "steps_per_execution": 1, "save_interval": 0, "output_dir": tmp_path / "out",
              "run_name": "project"}  # fmt: skip
    args = mlflow_run_args(project, "train", params, "resume")
    with mlflow_store(tmp_path):
        kill_group_after(args, tmp_path, env, "epoch 3/")  # mlflow run and the training process it started
        done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        runs = mlflow.search_runs(experiment_names=["resume"], output_format="list")
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        assert "tftrain.continues_run" in runs[0].data.tags
        steps = [m.step for m in mlflow.MlflowClient().get_metric_history(runs[0].info.run_id, "val_loss")]
        assert sorted(steps) == list(range(1, EPOCHS + 1))


def start_server(folder: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` (sqlite store, proxied artifacts) on 127.0.0.1:port, answering /health."""
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'store.db'}",
         "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not responds(f"http://127.0.0.1:{port}/health"):
        assert server.poll() is None and time.monotonic() < deadline, "mlflow server did not come up"
        time.sleep(0.5)
    return server


def stop(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


@pytest.mark.slow
def test_a_server_gone_mid_run_loses_nothing_and_sync_uploads_it(tmp_path, tiny_data):
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", "MLFLOW_EXPERIMENT_NAME": "offline"}
    server = start_server(tmp_path, port)
    args = command(tiny_data, tmp_path / "out", "fit", "offline")
    args[args.index("--epochs") + 1] = "8"
    training = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in training.stdout:
        if line.startswith("epoch 2/"):
            stop(server)  # the server goes away in the middle of the run
            break
    rest, errors = training.communicate(timeout=600)
    assert training.returncode == 1 and "Traceback" not in errors, errors[-3000:]
    assert "epoch 8/8" in rest  # training went on to the end
    (journal,) = (tmp_path / "out").glob("*/offline")
    assert f"upload them with: tftrain sync {journal}" in errors
    assert (journal / "model.keras").is_file()

    server = start_server(tmp_path, port)
    try:
        done = subprocess.run([sys.executable, "-m", "tftrain", "sync", str(journal)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
            mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
            (run,) = mlflow.search_runs(experiment_names=["offline"], output_format="list")
            client = mlflow.MlflowClient()
            assert run.info.status == "FINISHED"
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss")) == list(range(1, 9))
            assert {"checkpoints", "serving_example.json"} <= {  # (tensorboard is off here)
                f.path for f in client.list_artifacts(run.info.run_id)
            }
            assert client.get_model_version("offline", "1").run_id == run.info.run_id
            mlflow.set_tracking_uri(None)
        assert not journal.exists()
    finally:
        stop(server)


@pytest.mark.slow
def test_a_run_that_went_offline_leaves_the_next_steps_in_the_process_online(tmp_path, tiny_data, monkeypatch):
    """The offline journal belongs to its training run: after it, the same process (a notebook, a sweep) syncs the
    journal, exports the model and trains again, all logging to the server, none into the old run's journal."""
    import keras

    from tftrain.errors import TrainingFailed
    from tftrain.ship.export import export
    from tftrain.tracking.sync import replay_journal
    from tftrain.training.trainer import train

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    for key, value in {"MLFLOW_TRACKING_URI": uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    servers = [start_server(tmp_path, port)]

    class StopServer(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                stop(servers[0])

    cfg = tiny_config(tiny_data, epochs=3, save_interval=0, tensorboard=False, output_dir=str(tmp_path / "out"))
    try:
        with pytest.raises(TrainingFailed, match="the tracking server went away"):
            train(cfg, extra_callbacks=(StopServer(),))
        (journal,) = (tmp_path / "out").glob("*/offline")
        servers[0] = start_server(tmp_path, port)
        replay_journal(journal)
        exported = export(f"models:/{registered_model_name(cfg)}/1", output_dir=str(tmp_path / "out"))
        client = mlflow.MlflowClient()
        export_run = client.get_run(exported.litert.run_id)
        assert export_run.info.status == "FINISHED"
        assert "export" in [f.path for f in client.list_artifacts(export_run.info.run_id)]
        second = train(cfg.replace(run_name="after"))
        assert second.model is not None and not (tmp_path / "out" / second.run_id / "offline").exists()
        assert sorted(m.step for m in client.get_metric_history(second.run_id, "loss")) == [1, 2, 3]
    finally:
        mlflow.set_tracking_uri(None)
        stop(servers[0])


@pytest.fixture
def small_disk(tmp_path):
    """A 300 KB filesystem (tmpfs): too small for one checkpoint of the MLP."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_while_checkpointing_is_named_and_leaves_no_broken_model(tmp_path, tiny_data, small_disk):
    with mlflow_store(tmp_path):
        args = command(tiny_data, small_disk / "out", "fit", "full")
        done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
        (line,) = [line for line in done.stderr.splitlines() if line.startswith("tftrain: error: ")]
        assert "cannot write" in line and "No space left on device" in line and str(small_disk) in line
        (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
        assert run.info.status == "FAILED" and "No space left" in run.data.tags["tftrain.failure"]
        assert not list((small_disk / "out").glob("*/checkpoints/*.keras"))  # the cut-short one is set aside


@pytest.mark.slow
def test_two_workers_killed_then_started_again_continue_their_run(tmp_path, tiny_data):
    """A scheduler's multi-worker job (TF_CONFIG, no launcher) killed mid-epoch and started again: the workers
    agree on the epoch to go on from, and the chief continues its run."""
    from servers import tf_config_workers

    train = ["tftrain", "train", "--data-dir", str(tiny_data), "--strategy", "multi_worker", "--epochs", str(EPOCHS),
             "--batch-size", "4", "--steps-per-execution", "1", "--early-stopping", "false", "--tensorboard",
             "false", "--output-dir", str(tmp_path / "out"), "--run-name", "workers"]  # fmt: skip
    env = activated_env()
    popen = dict(cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with mlflow_store(tmp_path):
        workers = tf_config_workers(2, train, **popen)
        for line in workers[0].stdout:  # a second after epoch 3 is mid-epoch 4, away from the backups
            if line.startswith("epoch 3/"):
                break
        time.sleep(1.0)
        for worker in workers:
            worker.kill()
            worker.communicate()
        workers = tf_config_workers(2, train, **popen)
        outputs = [w.communicate(timeout=600)[0] for w in workers]
        assert [w.returncode for w in workers] == [0, 0], outputs[0][-4000:] + outputs[1][-4000:]
        assert "continuing run" in outputs[0] and "epoch 1/" not in outputs[0]
        assert "the workers go on after epoch 3, from their backups" in outputs[0]
        (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
        steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")]
        assert run.info.status == "FINISHED" and sorted(steps) == list(range(1, EPOCHS + 1))


def test_callback_counters_survive_a_resume(tmp_path, tiny_data):
    """Early stopping's patience, the plateau rule's counters and the best checkpoint value come back as saved."""
    import keras

    from tftrain.models.build import build_model
    from tftrain.training.callbacks import SaveClock, build_callbacks
    from tftrain.training.resume import CallbackState

    def fresh():
        clock = SaveClock(0.0)
        cfg = tiny_config(tiny_data, output_dir=str(tmp_path), lr_schedule="constant")  # the plateau rule on
        callbacks = build_callbacks(cfg, tmp_path, clock)
        model = build_model("mlp", 10)
        state = CallbackState(tmp_path / "backup", callbacks, clock)
        for c in [*callbacks, state]:
            c.set_model(model)
            c.on_train_begin()
        by_kind = {type(c): c for c in callbacks}
        return model, state, by_kind[keras.callbacks.EarlyStopping], by_kind[keras.callbacks.ReduceLROnPlateau]

    model, state, stop, plateau = fresh()
    stop.wait, stop.best, stop.best_epoch, stop.best_weights = 2, 0.25, 4, model.get_weights()
    plateau.wait, plateau.best, plateau.cooldown_counter = 1, 0.3, 0
    state.on_epoch_end(4)  # the backup of epoch 5 (1-based) is written now

    model, state, stop, plateau = fresh()
    assert (stop.wait, stop.best) == (0, None)  # what a plain restart would have
    model._initial_epoch = 5  # as BackupAndRestore sets it when it restores epoch 5
    state.on_train_begin()
    assert (stop.wait, stop.best, stop.best_epoch) == (2, 0.25, 4)
    assert (plateau.wait, plateau.best) == (1, 0.3) and len(stop.best_weights) == len(model.get_weights())


def test_a_backup_from_before_early_stopping_watches_resumes(tmp_path, tiny_data):
    """Under the default schedule early stopping watches the last quarter of the epochs only: a backup written
    before that has counters but no best weights yet, and the same command goes on from it (it once failed
    reading best weights that were never written)."""
    from tftrain.models.build import build_model
    from tftrain.training.callbacks import SaveClock, build_callbacks
    from tftrain.training.resume import CallbackState

    def fresh():
        clock = SaveClock(0.0)
        callbacks = build_callbacks(tiny_config(tiny_data, output_dir=str(tmp_path), epochs=8), tmp_path, clock)
        model = build_model("mlp", 10)
        state = CallbackState(tmp_path / "backup", callbacks, clock)
        for c in [*callbacks, state]:
            c.set_model(model)
            c.on_train_begin()
        return model, state

    model, state = fresh()
    state.on_epoch_end(1)  # the backup of epoch 2: early stopping starts watching at epoch 6
    assert not (tmp_path / "backup" / "best-weights.npz").exists()
    model, state = fresh()
    model._initial_epoch = 2  # as BackupAndRestore sets it when it restores epoch 2
    state.on_train_begin()


def test_workers_with_different_latest_backups_agree_on_one_epoch(tmp_path):
    """Two workers' real Keras backups, one killed after its epoch-3 backup and one before: both go on from epoch
    2 (the first from its copy before); a worker whose process died between writing the weights and the epoch file
    goes back to the copy before, not to weights newer than their epoch file; one without any backup makes all
    start afresh."""
    import threading

    import keras

    from tftrain.training.callbacks import SaveClock
    from tftrain.training.resume import Backup, agree_on_backups

    def backed_up(folder, epochs: int):
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile(optimizer="adam", loss="mse")
        model.optimizer.build(model.trainable_variables)
        backup = Backup(str(folder), SaveClock(0.0))
        backup.set_model(model)
        weights = {}
        for epoch in range(epochs):
            model.layers[0].kernel.assign(np.full((2, 1), float(epoch + 1), "float32"))
            backup.on_epoch_end(epoch)  # the backup of epoch + 1
            weights[epoch + 1] = model.get_weights()
        return model, weights

    def agreed(*folders):
        """agree_on_backups on each folder at once, a thread per worker, gathering through a barrier."""
        values, results = [None] * len(folders), [None] * len(folders)
        barrier = threading.Barrier(len(folders))

        def worker(i):
            def gathered(value):
                values[i] = value
                barrier.wait()
                seen = list(values)
                barrier.wait()
                return seen

            results[i] = agree_on_backups(folders[i], gathered)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(folders))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        return results

    ahead, behind = tmp_path / "ahead", tmp_path / "behind"
    model, weights = backed_up(ahead, 3)
    backed_up(behind, 2)
    assert agreed(ahead, behind) == [2, 2]
    restored = Backup(str(ahead), SaveClock(0.0))
    restored.set_model(model)
    restored.on_train_begin()
    assert model._initial_epoch == 2
    np.testing.assert_array_equal(model.get_weights()[0], weights[2][0])

    # killed between the weights and the epoch file: weights of epoch 3 beside the epoch file of 2
    torn, other = tmp_path / "torn", tmp_path / "other"
    model, weights = backed_up(torn, 2)
    model.layers[0].kernel.assign(np.full((2, 1), 3.0, "float32"))
    for name in ("latest.weights.h5", "training_metadata.json"):
        (torn / f"{name}.bkp").write_bytes((torn / name).read_bytes())
    model.save_weights(torn / "latest.weights.h5")
    backed_up(other, 2)
    assert agreed(torn, other) == [2, 2]
    restored = Backup(str(torn), SaveClock(0.0))
    restored.set_model(model)
    restored.on_train_begin()  # the copy before: epoch 2's weights, not the newer ones beside its epoch file
    np.testing.assert_array_equal(model.get_weights()[0], weights[2][0])

    fresh, nothing = tmp_path / "fresh", tmp_path / "nothing"
    backed_up(fresh, 2)
    assert agreed(fresh, nothing) == [0, 0] and not fresh.exists()
