"""The benchmark's figures, compared: speed-ups within a repeat, medians across repeats, the table and the targets."""

from __future__ import annotations

import statistics

from tftrain.bench.setups import TARGETS


def seconds_to(curve: list, accuracy: float) -> float | None:
    """Training seconds until the test accuracy first reached `accuracy` (None: never)."""
    return next((elapsed for elapsed, reached in curve if reached >= accuracy), None)


def _recipe_of(model: str) -> str:
    return "recipe-mlp" if model == "mlp" else "recipe-cnn"


def with_comparisons(results: list[dict]) -> list[dict]:
    """Add to each row of one repeat: its speed-up over the recipe of the same model (another model's samples/s
    are no yardstick), and how long it took to reach the target and the final accuracy of its family's recipe."""
    by_name = {r["name"]: r for r in results}
    for r in results:
        recipe = by_name.get(_recipe_of(r["model"]))
        same_model = recipe is not None and recipe["model"] == r["model"]
        r["speedup"] = r["samples_per_second"] / recipe["samples_per_second"] if same_model else None
        r["recipe_accuracy"] = recipe and recipe["test_accuracy"]
        r["recipe_fit_seconds"] = recipe and recipe["fit_seconds"]
        r["seconds_to_target"] = seconds_to(r["curve"], r["target"])
        r["seconds_to_recipe_accuracy"] = recipe and seconds_to(r["curve"], recipe["test_accuracy"])
    return results


def _median(values: list):
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def summarize(repeats: list[list[dict]]) -> list[dict]:
    """One row per configuration: the median over the repeats of each figure any repeat measured (None where
    none did; speed-ups are taken within a repeat), the first repeat's value of anything else."""
    rows = []
    for name in dict.fromkeys(r["name"] for repeat in repeats for r in repeat):
        runs = [r for repeat in repeats for r in repeat if r["name"] == name]
        row = {}
        for k in runs[0].keys() - {"curve"}:
            values = [r[k] for r in runs]
            row[k] = _median(values) if any(_number(v) for v in values) else values[0]
        row["repeats"] = len(runs)
        rows.append(row)
    return rows


def _fmt(value, spec: str, missing: str = "-", unit: str = "") -> str:
    return missing if value is None else format(value, spec) + unit


def table(rows: list[dict]) -> str:
    lines = [
        "| configuration | epochs | warm s/epoch | samples/s | vs recipe | GFLOP/s (MFLOP/example) "
        "| s to target | s to recipe's accuracy | train s | test accuracy | tracking | model logging s | peak MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['epochs']:.0f} | {r['seconds_per_epoch']:.3f} | {r['samples_per_second']:,.0f} "
            f"| {_fmt(r['speedup'], '.1f', unit='x')} | {r['gflops']:.1f} ({r['gflop_per_example'] * 1000:.2f}) "
            f"| {_fmt(r['seconds_to_target'], '.1f', 'not reached')} (to {r['target']}) "
            f"| {_fmt(r['seconds_to_recipe_accuracy'], '.1f', 'not reached')} | {r['fit_seconds']:.1f} "
            f"| {r['test_accuracy']:.4f} | {_fmt(r['tracking_share'] and 100 * r['tracking_share'], '.2f', unit='%')} "
            f"| {_fmt(r['model_logging_seconds'], '.1f')} | {r['peak_rss_mb']:,.0f} |"
        )
    return "\n".join(lines + [""] + [f"- {r['name']}: {r['describe']}" for r in rows])


def _verdict(label: str, value, goal: float, higher_is_better: bool, unit: str = "") -> str:
    sign = ">=" if higher_is_better else "<="
    if value is None:
        return f"- {label}: not measured in this run (goal {sign} {goal:g}{unit})"
    met = value >= goal if higher_is_better else value <= goal
    by = "" if met else f" by {100 * abs(goal - value) / goal:.0f}%"
    return f"- {label}: {value:.3g}{unit} (goal {sign} {goal:g}{unit}): {'met' if met else 'missed'}{by}"


def _time_verdict(label: str, row: dict | None, goal: float) -> str:
    if row is None or row["seconds_to_target"] is not None:
        return _verdict(label, row and row["seconds_to_target"], goal, False, " s")
    return (
        f"- {label}: not reached (goal <= {goal:g} s): the test accuracy ended at {row['test_accuracy']:.4f} "
        f"after {row['fit_seconds']:.0f} s of training"
    )


def targets(rows: list[dict]) -> str:
    row = {r["name"]: r for r in rows}
    shares = [r["tracking_share"] for r in rows if r["tracking_share"] is not None]
    speedup = lambda name: row[name]["speedup"] if name in row else None  # noqa: E731
    lines = [
        _verdict("MLP samples/s over the write-up's recipe", speedup("tftrain-mlp"), TARGETS["mlp_speedup"], True, "x"),
        _verdict("seed CNN samples/s over the write-up's recipe", speedup("tftrain-cnn"), TARGETS["cnn_speedup"], True, "x"),
        _verdict("MLflow tracking, share of training time (worst row)", max(shares) * 100 if shares else None,
                 TARGETS["tracking_share"] * 100, False, "%"),
        _time_verdict("MLP training seconds to 0.89 test accuracy", row.get("tftrain-mlp"), TARGETS["mlp_seconds_to_0.89"]),
        _time_verdict("cnn_bn training seconds to 0.94 test accuracy", row.get("tftrain-cnn_bn"),
                      TARGETS["cnn_bn_seconds_to_0.94"]),
    ]  # fmt: skip
    if "tftrain-mlp" in row and "recipe-mlp" in row:
        r = row["tftrain-mlp"]
        when = r["seconds_to_recipe_accuracy"]
        reached = f"reached it after {when:.1f} s" if when is not None else "never reached it"
        lines.append(
            f"- MLP against the recipe's own result ({r['recipe_accuracy']:.4f} after {r['recipe_fit_seconds']:.1f} s "
            f"of training): tftrain {reached} and ended at {r['test_accuracy']:.4f}"
        )
    return "\n".join(lines)
