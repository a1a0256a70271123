"""The `tftrain` command: a thin click layer over the steps. Each command runs every check that needs no
TensorFlow first (checks.py: parameters, files, the tracking store, the model it names, a free port), then imports
its step, so a mistake is one line within a couple of seconds, not after TensorFlow's 7-10 s of loading."""

from __future__ import annotations

import dataclasses
import sys

import click

from tftrain import log, quiet
from tftrain.checks import check_address, check_dataset, check_inputs, check_training, journal_run
from tftrain.config import PARAMS, QUANTIZATIONS, TrainConfig
from tftrain.env import mlflow_run_id
from tftrain.errors import TrainingFailed, UserError, invalid
from tftrain.search.space import SweepConfig, check_storage, check_sweep, storage_url
from tftrain.search.study import check_study
from tftrain.tracking.store import (
    StoreError,
    check_keras_model,
    check_run,
    check_tracking_store,
    mark_refused,
    model_info,
)
from tftrain.values import (
    check_alias,
    check_data_dir,
    check_model_uri,
    check_output_dir,
    check_output_file,
    parse_version_uri,
)


class _Number(click.ParamType):
    """click's INT or FLOAT, refusing in tftrain's words: `invalid value for epochs: received 'abc'; allowed: an
    integer` (under `mlflow run`, where the -P value reaches the CLI as text, too)."""

    def __init__(self, kind: type, words: str):
        self.kind, self.words = kind, words
        self.name = {int: "integer", float: "float"}[kind]  # --help shows INTEGER and FLOAT, as click's own

    def convert(self, value, param, ctx):
        if isinstance(value, self.kind) and not isinstance(value, bool):
            return value
        try:
            return self.kind(value)
        except (TypeError, ValueError):
            name = param.opts[0].lstrip("-").replace("-", "_") if param is not None and param.opts else "value"
            raise click.UsageError(str(invalid(name, value, self.words)), ctx) from None


_TYPES = {"int": _Number(int, "an integer"), "float": _Number(float, "a number"), "str": str, "bool": click.BOOL}


class _Choice(click.Choice):
    """click's Choice, refusing in tftrain's words: `invalid value for augment: received 'heavy'; allowed: ...`."""

    def convert(self, value, param, ctx):
        if value in self.choices:
            return value
        name = param.opts[0].lstrip("-").replace("-", "_") if param is not None and param.opts else "value"
        raise click.UsageError(str(invalid(name, value, "one of " + ", ".join(map(str, self.choices)))), ctx)


def config_options(cls):
    """One click option per config field (TrainConfig's by their flat names): same name, type, default and help."""
    fields = list(PARAMS.values()) if cls is TrainConfig else dataclasses.fields(cls)

    def decorate(fn):
        for f in reversed(fields):
            choices = f.metadata["choices"]
            kind = _Choice(choices) if choices else _TYPES[f.type]
            flag = "--" + f.name.replace("_", "-")
            fn = click.option(flag, f.name, type=kind, default=f.default, show_default=True, help=f.metadata["help"])(
                fn
            )
        return fn

    return decorate


model_uri_option = click.option(
    "--model-uri",
    required=True,
    help="runs:/<run_id>/model, models:/<name>/<version>, models:/<name>@<alias>, models:/m-<id> or a local model folder.",
)
dataset_option = click.option(
    "--dataset",
    default="",
    help="Test data to use (any form `train` takes); empty: the dataset the model was trained on, split the same way.",
)
data_dir_option = click.option(
    "--data-dir", default="", help="Folder with the IDX .gz files, or the tfds data folder; empty: look it up."
)


def _data_args(dataset: str, data_dir: str) -> tuple[str, str]:
    """evaluate's and export's data: empty means the model's own (checked when its run's params are read)."""
    check_data_dir(data_dir)
    if dataset:
        check_dataset(dataset, data_dir)
    return dataset, data_dir


def _model_args(model_uri: str) -> None:
    """A well-formed URI, then a model the tracking store has."""
    check_model_uri(model_uri)
    check_tracking_store()
    model_info(model_uri)


