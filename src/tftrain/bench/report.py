"""The benchmark's figures, compared: ratios within a repeat, medians across repeats, the table and the targets."""

from __future__ import annotations

import statistics

from tftrain.bench.setups import RECIPE_EPOCHS, TARGETS, VAL_TARGETS


def seconds_to(curve: list, accuracy: float) -> float | None:
    """Training seconds until the accuracy of (seconds, accuracy) points first reached `accuracy` (None: never)."""
    return next((elapsed for elapsed, reached in curve if reached >= accuracy), None)


def _ratio(numerator, denominator):
    return numerator / denominator if numerator is not None and denominator else None


def with_comparisons(results: list[dict]) -> list[dict]:
    """Add to each row of one repeat what compares it with the baselines of the same model (another model's
    samples/s are no yardstick): samples/s over the recipe's and the careful user's, the user's seconds to the
    validation target over its own."""
    for r in results:
        r["val_target"] = VAL_TARGETS.get(r["model"])
        r["seconds_to_val_target"] = r["val_target"] and seconds_to(r["val_curve"], r["val_target"])
        r["seconds_to_target"] = seconds_to(r["curve"], r["target"])
    by_name = {r["name"]: r for r in results}
    for r in results:
        recipe, user = by_name.get(f"recipe-{r['model']}"), by_name.get(f"user-{r['model']}")
        r["speedup"] = _ratio(r["samples_per_second"], recipe and recipe["samples_per_second"])
        r["vs_user"] = _ratio(r["samples_per_second"], user and user["samples_per_second"])
        r["user_time_ratio"] = _ratio(user and user["seconds_to_val_target"], r["seconds_to_val_target"])
        r["recipe_accuracy"] = recipe and recipe["test_accuracy"]
        r["recipe_epochs"] = recipe and recipe["epochs"]
    return results


def _median(values: list):
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def summarize(repeats: list[list[dict]]) -> list[dict]:
    """One row per configuration: the median over the repeats of each figure any repeat measured (None where
    none did; ratios are taken within a repeat), the first repeat's value of anything else."""
    rows = []
    for name in dict.fromkeys(r["name"] for repeat in repeats for r in repeat):
        runs = [r for repeat in repeats for r in repeat if r["name"] == name]
        row = {}
        for k in runs[0].keys() - {"curve", "val_curve"}:
            values = [r[k] for r in runs]
            row[k] = _median(values) if any(_number(v) for v in values) else values[0]
        row["repeats"] = len(runs)
        rows.append(row)
    return rows


def _fmt(value, spec: str, missing: str = "-", unit: str = "") -> str:
    return missing if value is None else format(value, spec) + unit


