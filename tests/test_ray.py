"""launcher=ray on a real two-node Ray cluster on this machine (`ray start --head` and `ray start --address`, one
CPU each, so the two workers run on different nodes): one MLflow run, every epoch once, the same weights on both
ranks; the main job under `mlflow run` with a worker killed mid-epoch, restarted by Ray, the training going on from
the backups in the same run, then shipped; a sweep with two trial processes at once, one killed; Ray Serve
replicas. (The local cluster a command starts itself: tests/test_mlflow_run.py.)"""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import psutil
import pytest
from PIL import Image

from conftest import mlflow_store
from servers import free_port

RAY = str(Path(sys.executable).parent / "ray")
# Ray 2.60 turns token authentication on for the clusters `ray start` makes; every node and driver must agree
ENV = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_DISABLE_USAGE_STATS": "1"}


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """Two Ray nodes of one CPU each, the second with a folder of its own (on one machine, two nodes sharing one
    would each forward every worker's lines)."""
    folder = tmp_path_factory.mktemp("ray")
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--block"]
    with open(folder / "head.log", "w") as head_log, open(folder / "node.log", "w") as node_log:
        # each node in a session of its own, so that its processes (GCS, raylet, workers) go together at the end
        nodes = [subprocess.Popen([RAY, "start", "--head", "--port", str(port), "--include-dashboard", "false",
                                   *common], env=ENV, stdout=head_log, stderr=subprocess.STDOUT,
                                  start_new_session=True)]  # fmt: skip
        try:
            _wait_for_nodes(address, 1, nodes)
            nodes.append(subprocess.Popen([RAY, "start", "--address", address, "--temp-dir", str(folder / "node2"),
                                           *common], env=ENV, stdout=node_log, stderr=subprocess.STDOUT,
                                          start_new_session=True))  # fmt: skip
            _wait_for_nodes(address, 2, nodes)
            yield address
        finally:
            for node in reversed(nodes):
                node.send_signal(signal.SIGTERM)  # --block: the node stops its processes (both at once)
            for node in nodes:  # which takes Ray some 30 s of graceful timeouts: 5 s, then the whole session
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.wait(timeout=5)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.pid, signal.SIGKILL)
                node.wait(timeout=60)


def _wait_for_nodes(address: str, count: int, nodes: list) -> None:
    probe = f"import ray; ray.init(address={address!r}, logging_level='ERROR'); print(len(ray.nodes()))"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert all(n.poll() is None for n in nodes), "a ray start process ended"
        done = subprocess.run([sys.executable, "-c", probe], env=ENV, capture_output=True, text=True, timeout=120)
        if done.returncode == 0 and done.stdout.strip() == str(count):
            return
        time.sleep(1)
    raise AssertionError(f"the Ray cluster at {address} did not get {count} nodes: {done.stderr[-2000:]}")


def _train(tiny_data, out: Path, address: str, epochs: int, name: str) -> list[str]:
    return [sys.executable, "-m", "tftrain", "train", "--launcher", "ray", "--workers", "2", "--ray-address", address,
            "--data-dir", str(tiny_data), "--epochs", str(epochs), "--batch-size", "4", "--steps-per-execution", "1",
            "--early-stopping", "false", "--tensorboard", "false", "--output-dir", str(out), "--model-name", name,
            "--max-failures", "1"]  # fmt: skip


def _one_run():
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")]
    return run, steps


