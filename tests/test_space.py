"""A sweep's search space and settings: parsed into typed dimensions, every mistake one line naming the part,
and all of it said before TensorFlow loads or any trial runs."""

import optuna
import pytest

from test_cli import probe
from tftrain.config import TrainConfig
from tftrain.errors import UserError
from tftrain.search.space import SEARCHABLE, SweepConfig, check_sweep, parse_space

BASE = TrainConfig()


def test_an_inline_space_is_typed_by_the_parameters_it_names():
    dims = parse_space("learning_rate=loguniform(1e-4,1e-2); batch_size=choice(64,128,256);model=choice(mlp,cnn)", BASE)
    assert [(d.name, d.kind, d.args) for d in dims] == [
        ("learning_rate", "loguniform", (1e-4, 1e-2)),
        ("batch_size", "choice", (64, 128, 256)),
        ("model", "choice", ("mlp", "cnn")),
    ]
    (epochs,) = parse_space("epochs=int(2,10,2)", BASE)
    assert epochs.args == (2, 10, 2) and epochs.grid() == [2, 4, 6, 8, 10]
    (switch,) = parse_space("early_stopping=choice(true,false)", BASE)
    assert switch.args == (True, False)


def test_a_yaml_space_maps_names_to_expressions_and_lists_to_choices(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: loguniform(1e-4, 1e-2)\nbatch_size: [64, 128]\nrestore_best_weights: [true]\n")
    dims = parse_space(str(space), BASE)
    assert [(d.name, d.kind, d.args) for d in dims] == [
        ("learning_rate", "loguniform", (1e-4, 1e-2)),
        ("batch_size", "choice", (64, 128)),
        ("restore_best_weights", "choice", (True,)),
    ]


def test_dimensions_sample_what_they_say_in_an_optuna_trial():
    dims = parse_space("learning_rate=loguniform(1e-4,1e-2);batch_size=int(32,256,32);model=choice(mlp,cnn)", BASE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        lr, batch, model = (d.suggest(trial) for d in dims)
        assert 1e-4 <= lr <= 1e-2 and batch in range(32, 257, 32) and model in ("mlp", "cnn")
        study.tell(trial, 0.0)
    assert {t.params["model"] for t in study.trials} == {"mlp", "cnn"}


BAD_SPACES = [
    ("", "received ''; allowed: NAME=EXPR parts separated by ';'"),
    ("learning_rate", "received the part 'learning_rate'; allowed: NAME=EXPR"),
    (
        "learnig_rate=uniform(0.1,0.2)",
        "learnig_rate is not a train parameter (did you mean learning_rate?); allowed: dataset, image_size",
    ),
    ("data_dir=choice(a,b)", "data_dir is fixed for every trial of a sweep"),
    ("run_name=choice(a,b)", "run_name is fixed for every trial of a sweep"),
    ("learning_rate=uniform(0.1,0.01)", "low 0.1 is not below high 0.01; allowed: low < high"),
    ("learning_rate=loguniform(0,0.01)", "low 0.0 on a log scale; allowed: low > 0"),
    ("learning_rate=normal(0,1)", "unknown distribution 'normal'; allowed: uniform(low, high)"),
    ("learning_rate=uniform(0.1)", "1 arguments; allowed: uniform(low, high)"),
    ("learning_rate=uniform(a,b)", "'a' is not a value of learning_rate; allowed: finite numbers"),
    ("learning_rate=uniform(1e-3,inf)", "'inf' is not a value of learning_rate; allowed: finite numbers"),
    ("learning_rate=uniform(-1,1)", "invalid value for learning_rate: received -1.0"),
    ("learning_rate=loguniform(1e-4,1e-2", "allowed: learning_rate=EXPR with EXPR one of"),
    ("batch_size=uniform(16,64)", "batch_size is a whole-number parameter; allowed for it: int(...) or choice(...)"),
    ("batch_size=int(16,64,10)", "step 10; allowed: a step >= 1 that divides high - low (48)"),
    ("batch_size=choice(64,64.5)", "'64.5' is not a value of batch_size; allowed: whole numbers"),
    ("batch_size=choice(64,,128)", "an empty argument"),
    ("batch_size=choice(64,64)", "a choice given twice; allowed: distinct choices"),
    ("epochs=int(0,5)", "invalid value for epochs: received 0"),
    ("model=uniform(1,2)", "model is a text parameter; allowed for it: choice(...)"),
    ("model=choice(mlp,resnet51)", "invalid value for space: received 'model=choice(mlp,resnet51)': "),
    ("precision=choice(float32,float64)", "invalid value for precision: received 'float64'; allowed: one of auto"),
    ("early_stopping=choice(true,maybe)", "'maybe' is not a value of early_stopping; allowed: true or false"),
    ("epochs=int(2,4);epochs=int(5,6)", "epochs given twice; allowed: each parameter once"),
]


@pytest.mark.parametrize("space, expected", BAD_SPACES)
def test_a_bad_space_is_one_line_naming_the_part(space, expected):
    with pytest.raises(UserError) as caught:
        parse_space(space, BASE)
    message = str(caught.value)
    assert message.startswith("invalid value for space: ") or "invalid value for" in message, message
    assert expected in message and "\n" not in message, message


def test_a_yaml_space_that_is_no_mapping_or_no_file_is_refused(tmp_path):
    (tmp_path / "list.yaml").write_text("- learning_rate\n")
    (tmp_path / "broken.yml").write_text("learning_rate: [1, 2\n")
    for path, expected in [
        (tmp_path / "list.yaml", "holds a list, not a mapping"),
        (tmp_path / "broken.yml", "is not readable YAML at line 2"),
        (tmp_path / "none.yaml", "no such file"),
    ]:
        with pytest.raises(UserError, match=expected):
            parse_space(str(path), BASE)


def test_every_searchable_parameter_is_a_train_parameter_outside_the_tracking_group():
    assert "learning_rate" in SEARCHABLE and "model" in SEARCHABLE and "precision" in SEARCHABLE
    assert not {"data_dir", "validation_split", "test_split", "output_dir", "run_name", "strategy"} & set(SEARCHABLE)


@pytest.mark.parametrize(
    "settings, expected",
    [
        ({"trials": 0}, "invalid value for trials: received 0; allowed: a whole number >= 1"),
        ({"timeout": -1.0}, "invalid value for timeout: received -1.0"),
        ({"sampler": "cmaes"}, "invalid value for sampler: received 'cmaes'; allowed: one of tpe, random, grid"),
        ({"pruner": "asha"}, "invalid value for pruner: received 'asha'; allowed: one of median, hyperband, none"),
        ({"objective": "accuracy"}, "allowed: one of val_accuracy, val_loss"),
        ({"study": "my study"}, "invalid value for study: received 'my study'"),
        ({"storage": "redis://x"}, "invalid value for storage: received 'redis://x'; allowed: empty, sqlite:///FILE"),
    ],
)
def test_bad_sweep_settings_are_refused(settings, expected):
    with pytest.raises(UserError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        SweepConfig(**settings)


def test_a_grid_needs_points_and_a_sweep_runs_in_one_process_per_trial():
    with pytest.raises(UserError, match=r"learning_rate=loguniform\(\.\.\.\) with sampler=grid"):
        check_sweep(SweepConfig(sampler="grid"), BASE)
    assert len(check_sweep(SweepConfig(sampler="grid", space="batch_size=choice(64,128)"), BASE)) == 1
    with pytest.raises(UserError, match="received multi_worker; a sweep runs its trials one at a time"):
        check_sweep(SweepConfig(), TrainConfig.from_flat(strategy="multi_worker", engine="custom"))
    assert check_sweep(SweepConfig(), TrainConfig.from_flat(launcher="ray", workers=3))  # trial processes on Ray
    with pytest.raises(UserError, match="received multi_worker with launcher=ray; .* allowed: strategy auto$"):
        check_sweep(SweepConfig(), TrainConfig.from_flat(launcher="ray", strategy="multi_worker"))


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--space", "learning_rate=uniform(0.1,0.01)"], "low 0.1 is not below high 0.01"),
        (["--space", "lr=loguniform(1e-4,1e-2)"], "lr is not a train parameter"),
        (["--space", "batch_sise=choice(64,128)"], "not a train parameter (did you mean batch_size?)"),
        (["--space", "model=choice(mlp,nope.py:build)"], "nope.py"),
        (["--sampler", "grid"], "with sampler=grid"),
        (["--trials", "0"], "invalid value for trials: received 0"),
        (["--storage", "postgres://x"], "invalid value for storage"),
        (["--storage", "postgresql://nobody:secret@127.0.0.1:1/x"], "nobody:***@127.0.0.1:1/x: connection to server"),
        (["--storage", "sqlite:////proc/no/optuna.db"], "cannot open the sweep storage sqlite:////proc/no/optuna.db"),
    ],
)
def test_sweep_mistakes_are_said_before_tensorflow_loads_and_before_any_trial(tmp_path, tiny_data, args, expected):
    done = probe(["sweep", "--data-dir", str(tiny_data), *args], tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("tftrain: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert expected in done.stderr
    assert done.stdout == "[]\n", f"imported {done.stdout.strip()} before refusing: {done.stderr}"
    assert not (tmp_path / "optuna.db").exists()


def test_a_builder_or_folder_a_space_names_is_checked_before_tensorflow(tmp_path, tiny_data):
    (tmp_path / "mynet.py").write_text("def build(input_shape, num_classes):\n    pass\n")
    (tmp_path / "empty").mkdir()
    for space, expected in [
        ("model=choice(mlp,mynet.py:buld)", "model builder mynet.py:buld: mynet.py has no function 'buld'"),
        ("dataset=choice(fashion_mnist,empty)", "empty"),
    ]:
        done = probe(["sweep", "--data-dir", str(tiny_data), "--space", space], tmp_path)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert expected in done.stderr and done.stdout == "[]\n", done.stderr
    assert probe(["sweep", "--data-dir", str(tiny_data), "--space", "model=choice(mlp,mynet.py:build)", "--trials",
                  "0"], tmp_path).stderr.startswith("tftrain: error: invalid value for trials")  # fmt: skip