def table(rows: list[dict]) -> str:
    lines = [
        "| configuration | epochs | warm s/epoch | samples/s | vs recipe | vs user | GFLOP/s (MFLOP/example) "
        "| s to val target | user's time to it | s to test target | train s | test accuracy | tracking | peak MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        to_val = "-"
        if r["val_target"]:
            to_val = f"{_fmt(r['seconds_to_val_target'], '.1f', 'not reached')} (to {r['val_target']})"
        lines.append(
            f"| {r['name']} | {r['epochs']:.0f} | {r['seconds_per_epoch']:.3f} | {r['samples_per_second']:,.0f} "
            f"| {_fmt(r['speedup'], '.1f', unit='x')} | {_fmt(r['vs_user'], '.1f', unit='x')} "
            f"| {r['gflops']:.1f} ({r['gflop_per_example'] * 1000:.2f}) "
            f"| {to_val} "
            f"| {_fmt(r['user_time_ratio'], '.1f', unit='x')} "
            f"| {_fmt(r['seconds_to_target'], '.1f', 'not reached')} (to {r['target']}) | {r['fit_seconds']:.1f} "
            f"| {r['test_accuracy']:.4f} | {_fmt(r['tracking_share'] and 100 * r['tracking_share'], '.2f', unit='%')} "
            f"| {r['peak_rss_mb']:,.0f} |"
        )
    return "\n".join(lines + [""] + [f"- {r['name']}: {r['describe']}" for r in rows])


def _verdict(label: str, value, goal: float, higher_is_better: bool, unit: str = "", digits: str = ".3g") -> str:
    sign = ">=" if higher_is_better else "<="
    if value is None:
        return f"- {label}: not measured in this run (goal {sign} {goal:g}{unit})"
    met = value >= goal if higher_is_better else value <= goal
    by = "" if met else f" by {100 * abs(goal - value) / goal:.0f}%"
    return f"- {label}: {value:{digits}}{unit} (goal {sign} {goal:g}{unit}): {'met' if met else 'missed'}{by}"


def _time_verdict(label: str, row: dict | None, goal: float) -> str:
    if row is None or row["seconds_to_target"] is not None:
        return _verdict(label, row and row["seconds_to_target"], goal, False, " s")
    return (
        f"- {label}: not reached (goal <= {goal:g} s): the test accuracy ended at {row['test_accuracy']:.4f} "
        f"after {row['fit_seconds']:.0f} s of training"
    )


def _user_verdict(label: str, row: dict | None) -> str:
    if row is None or row["user_time_ratio"] is not None or row["vs_user"] is None:
        return _verdict(label, row and row["user_time_ratio"], TARGETS["user_time_ratio"], True, "x")
    return f"- {label}: not comparable: one of the two never reached validation accuracy {row['val_target']}"


def _recipe_accuracy_verdict(label: str, row: dict | None) -> str:
    """A row that trained as many epochs as the recipe, against the recipe's test accuracy."""
    if row is None or row["recipe_accuracy"] is None or row["epochs"] != row["recipe_epochs"]:
        return f"- {label}: not measured in this run"
    ours, theirs = row["test_accuracy"], row["recipe_accuracy"]
    return (
        f"- {label}: {ours:.4f} against the recipe's {theirs:.4f} after {row['epochs']:.0f} epochs "
        f"(goal: at least the recipe's): {'met' if ours >= theirs else 'missed'}"
    )


def targets(rows: list[dict]) -> str:
    row = {r["name"]: r for r in rows}
    shares = [r["tracking_share"] for r in rows if r["tracking_share"] is not None]
    figure = lambda name, key: row[name][key] if name in row else None  # noqa: E731
    lines = [
        _verdict("default MLP, samples/s over the write-up's recipe", figure("tftrain-mlp", "speedup"),
                 TARGETS["mlp_speedup"], True, "x"),
        _verdict("default CNN, samples/s over the write-up's recipe", figure("tftrain-cnn", "speedup"),
                 TARGETS["cnn_speedup"], True, "x"),
        _user_verdict(f"default MLP, the careful user's time to validation accuracy {VAL_TARGETS['mlp']} over ours",
                      row.get("tftrain-mlp")),
        _user_verdict(f"default CNN, the careful user's time to validation accuracy {VAL_TARGETS['cnn']} over ours",
                      row.get("tftrain-cnn")),
        _verdict("default MLP, test accuracy", figure("tftrain-mlp", "test_accuracy"), TARGETS["mlp_test_accuracy"],
                 True, digits=".4f"),
        _recipe_accuracy_verdict(f"default CNN with epochs={RECIPE_EPOCHS}, test accuracy",
                                 row.get(f"tftrain-cnn-{RECIPE_EPOCHS}-epochs")),
        _verdict("MLflow tracking, share of training time (worst row)", max(shares) * 100 if shares else None,
                 TARGETS["tracking_share"] * 100, False, "%"),
    ]  # fmt: skip
    if "tftrain-mlp-tuned" in row:
        lines.append(_time_verdict("tuned MLP, training seconds to 0.89 test accuracy", row["tftrain-mlp-tuned"],
                                   TARGETS["mlp_seconds_to_0.89"]))  # fmt: skip
    if "tftrain-cnn_bn" in row:
        lines.append(_time_verdict("cnn_bn, training seconds to 0.94 test accuracy", row["tftrain-cnn_bn"],
                                   TARGETS["cnn_bn_seconds_to_0.94"]))  # fmt: skip
    return "\n".join(lines)