def _training_args(params: dict) -> TrainConfig:
    cfg = TrainConfig.from_flat(**params)
    check_training(cfg)
    check_tracking_store()
    check_output_dir(cfg.tracking.output_dir)
    return cfg


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tftrain")
@click.option(
    "--verbose",
    is_flag=True,
    envvar="TFTRAIN_VERBOSE",
    help="Show TensorFlow's native log lines and MLflow's progress bars (env: TFTRAIN_VERBOSE=1).",
)
def cli(verbose: bool) -> None:
    """Train, track and ship TensorFlow models with MLflow."""
    quiet.setup(verbose)  # before any command loads TensorFlow
    log.setup(verbose)


@cli.command("train")
@config_options(TrainConfig)
def train_command(**params) -> None:
    """Train (model.fit or the custom loop, any strategy and precision); log and register the model in MLflow."""
    cfg = _training_args(params)
    if cfg.runtime.launcher == "ray":
        from tftrain.cluster.launcher import train_on_ray

        m = train_on_ray(cfg)
    else:
        from tftrain.training.trainer import train

        m = train(cfg).model
    if m is None:
        click.echo("worker finished its part; the chief worker logged the run and the model")
        return
    registered = f", registered as {m.registered_name} version {m.version}" if m.version else ""
    click.echo(f"run {m.run_id}: model {m.uri}{registered}")


@cli.command("evaluate")
@model_uri_option
@dataset_option
@data_dir_option
def evaluate_command(model_uri: str, dataset: str, data_dir: str) -> None:
    """Score a model on the test split: loss, accuracy, per-class precision/recall/F1, confusion matrix."""
    dataset, data_dir = _data_args(dataset, data_dir)
    _model_args(model_uri)
    from tftrain.ship.evaluate import evaluate

    evaluate(model_uri, dataset, data_dir)


@cli.command("export")
@model_uri_option
@dataset_option
@data_dir_option
@click.option("--output-dir", default="outputs", show_default=True, help="Local folder for the exported files.")
@click.option(
    "--litert-quantization",
    type=_Choice(QUANTIZATIONS),
    default="float32",
    show_default=True,
    help="Which TFLite file to log as the servable LiteRT model (registered as <name>-litert).",
)
def export_command(model_uri: str, dataset: str, data_dir: str, output_dir: str, litert_quantization: str) -> None:
    """Write a SavedModel and TFLite files (float32, dynamic-range, float16, int8), each scored with LiteRT on the
    test split; log one as a servable LiteRT model."""
    dataset, data_dir = _data_args(dataset, data_dir)
    _model_args(model_uri)
    check_keras_model(model_uri)
    check_output_dir(output_dir)
    from tftrain.ship.export import export

    export(model_uri, dataset, data_dir, output_dir, litert_quantization)


@cli.command("promote")
@click.option("--model-uri", required=True, help="The registered version to consider: models:/<name>/<version>.")
@click.option("--alias", default="champion", show_default=True, help="The alias to move.")
@click.option("--min-accuracy", type=float, default=0.0, show_default=True, help="Lowest test accuracy allowed.")
@click.option("--allow-shape-change", type=click.BOOL, default=False, is_flag=False, flag_value=True,
              help="Move the alias though this version takes another input shape than its holder: clients sending "
              "pixels of the old shape are refused from then on.")  # fmt: skip
def promote_command(model_uri: str, alias: str, min_accuracy: float, allow_shape_change: bool) -> None:
    """Move the alias to this version if its test accuracy is at least the current holder's and the threshold."""
    if not 0.0 <= min_accuracy <= 1.0:
        raise invalid("min_accuracy", min_accuracy, "a number from 0 to 1")
    parse_version_uri(model_uri)
    check_alias(alias)
    _model_args(model_uri)
    from tftrain.ship.registry import promote

    click.echo(promote(model_uri, alias, min_accuracy, allow_shape_change).reason)


@cli.command("predict")
@model_uri_option
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--output", default="-", show_default=True, help="File to write; '-' writes to standard output.")
@click.option(
    "--format",
    "fmt",
    type=_Choice(("auto", "csv", "json")),
    default="auto",
    show_default=True,
    help="auto: JSON when the output file ends in .json, else CSV (and CSV on standard output).",
)
def predict_command(model_uri: str, inputs: tuple[str, ...], output: str, fmt: str) -> None:
    """Predict the class of each image in INPUT: image files (PNG, JPEG, BMP, GIF), folders of them (searched
    recursively), or IDX image files; each is resized and converted to the model's input size and channels."""
    check_model_uri(model_uri)
    check_inputs(inputs)
    if fmt == "auto":
        fmt = "json" if output.lower().endswith(".json") else "csv"
    if output != "-":
        check_output_file(output)
    _model_args(model_uri)
    from tftrain.ship.predict import predict

    predict(model_uri, list(inputs), output, fmt)


