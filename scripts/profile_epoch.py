"""Where one warm training epoch spends its time, op by op: TensorFlow's profiler over `model.fit` on tftrain's
input pipeline, summed per op type across threads, and grouped by what bounds it. The figures behind "What bounds
it" in docs/benchmarks.md.

    .venv/bin/python scripts/profile_epoch.py --model cnn --batch-size 512 --precision mixed_bfloat16
"""

from __future__ import annotations

import argparse
import collections
import os
import tempfile
import time
from pathlib import Path

import keras
import tensorflow as tf
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from tftrain.config import MODELS, PRECISIONS
from tftrain.data.datasets import load_dataset, make_dataset, split_validation
from tftrain.models.build import build_model
from tftrain.training.task import Task
from tftrain.training.trainer import compile_model

# profiler events that wrap others (the whole step, a thread pool's loop): left out of the per-op sums
WRAPPERS = ("Execute", "Run", "Process", "multi_step_on_iterator", "__inference", "TFE_Py", "Iterator", "DoCompute",
            "Root", "ParallelFor")  # fmt: skip
# what bounds an op: multiply-adds (arithmetic), a pass over a large tensor (memory), handing batches over (input)
KINDS = {
    "arithmetic": ("MatMul", "Conv2D", "FusedBatchNorm"),
    "input pipeline": ("Prefetch", "FlatMap", "AssertCardinality", "TensorSlice", "Concatenate", "GatherV2",
                       "Dataset", "Shuffle"),
}  # fmt: skip


def kind(op: str) -> str:
    return next((k for k, names in KINDS.items() if any(n in op for n in names)), "memory (elementwise, pooling)")


def op_times(folder: Path) -> collections.Counter:
    """Milliseconds per op type, over every thread but Python's."""
    trace = next(folder.rglob("*.xplane.pb"))
    space = xplane_pb2.XSpace()
    space.ParseFromString(trace.read_bytes())
    totals: collections.Counter = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if line.name == "python":
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name.split(":")[-1].strip()
                if not any(w in name for w in WRAPPERS):
                    totals[name] += event.duration_ps / 1e9
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default="cnn")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--precision", choices=[p for p in PRECISIONS if p != "auto"], default="mixed_bfloat16")
    parser.add_argument("--data-dir", default="", help="Fashion-MNIST IDX folder; empty: look it up")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    data = load_dataset("fashion_mnist", args.data_dir)
    (x, y), val = split_validation(data.x_train, data.y_train, 0.2)
    keras.mixed_precision.set_global_policy(args.precision)
    task = Task(data.name, data.class_names, (x, y), val, val, build_model=lambda: build_model(args.model))
    model = task.build_model()
    compile_model(model, task, 0.001, 50)
    train = make_dataset(x, y, args.batch_size, shuffle=True, seed=1)
    model.fit(train, epochs=1, verbose=0)  # traces the graph
    with tempfile.TemporaryDirectory() as folder:
        tf.profiler.experimental.start(folder)
        started = time.perf_counter()
        model.fit(train, epochs=1, verbose=0)
        wall = time.perf_counter() - started
        tf.profiler.experimental.stop()
        totals = op_times(Path(folder))
    busy = sum(totals.values())
    cores = os.cpu_count() or 1
    print(f"{args.model}, batch {args.batch_size}, {args.precision}: one warm epoch of {len(x):,} examples")
    print(f"wall {wall * 1000:.0f} ms (profiled); op time over all threads {busy:.0f} ms, "
          f"{100 * busy / (wall * 1000 * cores):.0f}% of {cores} cores\n")  # fmt: skip
    by_kind: collections.Counter = collections.Counter()
    for name, ms in totals.items():
        by_kind[kind(name)] += ms
    print("| bound by | ms | share |\n|---|---:|---:|")
    for name, ms in by_kind.most_common():
        print(f"| {name} | {ms:.0f} | {100 * ms / busy:.1f}% |")
    print("\n| op | ms | share |\n|---|---:|---:|")
    for name, ms in totals.most_common(args.top):
        print(f"| {name} | {ms:.0f} | {100 * ms / busy:.1f}% |")


if __name__ == "__main__":
    main()
