"""The MLproject, the CLI and the dependency pins must say the same thing."""

import dataclasses
import shlex

import tomllib
import yaml
from mlflow.projects._project_spec import load_project

from conftest import REPO
from tftrain.cli import cli
from tftrain.config import TrainConfig

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
    assert set(entry_points) == {"main", "train", "evaluate", "export", "promote"}


def test_train_and_main_take_every_config_field_with_the_cli_defaults():
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for entry_point, command in (("main", "pipeline"), ("train", "train")):
        params = load_project(str(REPO)).get_entry_point(entry_point).parameters
        assert set(params) == set(defaults)
        name, received = parsed(entry_point, {})
        assert name == command and received == defaults


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
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert sorted(pip) == sorted(project)
    assert "tensorflow==2.21.0" in pip and "mlflow==3.17.2" in pip and "tensorboard==2.21.*" in pip


def test_readme_parameter_table_lists_every_parameter_with_its_default():
    readme = (REPO / "README.md").read_text()
    for f in dataclasses.fields(TrainConfig):
        default = str(f.default).lower() if isinstance(f.default, bool) else (f.default if f.default != "" else '""')
        assert f"| `{f.name}` | `{default}` |" in readme, f.name