@pytest.mark.slow
def test_the_main_job_under_mlflow_run_trains_on_the_cluster_through_a_killed_worker_then_ships(
    project, tmp_path, tiny_data, ray_cluster
):
    """`mlflow run . -e main -P launcher=ray -P workers=2`: the workers train on the two nodes; rank 0, the worker
    that logs to MLflow, is SIGKILLed between two epochs' backups, Ray starts the group again (one line says so) and
    the workers go on from epoch 2; then the driver evaluates, exports and promotes, all in the one run MLflow made,
    every epoch logged once."""
    from conftest import activated_env, mlflow_run_args

    params = {"launcher": "ray", "workers": 2, "ray_address": ray_cluster, "data_dir": tiny_data, "epochs": 4,
              "batch_size": 4, "steps_per_execution": 1, "early_stopping": "false", "tensorboard": "false",
              "max_failures": 1, "model_name": "on-ray", "output_dir": tmp_path / "out"}  # fmt: skip
    with mlflow_store(tmp_path) as uri:
        env = {**activated_env(), **{k: ENV[k] for k in ("RAY_AUTH_MODE", "RAY_DISABLE_USAGE_STATS")},
               "MLFLOW_TRACKING_URI": uri}  # fmt: skip
        env.pop("MLFLOW_RUN_ID", None)
        process = subprocess.Popen(mlflow_run_args(project, "main", params, "ray-main"), cwd=tmp_path, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        lines = []
        for line in process.stdout:
            lines.append(line)
            if found := re.search(r"\(RayTrainWorker pid=(\d+)\) epoch 2/4 ", line):
                time.sleep(1.0)
                os.kill(int(found[1]), signal.SIGKILL)
                break
        rest, _ = process.communicate(timeout=900)
        output = "".join(lines) + rest
        assert process.returncode == 0, output[-6000:]
        assert re.search(r"worker failed \(rank 0: .*\); Ray starts the workers again \(1 of 1 restarts\)", output)
        assert "the workers go on after epoch 2, from their backups" in output
        assert len(re.findall(r"\) epoch 1/4 ", output)) == 1  # the restarted workers went on from a backup
        assert "Traceback" not in output and "\x1b[" not in output, output[-6000:]
        assert "ring_alg" not in output and "A worker died" not in output, output[-6000:]  # said in one line
        (run,) = mlflow.search_runs(experiment_names=["ray-main"], output_format="list")
        steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")]
        assert run.info.status == "FINISHED" and steps == [1, 2, 3, 4], output[-6000:]
        assert run.data.params["workers_resolved"] == "2" and run.data.tags["tftrain.workers_agree"] == "true"
        assert "tftrain.failure" not in run.data.tags  # a failure it went on from is not how it ended
        metrics = run.data.metrics
        assert 0 <= metrics["test_accuracy"] <= 1 and "tflite_float32_test_accuracy" in metrics
        assert "litert_test_accuracy" in metrics
        assert f"({run.info.run_id}), 4 epochs" in output
        client = mlflow.MlflowClient()
        for name in ("on-ray", "on-ray-litert"):
            (version,) = client.search_model_versions(f"name = '{name}'")
            assert version.run_id == run.info.run_id
            assert client.get_model_version_by_alias(name, "champion").version == version.version


@pytest.mark.slow
def test_a_sweep_on_the_cluster_recovers_a_killed_trial_process_and_a_killed_driver(tmp_path, tiny_data, ray_cluster):
    """`tftrain sweep --launcher ray --workers 2` on the two one-CPU nodes: two trial processes at once, one study
    and parent run. One process SIGKILLed mid-trial is started again by Ray, finds its trial dead and goes on from
    the trial's backup; then the driver is SIGKILLed (its processes die with it) and the same command continues the
    study. Every trial ends FINISHED with every epoch once, and the best model is gated."""
    args = [sys.executable, "-m", "tftrain", "sweep", "--launcher", "ray", "--workers", "2", "--ray-address",
            ray_cluster, "--max-failures", "1", "--data-dir", str(tiny_data), "--trials", "4", "--epochs", "8",
            "--sampler", "grid", "--pruner", "none", "--space", "learning_rate=choice(0.001,0.002,0.003,0.004)",
            "--batch-size", "4", "--steps-per-execution", "1", "--save-interval", "0", "--early-stopping", "false",
            "--tensorboard", "false", "--precision", "float32", "--model-name", "swept", "--output-dir",
            str(tmp_path / "out")]  # fmt: skip
    with mlflow_store(tmp_path) as uri:
        env = {**ENV, "MLFLOW_TRACKING_URI": uri}
        process = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)  # fmt: skip
        lines, killed_one, pids = [], False, set()
        for line in process.stdout:
            lines.append(line)
            pids.update(int(pid) for pid in re.findall(r"\(tftrain-sweep-\d pid=(\d+)\)", line))
            if not killed_one and (found := re.search(r"\(tftrain-sweep-\d pid=(\d+)\) epoch 2/8 ", line)):
                time.sleep(0.3)  # into epoch 3 (0.4 s an epoch here), after epoch 2's backup
                os.kill(int(found[1]), signal.SIGKILL)  # a trial process
                killed_one = True
            elif "was interrupted (its process is gone)" in "".join(lines) and re.search(r"\) epoch \d/8 ", line):
                process.send_signal(signal.SIGKILL)  # recovered, and a trial trains again (maybe the retried one)
                break
        first = "".join(lines)
        process.wait(timeout=60)
        assert process.returncode == -signal.SIGKILL, first[-6000:]
        assert "sweep on Ray: 2 trial processes at once (1 CPU each) on 2 node(s)" in first, first[-6000:]
        assert "Traceback" not in first and "[repeated" not in first, first[-6000:]  # each line as written
        deadline = time.monotonic() + 120
        while any(psutil.pid_exists(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.5)  # Ray ends a dead driver's processes within seconds
        again = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert again.returncode == 0, again.stdout[-6000:] + again.stderr[-3000:]
        assert "Traceback" not in again.stdout + again.stderr, again.stdout[-6000:]
        (parent,) = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`tftrain.sweep` = 'parent'",
                                       output_format="list")  # fmt: skip
        assert parent.info.status == "FINISHED" and parent.data.metrics["trials_complete"] == 4
        trials = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                    filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")  # fmt: skip
        assert sorted(r.info.status for r in trials) == ["FINISHED"] * 4, [(r.info.run_name, r.info.status)
                                                                          for r in trials]  # fmt: skip
        assert sorted(r.data.params["learning_rate"] for r in trials) == ["0.001", "0.002", "0.003", "0.004"]
        for run in trials:  # the retried trials too: each run took over its killed one's epochs
            steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")]
            assert sorted(steps) == list(range(1, 9)), (run.info.run_name, steps)
        assert "was interrupted (its process is gone)" in again.stdout  # the driver's trial(s) too
        retried = [r for r in trials if "tftrain.first_try" in r.data.tags]  # (a trial interrupted twice: one run)
        assert retried and all("tftrain.continues_run" in r.data.tags for r in retried)
        spans = sorted((r.info.start_time, r.info.end_time) for r in trials)
        assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans)), spans  # two at once
        client = mlflow.MlflowClient()
        (version,) = client.search_model_versions("name = 'swept'")
        assert client.get_model_version_by_alias("swept", "champion").version == version.version
        assert again.stdout.count(f"swept@champion is now version {version.version} ") == 1  # in the report, once