@cli.command("serve")
@click.option(
    "--model-uri",
    default="models:/tftrain-fashion-mnist@champion",
    show_default=True,
    help="The model to serve; models:/tftrain-fashion-mnist-litert@champion is its LiteRT twin.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. The scoring server has no authentication: expose it only behind a proxy.",
)
@click.option("--port", type=click.IntRange(1, 65535), default=5001, show_default=True, help="Port to listen on.")
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=None,
    help="Server processes, each with the model loaded. Default: one per core, as many as half the free memory "
    "holds.",
)
@click.option(
    "--max-body-mb",
    type=click.FloatRange(0.001, 2000),
    default=10.0,
    show_default=True,
    help="Largest request body; larger ones get HTTP 413 before they are read.",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: worker processes on this machine. ray: Ray Serve replicas on the Ray cluster of RAY_ADDRESS (or a "
    "local one), same requests and answers.",
)
@click.option(
    "--replicas",
    type=click.IntRange(1, 1024),
    default=None,
    help="With --engine ray: how many replicas (one CPU each). Default: 2.",
)
def serve_command(
    model_uri: str, host: str, port: int, workers: int | None, max_body_mb: float, engine: str, replicas: int | None
) -> None:
    """Serve a model over HTTP: MLflow's scoring protocol (POST /invocations) in several workers or Ray Serve
    replicas, with request limits and dynamic batching."""
    check_model_uri(model_uri)
    check_address(host, port)
    if engine == "ray" and workers:
        raise UserError("--workers is for --engine local; with --engine ray, say --replicas")
    if engine == "local" and replicas:
        raise UserError(f"--replicas is for --engine ray; received --replicas {replicas} with --engine local (say --workers)")
    _model_args(model_uri)
    if engine == "ray":
        from tftrain.cluster.ray_serve import serve_on_ray

        serve_on_ray(model_uri, host, port, replicas or 2, max_body_mb)
        return
    from tftrain.ship.serve import serve

    serve(model_uri, host, port, workers, max_body_mb)


@cli.command("sync")
@click.argument("journal", metavar="FOLDER")
def sync_command(journal: str) -> None:
    """Upload what a run kept on local disk while the tracking server was away (the FOLDER training named)."""
    folder, run_id = journal_run(journal)
    check_tracking_store()
    check_run(run_id, f"offline journal {folder}")
    from tftrain.tracking.sync import replay_journal

    run_id = replay_journal(folder)
    click.echo(f"uploaded {folder} into run {run_id}")


@cli.command("pipeline")
@config_options(TrainConfig)
def pipeline_command(**params) -> None:
    """The main job: train, evaluate, export and promote in one MLflow run, then say where to look."""
    cfg = _training_args(params)
    from tftrain.pipeline import pipeline

    pipeline(cfg)


@cli.command("sweep")
@config_options(TrainConfig)
@config_options(SweepConfig)
def sweep_command(**params) -> None:
    """Search hyperparameters with Optuna: each trial a training run nested under the study's parent run, losers
    pruned by epoch; the best model tested, exported and gated. Rerun the same command to continue a stopped
    sweep; run it on several machines with a shared storage to spread the trials."""
    names = {f.name for f in dataclasses.fields(SweepConfig)}
    sw = SweepConfig(**{k: v for k, v in params.items() if k in names})
    cfg = _training_args({k: v for k, v in params.items() if k not in names})
    dims = check_sweep(sw, cfg)
    check_storage(storage_url(sw, cfg))
    check_study(sw, cfg, dims)
    from tftrain.search.summary import report
    from tftrain.search.sweep import sweep

    result = sweep(cfg, sw, dims)
    if result.summarized:
        click.echo(report(result, sw.objective))
    if not result.best and result.summarized:
        raise TrainingFailed(f"study {result.study}: no trial completed ({result.counts}); see the trial runs")


@cli.command("bench")
@click.option(
    "--only",
    default="",
    help="Comma-separated configurations, and `folders` for the image-folder figures (default: all but the full "
    "suite's); an unknown name lists them all.",
)
@click.option("--full", is_flag=True, help="Also the tuned MLP and the stronger cnn_bn preset (about 12 minutes more).")
@click.option(
    "--repeat",
    type=click.IntRange(1, 20),
    default=1,
    show_default=True,
    help="Run everything this many times; the table shows medians.",
)
@click.option(
    "--epochs",
    type=click.IntRange(0, 1000),
    default=0,
    show_default=True,
    help="Cap every configuration at this many epochs; 0: each one's own (quick checks only).",
)
@data_dir_option
@click.option("--log-mlflow", is_flag=True, help="Log the figures to the tracking store, experiment tftrain-bench.")
@click.option("--json", "json_out", default="", help="Also write every repeat's raw figures to this JSON file.")
@click.option(
    "--panel",
    type=click.Choice(["", "all", "quick"]),
    default="",
    help="Instead: tftrain's defaults against plain Keras fit on a panel of real image folders, every model kind "
    "(all: about 35 minutes on 2 cores; quick: one small photo folder, two models).",
)
def bench_command(
    only: str, full: bool, repeat: int, epochs: int, data_dir: str, log_mlflow: bool, json_out: str, panel: str
):
    """Time tftrain's defaults against the write-up's recipes and a careful user's tf.data pipeline on Fashion-MNIST,
    and on it as a folder of PNG files, each in a fresh process; print the tables (s/epoch, samples/s, time to
    accuracy, test accuracy, tracking share, decoding, peak memory) and a verdict per target."""
    from tftrain.bench.setups import select

    select(only, full)
    data_dir = check_data_dir(data_dir)
    if json_out:
        check_output_file(json_out, "--json")
    if panel:
        from tftrain.bench import panel as run_panel

        if not run_panel(panel, epochs, data_dir, json_out):
            raise TrainingFailed("bench: some panel pairs failed (named above); the table has the others")
        return
    if log_mlflow:
        check_tracking_store()
    from tftrain.bench import bench

    if not bench(only, full, repeat, data_dir, epochs, log_mlflow, json_out):
        raise TrainingFailed("bench: some configurations failed (named above); the table has the others")


def _click_reason(e: click.ClickException) -> str:
    """click's message; under `mlflow run`, an unknown option is a -P key the entry point does not declare (MLflow
    logs it as a param and appends it to the command as --key value): say so in -P terms."""
    name = getattr(e, "option_name", "") or ""
    if not (isinstance(e, click.NoSuchOption) and mlflow_run_id() and name.startswith("--")):
        return e.format_message()
    args = sys.argv[1:]
    value = args[args.index(name) + 1] if name in args[:-1] else ""
    close = " or ".join(p.lstrip("-").replace("-", "_") for p in e.possibilities or [])
    return (
        f"invalid value for -P: received {name[2:]}={value} (not a parameter of the MLproject entry point; mlflow "
        f"run logged it and passed it on as {name}); allowed: the entry point's parameters"
        + (f"; did you mean {close}?" if close else "")
    )


def _refuse(reason: str, exit_code: int, mark: bool = True) -> None:
    """One line and the exit code; a usage error under `mlflow run` also marks the run MLflow made (store.py)."""
    click.echo(f"tftrain: error: {reason}", err=True)
    problem = mark_refused(reason) if mark and exit_code == 2 else None
    if problem:
        click.echo(f"tftrain: warning: {problem}", err=True)
    sys.exit(exit_code)


def main() -> None:
    """Run the CLI; a user mistake is one line on stderr and exit code 2, never a traceback."""
    try:
        cli.main(standalone_mode=False, prog_name="tftrain")
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.NoArgsIsHelpError as e:
        click.echo(e.format_message(), err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        _refuse(_click_reason(e), e.exit_code)
    except click.exceptions.Abort:
        click.echo("tftrain: aborted", err=True)
        sys.exit(130)
    except UserError as e:
        _refuse(str(e), e.exit_code, mark=not isinstance(e, StoreError))
    except KeyboardInterrupt:
        click.echo("tftrain: interrupted", err=True)
        sys.exit(130)
