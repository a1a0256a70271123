"""The MLproject, the CLI and the dependency pins must say the same thing."""

import argparse
import dataclasses
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from mlflow.projects._project_spec import load_project

from conftest import REPO
from tftrain.cli import cli
from tftrain.config import PARAMS, grouped_params
from tftrain.search.space import SweepConfig

RUN = "0123456789abcdef0123456789abcdef"


def parsed(entry_point: str, params: dict) -> tuple[str, dict]:
    """What the CLI receives when `mlflow run -e ENTRY_POINT -P ...` runs the entry point's command."""
    command = load_project(str(REPO)).get_entry_point(entry_point).compute_command(params, None)
    words = shlex.split(command)
    assert words[:4] == ["PYTHONPATH=src", "python", "-m", "tftrain"], command
    name, args = words[4], words[5:]
    return name, cli.commands[name].make_context(name, args).params


def test_entry_points_are_the_steps():
    entry_points = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
    assert set(entry_points) == {"main", "train", "evaluate", "export", "promote", "sweep"}


def test_train_and_main_take_every_config_field_with_the_cli_defaults():
    defaults = {f.name: f.default for f in PARAMS.values()}
    for entry_point, command in (("main", "pipeline"), ("train", "train")):
        params = load_project(str(REPO)).get_entry_point(entry_point).parameters
        assert set(params) == set(defaults)
        name, received = parsed(entry_point, {})
        assert name == command and received == defaults


def test_sweep_takes_every_config_field_and_the_sweep_settings_with_the_cli_defaults():
    defaults = {f.name: f.default for f in (*PARAMS.values(), *dataclasses.fields(SweepConfig))}
    assert set(load_project(str(REPO)).get_entry_point("sweep").parameters) == set(defaults)
    name, received = parsed("sweep", {})
    assert name == "sweep" and received == defaults
    space = "learning_rate=loguniform(1e-4,1e-2);model=choice(mlp,cnn)"
    _, received = parsed("sweep", {"space": space, "trials": "3", "epochs": "2"})
    assert (received["space"], received["trials"], received["epochs"]) == (space, 3, 2)


def test_mlproject_parameters_reach_the_cli_as_given():
    _, received = parsed("train", {"epochs": "3", "model": "cnn", "learning_rate": "1e-3", "data_dir": "/d i r"})
    assert (received["epochs"], received["model"], received["learning_rate"]) == (3, "cnn", 0.001)
    assert received["data_dir"] == "/d i r"


def test_evaluate_and_export_match_their_commands():
    uri = f"runs:/{RUN}/model"
    assert parsed("evaluate", {"model_uri": uri}) == (
        "evaluate",
        {"model_uri": uri, "dataset": "", "data_dir": ""},
    )
    name, received = parsed("export", {"model_uri": uri, "output_dir": "x"})
    assert name == "export" and received == {
        "model_uri": uri,
        "dataset": "",
        "data_dir": "",
        "output_dir": "x",
        "litert_quantization": "float32",
    }
    assert parsed("export", {"model_uri": uri, "litert_quantization": "int8"})[1]["litert_quantization"] == "int8"


def test_conda_env_pins_match_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert sorted(pip) == sorted(project["dependencies"] + project["optional-dependencies"]["ray"])
    assert "tensorflow==2.21.0" in pip and "mlflow==3.17.2" in pip and "tensorboard==2.21.*" in pip


def test_config_fields_stand_together_by_group():
    """The class order is the CLI's --help order and the MLproject's: each group's fields in one run."""
    assert [f for fields in grouped_params().values() for f in fields] == list(PARAMS.values())


PARAMETERS_PAGE = "docs/parameters.md"  # where scripts/params.py writes the parameter tables


def documented_parameter_tables() -> list[list[str]]:
    """The rows of each table between the parameters page's params markers, one list per table."""
    page = (REPO / PARAMETERS_PAGE).read_text()
    block = page.split("<!-- params:begin -->\n")[1].split("<!-- params:end -->")[0]
    tables = [section.split("\n\n", 1)[1] for section in block.split("\n## ")[1:]]
    return [[row for row in table.splitlines() if row.startswith("| `")] for table in tables]


