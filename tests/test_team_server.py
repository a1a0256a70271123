"""The team tracking server: a real PostgreSQL (Debian's, in a temp folder) behind `scripts/team_server.sh`,
trained against through the CLI, then checked through MLflow's client, in PostgreSQL itself, and in headless
Chromium on the MLflow UI."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import psycopg2
import pytest

from servers import chromium, free_port, page_text, responds
from tftrain.tracking.lineage import HEADLINE

pytestmark = pytest.mark.slow
ADMIN = "admin"


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL is not installed (scripts/test.sh installs Debian's postgresql)")
    return found[-1].parent


def _as_postgres(args: list[str]) -> list[str]:
    """initdb refuses to run as root: run PostgreSQL's programs as its own user then."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server on 127.0.0.1 and a free port, with databases `mlflow`, `mlflow_auth` and `optuna` (a
    sweep's study); its URI base."""
    bin_dir = _postgres_bin()
    folder = Path(tempfile.mkdtemp(prefix="tftrain-pg-"))  # under /tmp: the postgres user can reach it
    data = folder / "data"
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    port = free_port()
    run = lambda *args: subprocess.run(_as_postgres([str(bin_dir / args[0]), *args[1:]]), check=True,  # noqa: E731
                                       capture_output=True, text=True, timeout=120)  # fmt: skip
    run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres")
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {data}"
    run("pg_ctl", "-D", str(data), "-o", options, "-l", str(folder / "postgres.log"), "-w", "start")
    try:
        for database in ("mlflow", "mlflow_auth", "optuna"):
            run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}"
    finally:
        run("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def team_server(postgres, project, tmp_path_factory):
    """scripts/team_server.sh on a free port: PostgreSQL backend, proxied artifacts, basic auth. Run from a copy of
    the project: the script works in the folder it is in."""
    folder = tmp_path_factory.mktemp("team-server")
    port = free_port()
    password = secrets.token_urlsafe(12)
    env = {
        **os.environ,
        "BACKEND_STORE_URI": f"{postgres}/mlflow",
        "AUTH_DATABASE_URI": f"{postgres}/mlflow_auth",
        "ARTIFACTS_DESTINATION": str(folder / "artifacts"),
        "PORT": str(port),
        "WORKERS": "1",
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
    }
    log = folder / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(["bash", str(project / "scripts" / "team_server.sh")], stdout=out, stderr=out,
                                  env=env)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while not responds(url + "/health"):
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        yield {"url": url, "password": password, "artifacts": folder / "artifacts", "postgres": postgres}
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def client_env(team_server):
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": team_server["url"],
        "MLFLOW_TRACKING_USERNAME": ADMIN,
        "MLFLOW_TRACKING_PASSWORD": team_server["password"],
        "MLFLOW_EXPERIMENT_NAME": "team",
    }


def tftrain(env: dict, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "tftrain", *args], capture_output=True, text=True, env=env,
                          cwd=tempfile.gettempdir(), timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


@pytest.fixture(scope="module")
def steps(client_env, tiny_data, tmp_path_factory):
    """Two training runs (fit, then the custom engine in mixed_bfloat16), then evaluate, export and promote the
    first model, each a separate process talking to the team server."""
    out = str(tmp_path_factory.mktemp("outputs"))
    common = ["--data-dir", str(tiny_data), "--epochs", "2", "--model-name", "team-model", "--output-dir", out]
    tftrain(client_env, "train", *common, "--run-name", "team-fit")
    tftrain(client_env, "train", *common, "--run-name", "team-custom", "--engine", "custom",
            "--precision", "mixed_bfloat16")  # fmt: skip
    tftrain(client_env, "evaluate", "--model-uri", "models:/team-model/1", "--data-dir", str(tiny_data))
    tftrain(client_env, "export", "--model-uri", "models:/team-model/1", "--data-dir", str(tiny_data),
            "--output-dir", out)  # fmt: skip
    return tftrain(client_env, "promote", "--model-uri", "models:/team-model/1")


@pytest.fixture
def as_client(client_env):
    with pytest.MonkeyPatch.context() as mp:
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            mp.setenv(key, client_env[key])
        mlflow.set_tracking_uri(client_env["MLFLOW_TRACKING_URI"])
        try:
            yield mlflow.MlflowClient()
        finally:
            mlflow.set_tracking_uri(None)


