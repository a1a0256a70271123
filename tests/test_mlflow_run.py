"""End to end through `mlflow run . --env-manager local`, the way users run the project."""

import re
import subprocess
from pathlib import Path

import mlflow
import pytest
import yaml

from conftest import REPO, activated_env, copy_project, mlflow_run_args, mlflow_store
from tftrain.ship.registry import version_accuracy

pytestmark = pytest.mark.slow


def mlflow_run(
    project: Path, entry_point: str, params: dict, cwd: Path, experiment: str
) -> subprocess.CompletedProcess:
    """`mlflow run` of the project copy with this environment's python first on PATH, as an activated venv would
    have it."""
    env = activated_env()
    env.pop("MLFLOW_RUN_ID", None)
    args = mlflow_run_args(project, entry_point, params, experiment)
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def run_id_of(done) -> str:
    return re.search(r"=== Run \(ID '([0-9a-f]{32})'\) succeeded ===", done.stderr).group(1)


@pytest.fixture
def project_store(tmp_path):
    with mlflow_store(tmp_path) as uri:
        yield tmp_path, uri


def test_train_evaluate_export_entry_points_chain_through_model_uris(project, project_store, tiny_data):
    folder, _ = project_store
    common = {"data_dir": tiny_data}
    params = {**common, "epochs": 2, "learning_rate": "3e-3", "model_name": "e2e", "output_dir": folder / "out",
              "run_name": "e2e-train"}  # fmt: skip
    train = mlflow_run(project, "train", params, folder, "e2e")
    train_id = run_id_of(train)
    evaluate = mlflow_run(project, "evaluate", {**common, "model_uri": "models:/e2e/1"}, folder, "e2e")
    export = mlflow_run(project, "export", {**common, "model_uri": f"runs:/{train_id}/model",
                                            "output_dir": folder / "out"}, folder, "e2e")  # fmt: skip
    client = mlflow.MlflowClient()

    run = client.get_run(train_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "e2e-train"
    assert run.data.params["learning_rate"] == "3e-3"  # as mlflow run logged it; ours did not clash
    assert run.data.params["epochs"] == "2" and run.data.params["model"] == "mlp"
    assert run.data.tags["mlflow.project.entryPoint"] == "train"
    assert [m.step for m in client.get_metric_history(train_id, "val_accuracy")] == [1, 2]
    assert not [k for k in run.data.metrics if k.startswith("validation_")]
    version = client.get_model_version("e2e", "1")
    assert version.run_id == train_id

    eval_run = client.get_run(run_id_of(evaluate))
    assert eval_run.data.tags["evaluated_model_run_id"] == train_id
    assert 0.5 < eval_run.data.metrics["test_accuracy"] <= 1.0
    assert "test accuracy " in evaluate.stdout

    export_run = client.get_run(run_id_of(export))
    assert export_run.data.metrics["tflite_float32_test_accuracy"] == pytest.approx(
        eval_run.data.metrics["test_accuracy"], abs=0.01
    )
    tflite = {f.path for f in client.list_artifacts(export_run.info.run_id, "export")}
    assert "export/model_dynamic_range.tflite" in tflite
    assert (folder / "out" / export_run.info.run_id / "export" / "model_float32.tflite").is_file()


def test_main_job_on_real_fashion_mnist_defaults(project, project_store):
    """The README's main job: `mlflow run .` on the embedded defaults, real data, one run holding everything."""
    folder, _ = project_store
    # the defaults but where files go
    done = mlflow_run(project, "main", {"output_dir": folder / "outputs"}, folder, "tftrain")
    run = mlflow.get_run(run_id_of(done))
    metrics = run.data.metrics
    assert metrics["test_accuracy"] >= 0.88, metrics["test_accuracy"]
    # the Keras model's score, once: export's TFLite scores have names of their own
    assert len(mlflow.MlflowClient().get_metric_history(run.info.run_id, "test_accuracy")) == 1
    assert abs(metrics["tflite_dynamic_range_accuracy_delta"]) < 0.01
    assert run.data.params["dataset"] == "fashion_mnist" and run.data.tags["dataset_source"].endswith("fashion-mnist")
    assert re.search(r"^test accuracy:\s+0\.\d{4}$", done.stdout, re.M)
    assert metrics["litert_test_accuracy"] == pytest.approx(metrics["tflite_float32_test_accuracy"])
    assert (
        "per class, worst F1 first:" in done.stdout and "most confused (true class taken for another):" in done.stdout
    )
    assert "registered:     models:/tftrain-fashion-mnist/1 (Keras)\n" in done.stdout
    assert "                models:/tftrain-fashion-mnist-litert/1 (LiteRT)\n" in done.stdout
    assert "champion:       tftrain-fashion-mnist@champion is now version 1 (test accuracy 0." in done.stdout
    assert "                tftrain-fashion-mnist-litert@champion is now version 1 (test accuracy 0." in done.stdout
    assert (
        "serve:          bash scripts/serve.sh --model-uri models:/tftrain-fashion-mnist@champion --port 5001\n"
        in done.stdout
    )
    assert (
        "bash scripts/serve.sh --model-uri models:/tftrain-fashion-mnist-litert@champion --port 5002\n" in done.stdout
    )
    assert abs(metrics["tflite_int8_accuracy_delta"]) < 0.02 and metrics["tflite_int8_latency_ms"] > 0
    assert "mlflow ui --backend-store-uri sqlite:///" in done.stdout


def readme_project_commands() -> list[str]:
    """The `mlflow run .` lines of the README's "The MLflow project and the CLI" block, in order."""
    block = (REPO / "README.md").read_text().split("### The MLflow project and the CLI", 1)[1].split("```bash")[1]
    return [line for line in block.split("```")[0].splitlines() if line.startswith("mlflow run . ")]


def test_the_readme_entry_point_commands_as_written_one_after_another(tmp_path):
    """train, evaluate, export and promote as the README writes them, in a clone, on a fresh store and the
    defaults: evaluate and export find the model's data from the model itself (mlflow run logs an empty data_dir
    as '', which the steps once read back and failed on)."""
    commands = readme_project_commands()
    assert [c.split(" -e ")[1].split()[0] for c in commands] == ["train", "evaluate", "export", "promote"]
    clone = copy_project(tmp_path / "clone")
    env = {**activated_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        env.pop(var, None)
    outputs = []
    for command in commands:
        done = subprocess.run(["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}{done.stderr[-5000:]}"
        outputs.append(done)
    train_id, eval_id, export_id, _ = [run_id_of(done) for done in outputs]
    with mlflow_store(tmp_path):
        client = mlflow.MlflowClient()
        version = client.get_model_version("tftrain-fashion-mnist", "1")
        assert version.run_id == train_id
        evaluated = client.get_run(eval_id).data.metrics["test_accuracy"]
        assert evaluated > 0.85, evaluated  # the CNN on real Fashion-MNIST
        # scored on the model's own test split: linked to the model, for the registry gate
        assert version_accuracy("models:/tftrain-fashion-mnist/1") == pytest.approx(evaluated)
        exported = client.get_run(export_id).data.metrics
        assert exported["tflite_float32_test_accuracy"] == pytest.approx(evaluated, abs=0.01)
        assert client.get_model_version("tftrain-fashion-mnist-litert", "1").run_id == export_id
        assert str(client.get_model_version_by_alias("tftrain-fashion-mnist", "champion").version) == "1"
    assert "is now version 1" in outputs[3].stdout


REFUSED = [
    ("main", {"model": "cnnn"}, "invalid value for model: received 'cnnn'; allowed: mlp", "failed-model-cnnn"),
    ("train", {"epoch": "3"}, "invalid value for -P: received epoch=3 (not a parameter", "failed-P-epoch-3"),
    (
        "evaluate",
        {"model_uri": "models:/nope/1"},
        "model_uri 'models:/nope/1' cannot be opened: Registered Model with name=nope not found",
        "failed-model_uri-models-nope-1-cannot-be-opened",
    ),
]


@pytest.mark.parametrize("entry_point, params, reason, run_name", REFUSED)
def test_a_refused_command_leaves_a_failed_run_that_says_why(project, project_store, entry_point, params, reason,
                                                            run_name):  # fmt: skip
    folder, _ = project_store
    env = activated_env()
    env.pop("MLFLOW_RUN_ID", None)
    args = mlflow_run_args(project, entry_point, params, "refused")
    done = subprocess.run(args, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr  # mlflow run's code for a failure
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("tftrain: error: ")]
    assert reason in line
    (run,) = mlflow.search_runs(experiment_names=["refused"], output_format="list")
    assert (run.info.status, run.info.run_name) == ("FAILED", run_name)
    assert run.data.tags["tftrain.failure"] == line.removeprefix("tftrain: error: ")
    declared = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"][entry_point]["parameters"]
    assert set(run.data.params) == set(declared) | set(params)  # what mlflow run logs; tftrain logged nothing


def test_the_sweep_entry_point_nests_its_trials_under_the_run_mlflow_made(project, project_store, tiny_data):
    params = {"data_dir": tiny_data, "epochs": 2, "batch_size": 64, "trials": 2, "sampler": "grid",
              "space": "learning_rate=choice(0.001,0.003)", "model_name": "project-swept"}  # fmt: skip
    done = mlflow_run(project, "sweep", params, project_store[0], "project-sweep")
    parent = mlflow.get_run(run_id_of(done))
    assert parent.data.tags["tftrain.sweep"] == "parent" and parent.info.run_name == parent.data.tags["tftrain.study"]
    trials = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")  # fmt: skip
    assert sorted(r.data.params["learning_rate"] for r in trials) == ["0.001", "0.003"]
    assert (
        mlflow.MlflowClient().get_model_version_by_alias("project-swept", "champion").run_id
        == (parent.data.tags["best_run_id"])
    )


def test_the_train_entry_point_on_ray_workers_logs_into_the_run_mlflow_made(project, project_store, tiny_data):
    """The issue's command: `mlflow run . -e train -P strategy=multi_worker -P launcher=ray -P workers=2`, on the
    Ray cluster of this machine the command starts and stops: rank 0 logs into mlflow run's own run, no other."""
    params = {"data_dir": tiny_data, "strategy": "multi_worker", "launcher": "ray", "workers": 2, "epochs": 2,
              "batch_size": 32, "model_name": "on-ray"}  # fmt: skip
    done = mlflow_run(project, "train", params, project_store[0], "on-ray")
    run = mlflow.get_run(run_id_of(done))
    assert run.info.status == "FINISHED" and run.data.params["launcher"] == "ray"
    assert run.data.params["engine_resolved"] == "custom" and run.data.tags["tftrain.workers_agree"] == "true"
    assert [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")] == [1, 2]
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == 1
    (version,) = mlflow.MlflowClient().search_model_versions("name = 'on-ray'")
    assert version.run_id == run.info.run_id