def test_parameter_tables_list_every_parameter_by_group_with_its_default():
    tables = documented_parameter_tables()
    assert len(tables) == len(grouped_params())
    for rows, fields in zip(tables, grouped_params().values(), strict=True):
        assert len(rows) == len(fields)
        for row, f in zip(rows, fields, strict=True):
            default = (
                str(f.default).lower() if isinstance(f.default, bool) else (f.default if f.default != "" else '""')
            )
            assert row.startswith(f"| `{f.name}` | `{default}` | "), (f.name, row)


def params_script(*args: str) -> subprocess.CompletedProcess:
    script = REPO / "scripts" / "params.py"
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=60)


def test_generated_mlproject_and_parameter_tables_are_up_to_date():
    done = params_script("--check")
    assert done.returncode == 0, done.stderr


def test_params_check_names_stale_files_and_a_rewrite_touches_only_the_generated_blocks(tmp_path):
    """One field dropped from each copy: --check fails naming both; a rewrite restores them and keeps the rest."""
    originals = {
        name: (REPO / name).read_text() + "\n<!-- not generated: stays -->\n" for name in ("MLproject", PARAMETERS_PAGE)
    }
    (tmp_path / "MLproject").write_text(
        originals["MLproject"].replace("      test_split: {type: float, default: 0.1}\n", "")
    )
    page = re.sub(r"^\| `test_split` \|.*\n", "", originals[PARAMETERS_PAGE], flags=re.MULTILINE)
    (tmp_path / PARAMETERS_PAGE).parent.mkdir()
    (tmp_path / PARAMETERS_PAGE).write_text(page)
    assert page != originals[PARAMETERS_PAGE] and (tmp_path / "MLproject").read_text() != originals["MLproject"]

    done = params_script("--check", "--root", str(tmp_path))
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1, done.stderr
    assert "stale: MLproject (+1 -0 lines" in done.stderr and f"{PARAMETERS_PAGE} (+1 -0 lines" in done.stderr

    assert params_script("--root", str(tmp_path)).returncode == 0
    assert {name: (tmp_path / name).read_text() for name in originals} == originals
    assert params_script("--check", "--root", str(tmp_path)).returncode == 0


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of Dockerfile.gpu, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile.gpu").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0], line.split(None, 1)[1]) for line in lines]


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    done = subprocess.run([str(hadolint), str(REPO / "Dockerfile.gpu")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_installs_the_project_pins_with_cuda():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    tensorflow = next(d for d in project["dependencies"] if d.startswith("tensorflow=="))
    assert tensorflow.replace("tensorflow", "tensorflow[and-cuda]") in project["optional-dependencies"]["gpu"]
    instructions = dockerfile_instructions()
    base = next(args for kind, args in instructions if kind == "FROM")
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-\w+-ubuntu\d\d\.\d\d", base)  # TF 2.21's GPU build: CUDA 12
    runs = [args for kind, args in instructions if kind == "RUN"]
    (install,) = [run for run in runs if 'pip install --no-cache-dir ".[gpu,ray]"' in run]
    (ray,) = project["optional-dependencies"]["ray"]
    assert f'"{ray.replace("[train,serve]", "[default]")}"' in install  # the dashboard for KubeRay, at the same version
    users = [args for kind, args in instructions if kind == "USER"]
    assert users and users[-1] != "root" and not users[-1].startswith("0")


def test_dockerfile_runs_the_mlflow_project_in_mixed_float16():
    instructions = dict(dockerfile_instructions())
    (entry,) = json.loads(instructions["ENTRYPOINT"])
    script = REPO / entry.removeprefix("/home/tftrain/project/")
    assert 'exec mlflow run . --env-manager local "$@"' in script.read_text()
    command = json.loads(instructions["CMD"])
    entry_point = command[command.index("-e") + 1]
    params = dict(command[i + 1].split("=", 1) for i, word in enumerate(command) if word == "-P")
    assert params["precision"] == "mixed_float16"
    assert set(params) <= set(load_project(str(REPO)).get_entry_point(entry_point).parameters)


def test_docker_script_says_plainly_when_docker_is_missing(tmp_path):
    """No Docker engine here: the script must stop with one clear line, not half-run."""
    for tool in ("bash", "dirname"):
        (tmp_path / tool).symlink_to(shutil.which(tool))
    done = subprocess.run(["bash", str(REPO / "scripts" / "docker_gpu.sh")], capture_output=True, text=True,
                          env={"PATH": str(tmp_path)}, timeout=30)  # fmt: skip
    assert done.returncode == 2 and done.stderr == "docker_gpu.sh: docker is not installed on this host\n"


def test_shell_scripts_parse():
    for script in sorted((REPO / "scripts").glob("*.sh")) + [REPO / ".ci" / "run"]:
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, (script.name, done.stderr)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "set BACKEND_STORE_URI"),
        ({"BACKEND_STORE_URI": "postgresql+psycopg2://u@h/db", "HOST": "0.0.0.0"}, "set ALLOWED_HOSTS"),
        ({"BACKEND_STORE_URI": "postgresql+psycopg2://u@h/db"}, "set MLFLOW_AUTH_ADMIN_PASSWORD"),
        ({"BACKEND_STORE_URI": "postgresql+psycopg2://u@h/db", "AUTH": "maybe"}, "AUTH must be true or false"),
    ],
)
def test_team_server_script_refuses_unsafe_or_missing_settings(project, settings, message):
    """The script in a copy of the project (it works in the folder it is in, where setup.sh finds a venv)."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "BACKEND_", "ALLOWED_", "AUTH"))}
    done = subprocess.run(["bash", str(project / "scripts" / "team_server.sh")], capture_output=True, text=True,
                          env={**keep, "HOST": "127.0.0.1", **settings}, timeout=300)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1].startswith("team_server.sh: ") and message in done.stderr


def test_the_kuberay_rayjob_runs_train_on_ray_with_as_many_workers_as_gpu_pods():
    job = yaml.safe_load((REPO / "deploy" / "kuberay-rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:2] == ["tftrain", "train"]
    # every option one that train takes (its folders exist on the cluster's volume only: not built here)
    cfg = argparse.Namespace(**cli.commands["train"].make_context("train", words[2:]).params)
    assert (cfg.launcher, cfg.ray_address, cfg.engine) == ("ray", "auto", "auto")
    cluster = job["spec"]["rayClusterSpec"]
    groups = cluster["workerGroupSpecs"]
    assert cfg.workers == sum(g["replicas"] for g in groups)
    for g in groups:  # one GPU per worker: Ray Train's use_gpu then gives each worker one
        (container,) = g["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["ray"]
    assert f"ray[train,serve]=={cluster['rayVersion']}" in pins
    head = cluster["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"] for c in head["containers"] for m in c["volumeMounts"]}
    assert cfg.output_dir.startswith(tuple(mounts)) and cfg.dataset.startswith(tuple(mounts))


def test_the_kuberay_rayservice_serves_tftrains_ray_serve_application_on_enough_cpus():
    from ray.serve import Application

    service = yaml.safe_load((REPO / "deploy" / "kuberay-rayservice.yaml").read_text())
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    (app,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    module, _, name = app["import_path"].partition(":")
    build = getattr(importlib.import_module(module), name)
    assert isinstance(build(app["args"]), Application)  # the args are ones the builder takes
    with pytest.raises(ValueError, match="received \\['model', 'replicas'\\]"):
        build({"model": "x", "replicas": 1})
    cluster = service["spec"]["rayClusterConfig"]
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["ray"]
    assert f"ray[train,serve]=={cluster['rayVersion']}" in pins
    cpus = sum(int(g["minReplicas"]) * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
               for g in cluster["workerGroupSpecs"])  # fmt: skip
    assert cpus >= app["args"]["replicas"] * app["args"]["num_cpus"]
    (head,) = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert 8000 in {p["containerPort"] for p in head["ports"]}  # Ray Serve's HTTP proxy