def test_the_server_holds_runs_models_and_artifacts(steps, as_client, team_server):
    client = as_client
    assert "team-model@champion is now version 1" in steps
    experiment = client.get_experiment_by_name("team")
    runs = client.search_runs([experiment.experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert {"team-fit", "team-custom"} <= set(by_name)
    assert all(r.info.status == "FINISHED" for r in runs)
    fit, custom = by_name["team-fit"], by_name["team-custom"]
    # comparable side by side: the same metric keys and params whatever the engine and precision; the evaluated
    # model's training run also carries its test scores (from `tftrain evaluate`, a run of its own)
    assert set(fit.data.metrics) == set(custom.data.metrics) | set(HEADLINE)
    assert fit.data.metrics["test_accuracy"] > 0.5 and "test_accuracy" not in custom.data.metrics
    assert set(fit.data.params) == set(custom.data.params)
    assert (custom.data.params["engine"], custom.data.params["precision"]) == ("custom", "mixed_bfloat16")
    assert client.get_model_version_by_alias("team-model", "champion").version == "1"
    assert client.get_model_version("team-model", "2").run_id == custom.info.run_id
    assert client.get_registered_model("team-model-litert").latest_versions
    # artifacts went through the server's proxy into its artifact folder
    assert fit.info.artifact_uri.startswith("mlflow-artifacts:")
    assert "config.json" in {f.path for f in client.list_artifacts(fit.info.run_id)}
    assert list(team_server["artifacts"].rglob("config.json"))
    local = mlflow.artifacts.download_artifacts(run_id=fit.info.run_id, artifact_path="config.json")
    # the config as asked, by group (engine=auto), beside what it resolved to (engine_resolved)
    assert json.loads(Path(local).read_text())["runtime"]["engine"] == fit.data.params["engine"] == "auto"
    assert fit.data.params["engine_resolved"] == "fit"


def test_postgres_holds_the_tracking_data(steps, team_server):
    dsn = team_server["postgres"].replace("postgresql+psycopg2", "postgresql") + "/mlflow"
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT name FROM runs WHERE status = 'FINISHED'")
        names = {row[0] for row in cursor.fetchall()}
        cursor.execute("SELECT name FROM registered_models")
        models = {row[0] for row in cursor.fetchall()}
    assert {"team-fit", "team-custom"} <= names
    assert {"team-model", "team-model-litert"} <= models


def test_requests_without_credentials_are_refused(team_server):
    request = urllib.request.Request(team_server["url"] + "/api/2.0/mlflow/experiments/search?max_results=1")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    token = base64.b64encode(f"{ADMIN}:{team_server['password']}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


@pytest.fixture
def browser(team_server, tmp_path):
    """Headless Chromium (Debian's) that sends the admin's credentials with every request."""
    with chromium(tmp_path / "profile") as driver:
        token = base64.b64encode(f"{ADMIN}:{team_server['password']}".encode()).decode()
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})
        yield driver


def test_the_ui_shows_both_runs_and_their_metrics(steps, as_client, team_server, browser, tmp_path):
    experiment = as_client.get_experiment_by_name("team")
    runs = f"{team_server['url']}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
    browser.get(runs + "&compareRunsMode=TABLE")
    body = page_text(browser, ["team-fit", "team-custom"])
    assert "team-fit" in body and "team-custom" in body, body[:2000]
    browser.get(runs + "&compareRunsMode=CHART")
    charts = ["team-fit (loss)", "team-custom (loss)"]  # the first chart; the others render as they scroll in
    body = page_text(browser, charts)
    assert all(chart in body for chart in charts), body[:3000]
    screenshot = Path(os.environ.get("TFTRAIN_SCREENSHOT", tmp_path / "mlflow-ui-runs.png"))
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000


@pytest.fixture(scope="module")
def shared_sweep(client_env, team_server, tiny_data, tmp_path_factory):
    """Two `tftrain sweep` processes started together on one study: its trials in PostgreSQL, its runs on the
    team server. Returns both outputs."""
    out = tmp_path_factory.mktemp("sweep-outputs")
    command = [sys.executable, "-m", "tftrain", "sweep", "--data-dir", str(tiny_data), "--epochs", "2",
               "--batch-size", "64", "--trials", "6", "--study", "team-sweep", "--storage",
               f"{team_server['postgres']}/optuna", "--space", "learning_rate=loguniform(1e-3,1e-2)",
               "--pruner", "none", "--model-name", "team-swept", "--output-dir", str(out), "--histogram-freq", "0"]  # fmt: skip
    env = {**client_env, "PYTHONUNBUFFERED": "1"}
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                  cwd=tempfile.gettempdir()) for _ in range(2)]  # fmt: skip
    outputs = [p.communicate(timeout=900)[0] for p in processes]
    for p, output in zip(processes, outputs, strict=True):
        assert p.returncode == 0, output[-4000:]
    return outputs


def test_two_sweep_processes_share_one_study_and_one_parent_run(shared_sweep, as_client, team_server):
    import optuna

    from tftrain.search.study import open_storage

    study = optuna.load_study(study_name="team-sweep", storage=open_storage(f"{team_server['postgres']}/optuna"))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6
    ran = [{int(n) for n in re.findall(r"^trial (\d+) \(", output, re.MULTILINE)} for output in shared_sweep]
    assert ran[0] and ran[1] and not ran[0] & ran[1] and ran[0] | ran[1] == set(range(6)), ran  # each its own
    (parent,) = as_client.search_runs(
        [as_client.get_experiment_by_name("team").experiment_id], "tags.`tftrain.sweep` = 'parent'"
    )
    assert parent.info.status == "FINISHED" and parent.info.run_name == "team-sweep"
    trials = as_client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(int(r.data.params["trial_number"]) for r in trials) == list(range(6))
    assert all(r.info.status == "FINISHED" for r in trials)
    (version,) = as_client.search_model_versions("name = 'team-swept'")
    assert version.run_id == parent.data.tags["best_run_id"]
    assert as_client.get_model_version_by_alias("team-swept", "champion").version == version.version
    assert sum("champion:" in output for output in shared_sweep) == 1  # one process gated the best model
