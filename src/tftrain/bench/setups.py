"""What `tftrain bench` runs: the write-up's recipes and tftrain's tuned configurations, and the targets it checks."""

from __future__ import annotations

from dataclasses import dataclass, field

from tftrain.errors import UserError

RECIPE_EPOCHS = 5  # the write-up's listings train 5 epochs


USER_BATCH, USER_EPOCHS = 256, 20  # the careful user's pipeline: batch(256), and tftrain's default epochs


@dataclass(frozen=True)
class Setup:
    """One row of the benchmark: the write-up's recipe for `model`, the careful user's hand-written tf.data
    pipeline for it, or tftrain's `train` with `settings` over its defaults."""

    name: str
    model: str
    target: float  # the test accuracy whose time is reported
    kind: str = "tftrain"
    settings: dict = field(default_factory=dict)  # TrainConfig fields over the defaults (tftrain rows)
    long: bool = False  # only in the full suite

    @property
    def describe(self) -> str:
        if self.kind == "recipe":
            batch = 32 if self.model == "mlp" else 64
            return f"write-up {self.model}: fit on numpy arrays, batch {batch}, validation_split=0.2"
        if self.kind == "user":
            return (f"careful user, write-up {self.model}: fit on tf.data (cache, shuffle, batch {USER_BATCH}, "
                    "prefetch), float32")  # fmt: skip
        shown = ", ".join(f"{k}={v}" for k, v in self.settings.items() if k != "model")
        return f"tftrain {self.model}: {shown or 'the defaults of tftrain train'}"


# The tuned settings of the full suite: the fastest found on a 2-core CPU for a given accuracy, with the learning
# rate picked by validation accuracy (MLP: 0.005, 0.008, 0.012 gave 0.8945, 0.8954, 0.8926). Every callback stays
# on but early stopping (pointless under a cosine decay to zero) and TensorBoard's histograms.
TUNED_MLP = {"engine": "custom", "batch_size": 4096, "learning_rate": 0.008, "epochs": 80, "early_stopping": False,
             "histogram_freq": 0}  # fmt: skip
STRONG = {"model": "cnn_bn", "batch_size": 256, "learning_rate": 0.003, "steps_per_execution": 10, "epochs": 50,
          "validation_split": 0.1, "early_stopping": False, "histogram_freq": 0}  # fmt: skip

SETUPS = (
    Setup("recipe-mlp", "mlp", 0.89, kind="recipe"),
    Setup("user-mlp", "mlp", 0.89, kind="user"),
    Setup("tftrain-mlp", "mlp", 0.89),
    Setup("tftrain-mlp-float32", "mlp", 0.89, settings={"precision": "float32"}),
    Setup("recipe-cnn", "cnn", 0.91, kind="recipe"),
    Setup("user-cnn", "cnn", 0.91, kind="user"),
    Setup("tftrain-cnn", "cnn", 0.91),
    Setup(f"tftrain-cnn-{RECIPE_EPOCHS}-epochs", "cnn", 0.91, settings={"epochs": RECIPE_EPOCHS}),
    Setup("tftrain-cnn-float32", "cnn", 0.91, settings={"precision": "float32"}),
    Setup("tftrain-mlp-tuned", "mlp", 0.89, settings=TUNED_MLP, long=True),
    Setup("tftrain-cnn_bn", "cnn_bn", 0.94, settings=STRONG, long=True),
)
BY_NAME = {s.name: s for s in SETUPS}
# The validation accuracy whose time the careful user's pipeline and tftrain's defaults are compared at: what
# both reach well within their epochs (the user's MLP plateaus near 0.885).
VAL_TARGETS = {"mlp": 0.88, "cnn": 0.91}
TARGETS = {
    "mlp_speedup": 15.0,  # tftrain's defaults over the write-up's recipe, samples/s (issue 14)
    "cnn_speedup": 4.0,
    "mlp_test_accuracy": 0.88,
    "user_time_ratio": 2.0,  # the careful user's seconds to the validation target over tftrain's
    "tracking_share": 0.03,  # issue 7
    "mlp_seconds_to_0.89": 20.0,  # the tuned MLP, full suite
    "cnn_bn_seconds_to_0.94": 900.0,
}


FOLDERS = "folders"  # the name of the image-folder figures (bench/folders.py) in --only


def select(only: str, full: bool) -> tuple[list[Setup], bool]:
    """The configurations to run, and whether the image-folder figures go with them."""
    if not only:
        return [s for s in SETUPS if full or not s.long], True
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME and n != FOLDERS]
    if unknown or not names:
        raise UserError(
            f"invalid value for --only: received {only!r}; allowed: comma-separated names from "
            f"{', '.join([*BY_NAME, FOLDERS])}"
        )
    return [BY_NAME[n] for n in names if n != FOLDERS], FOLDERS in names