@pytest.mark.slow
def test_a_mistake_in_the_users_builder_ends_the_job_at_once_in_one_line(tmp_path, tiny_data, ray_cluster):
    """A UserError in the workers (here a builder that raises) is the same on every try: no restarts, no
    tracebacks, the run FAILED with the reason."""
    (tmp_path / "broken.py").write_text("def build(input_shape, num_classes):\n    raise ValueError('no layers yet')\n")
    with mlflow_store(tmp_path) as uri:
        args = [*_train(tiny_data, tmp_path / "out", ray_cluster, 2, "broken"), "--model", "broken.py:build"]
        done = subprocess.run(args, cwd=tmp_path, env={**ENV, "MLFLOW_TRACKING_URI": uri}, capture_output=True,
                              text=True, timeout=900)  # fmt: skip
        assert done.returncode == 2, done.stdout[-4000:] + done.stderr[-4000:]
        assert done.stderr.strip().splitlines() == [
            "tftrain: error: model builder broken.py:build raised ValueError: no layers yet"
        ], done.stderr[-4000:]
        assert "Traceback" not in done.stdout and "restarts)" not in done.stdout, done.stdout[-4000:]
        (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
        assert run.info.status == "FAILED" and "no layers yet" in run.data.tags["tftrain.failure"]


@pytest.mark.slow
def test_joining_without_the_clusters_token_is_one_line_that_says_so(tmp_path, tiny_data, ray_cluster):
    env = {k: v for k, v in ENV.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    with mlflow_store(tmp_path) as uri:
        done = subprocess.run(_train(tiny_data, tmp_path / "out", ray_cluster, 1, "no-token"), cwd=tmp_path,
                              env={**env, "MLFLOW_TRACKING_URI": uri}, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2 and done.stdout == "", done.stdout[-2000:] + done.stderr[-4000:]
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"tftrain: error: invalid value for ray_address: received {ray_cluster}; cannot join")
    assert "it refused this command's token" in line and "RAY_AUTH_MODE=token" in line


def test_the_forwarded_lines_keep_the_workers_words_without_rays_and_tensorflows_noise():
    import io

    from tftrain.quiet import ForwardedLines

    shown = io.StringIO()  # not a terminal: without Ray's colours
    lines = ForwardedLines(shown, gpu=False)
    cyan = "\x1b[36m(RayTrainWorker pid=7)\x1b[0m "
    lines.write(f"{cyan}epoch 1/2  accuracy 0.45\n(PlacementGroupCleaner pid=5) Failed to query Ray Train Controller "
                "actor state. State API may be temporarily unavailable. Continuing to monitor.\n")  # fmt: skip
    lines.write(f"{cyan}E0000 00:00:1796282128.356207    8071 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n")
    lines.write(f"{cyan}W0000 00:00:1796464910.693314   24150 preemption_notifier.cc:90] SIGTERM caught at "
                "2026-12-05T10:01:50.693313309+00:00\n")  # a worker Ray stops: said by tftrain's own line
    lines.write("(TrainController pid=3) Failed to stop PlacementGroupCleaner gracefully.\n(TrainController pid=3) "
                "Traceback (most recent call last):\n(TrainController pid=3)   File \"x.py\", line 1, in get\n"
                "(TrainController pid=3) ray.exceptions.GetTimeoutError: Get timed out\n")  # fmt: skip
    lines.write("(PlacementGroupCleaner pid=5) Exception in thread PlacementGroupCleanerMonitor:\n"
                "(PlacementGroupCleaner pid=5) Traceback (most recent call last):\n"
                "(PlacementGroupCleaner pid=5) ConnectionError: Found multiple active Ray instances\n")  # fmt: skip
    lines.write(f"{cyan}Traceback (most recent call last):\x1b[32m [repeated 2x across cluster]\x1b[0m\n")
    lines.write("run abc: model models:/m-1")
    lines.flush()
    assert shown.getvalue() == (
        "(RayTrainWorker pid=7) epoch 1/2  accuracy 0.45\n(RayTrainWorker pid=7) Traceback (most recent call last): "
        "[repeated 2x across cluster]\nrun abc: model models:/m-1"
    )


@pytest.mark.slow
def test_two_workers_on_two_nodes_stopped_by_ctrl_c_go_on_in_the_same_run_to_one_model(
    tmp_path, tiny_data, ray_cluster
):
    """Two workers, one on each node: Ctrl-C ends the run KILLED (exit 130); the same command goes on in that run,
    and in the end there is one run with every epoch once, the same weights on both ranks, one model version."""
    epochs = 5
    args = _train(tiny_data, tmp_path / "out", ray_cluster, epochs, "two-nodes")
    with mlflow_store(tmp_path) as uri:
        env = {**ENV, "MLFLOW_TRACKING_URI": uri}
        process = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)  # fmt: skip
        for line in process.stdout:
            if re.search(r"epoch 2/5 ", line):
                process.send_signal(signal.SIGINT)
                break
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 130 and "Traceback" not in output, output[-4000:]
        (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
        assert run.info.status == "KILLED" and f"run {run.info.run_id} stopped; the same command goes on" in output
        done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        assert "Traceback" not in done.stderr, done.stderr[-4000:]
        assert f"continuing run {run.info.run_id} from where it stopped" in done.stdout
        again, steps = _one_run()
        assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
        assert steps == list(range(1, epochs + 1))
        assert again.data.params["workers_resolved"] == "2" and again.data.params["strategy_resolved"] == "multi_worker"
        sums = json.loads(again.data.tags["tftrain.worker_weight_sums"])
        assert len(sums) == 2 and sums[0] == sums[1] and again.data.tags["tftrain.workers_agree"] == "true"
        (version,) = mlflow.MlflowClient().search_model_versions("name = 'two-nodes'")
        assert version.run_id == run.info.run_id and f"run {run.info.run_id}: model models:/" in done.stdout
        assert len(re.findall(r"epoch 5/5 ", done.stdout)) == 1, done.stdout[-4000:]  # rank 0 alone speaks
        # the nodes: each worker on one (ray start --num-cpus 1 each)
        assert "joined the Ray cluster at" in done.stdout and ": 2 nodes, 2 CPUs" in done.stdout, done.stdout[-4000:]


@pytest.mark.slow
def test_ray_serve_replicas_on_two_nodes_answer_like_the_model_and_refuse_alike(tmp_path, trained_and_exported,
                                                                                ray_cluster):  # fmt: skip
    """`tftrain serve --engine ray`: two replicas of the LiteRT model (one CPU each: one a node), concurrent
    clients answered as the model answers in-process, files and pixels; the guard's refusals and MLflow's alike;
    SIGTERM stops Serve."""
    from conftest import tiny_images
    from test_serve import hostile, hostile_requests

    _, exported, store = trained_and_exported
    images = tiny_images(32, seed=4)[0]
    expected = [row["class"] for row in mlflow.pyfunc.load_model(exported.litert.uri).predict(images)]
    port = free_port()
    env = {**ENV, "RAY_ADDRESS": ray_cluster, "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}
    command = [str(Path(sys.executable).parent / "tftrain"), "serve", "--engine", "ray", "--replicas", "2",
               "--model-uri", exported.litert.uri, "--port", str(port)]  # fmt: skip
    server = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)  # fmt: skip
    try:
        for line in server.stdout:
            if "on Ray Serve at" in line or server.poll() is not None:
                break
        url = f"http://127.0.0.1:{port}/invocations"

        def client(c: int) -> list[int]:
            got = []
            for i in range(c, 32, 8):
                body = json.dumps({"instances": [images[i].tolist()]}).encode()
                request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=60) as answer:
                    got.append(json.loads(answer.read())["predictions"][0]["class"])
            return got

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(client, range(8)))
        for c, got in enumerate(answers):
            assert got == expected[c::8]
        png = io.BytesIO()
        Image.fromarray(images[0]).save(png, "PNG")
        body = json.dumps({"instances": [{"b64": base64.b64encode(png.getvalue()).decode()}]}).encode()
        with urllib.request.urlopen(urllib.request.Request(url, body, {"Content-Type": "application/json"})) as a:
            assert json.loads(a.read())["predictions"][0]["class"] == expected[0]
        for name, status in hostile(port, hostile_requests(images[0]), timeout=60).items():
            assert status.startswith("4"), (name, status)
        replicas = subprocess.run([sys.executable, "-c", REPLICA_NODES.format(address=ray_cluster)], env=env,
                                  capture_output=True, text=True, timeout=120)  # fmt: skip
        assert replicas.stdout.split() == ["2", "2"], replicas.stderr[-2000:]  # both nodes' CPU taken by replicas
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=120)
    assert server.returncode == 0 and "stopping Ray Serve" in output and "Traceback" not in output, output[-3000:]


# The cluster's CPUs and those free: two nodes of one CPU each, both taken, is a replica on each node
REPLICA_NODES = """
import ray
ray.init(address={address!r}, logging_level="ERROR")
print(int(ray.cluster_resources().get("CPU", 0)), int(ray.cluster_resources().get("CPU", 0) - ray.available_resources().get("CPU", 0)))
"""
