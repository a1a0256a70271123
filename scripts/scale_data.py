"""Image folders larger than memory: peak memory and time of `tftrain train` on folders of 2k to 100k JPEGs of
128x128 (crops of the photographs installed packages ship, bench/photos.py), each a whole command in a fresh
MLflow sqlite store, a second run of each reading the decoded cache. The figures of docs/own-data.md's "Folders
larger than memory".

    .venv/bin/python scripts/scale_data.py --out /tmp/scale-data --counts 2000,10000,30000,100000

The folders are made once under OUT/folders (kept between runs; about 5 KB a file) and their cache under
OUT/cache (49 KB an image). Peak RSS is the training process's own (getrusage of the child), in GB.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SIZE = 128


def _write_part(folder: str, names: list[str], first: int, count: int, seed: int) -> None:
    from PIL import Image

    from tftrain.bench.photos import _crop, photo_path

    rng = np.random.default_rng(seed)
    photos = {}
    for name in names:
        with Image.open(photo_path(name)) as image:
            photos[name] = np.asarray(image.convert("RGB"))
    for i in range(first, first + count):
        name = names[i % len(names)]
        crop = Image.fromarray(_crop(photos[name], rng)).resize((SIZE, SIZE), Image.BILINEAR)
        crop.save(Path(folder) / name / f"{i:06d}.jpg", quality=90)


def make_folder(folder: Path, count: int) -> Path:
    """`count` 128x128 JPEGs, spread over the photographs as classes, written by one process per core."""
    from tftrain.bench.photos import PHOTOS

    if (folder / ".complete").exists():
        return folder
    names = list(PHOTOS)
    for name in names:
        (folder / name).mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0))
    per = -(-count // cores)
    with cf.ProcessPoolExecutor(cores) as pool:
        done = [pool.submit(_write_part, str(folder), names, k * per, min(per, count - k * per), k)
                for k in range(cores) if k * per < count]  # fmt: skip
        for future in done:
            future.result()
    (folder / ".complete").touch()
    return folder


def train(folder: Path, out: Path, name: str, extra: list[str]) -> dict:
    """One `tftrain train` command; its wall time, peak RSS (getrusage of the child) and the log's figures."""
    work = out / "runs" / name
    work.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "tftrain", "train", "--dataset", str(folder), "--model", "cnn", "--epochs", "1",
               "--image-size", f"{SIZE}x{SIZE}", "--output-dir", str(work / "outputs"), *extra]  # fmt: skip
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "TFTRAIN_CACHE_DIR": str(out / "cache"),
    }
    started = time.perf_counter()
    with open(work / "train.log", "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    text = (work / "train.log").read_text()
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"scale_data.py: {name} failed; see {work / 'train.log'}:\n{text[-2000:]}")
    decode = re.search(r"decoded [\d,]+ images in ([\d.]+) s", text)
    batch = re.search(r"global batch (\d+)", text)
    if not (decode or "found" in text) or not batch:
        sys.exit(f"scale_data.py: {name}: the log has no decoding or batch line; see {work / 'train.log'}")
    run = _run(work)
    return {"name": name, "wall": wall, "rss_gb": usage.ru_maxrss * 1024 / 1e9,
            "decode": float(decode.group(1)) if decode else 0.0, "batch": int(batch.group(1)),
            "disk": run.data.params.get("images_from") == "disk",
            "epoch": float(run.data.metrics.get("epoch_seconds", float("nan")))}  # fmt: skip


def _run(work: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a folder for the image folders, cache and runs")
    parser.add_argument("--counts", default="2000,10000,30000,100000", help="images per folder, comma-separated")
    parser.add_argument("--in-memory-mb", default="", help="passed to train (empty: its default)")
    args = parser.parse_args()
    extra = ["--in-memory-mb", args.in_memory_mb] if args.in_memory_mb else []
    rows = []
    for count in [int(c) for c in args.counts.split(",")]:
        started = time.perf_counter()
        folder = make_folder(args.out / "folders" / f"jpeg-{count}", count)
        print(f"folder of {count:,} images ready ({time.perf_counter() - started:.0f} s)", flush=True)
        for attempt in ("decode", "cached"):
            row = train(folder, args.out, f"{count}-{attempt}", extra)
            cache = sum(f.stat().st_size for f in (args.out / "cache").rglob("*.npy"))
            rows.append({"images": count, "attempt": attempt, "cache_gb": cache / 1e9, **row})
            print(_line(rows[-1]), flush=True)
    print(f"\ncnn, 1 epoch, {SIZE}x{SIZE} JPEGs, in_memory_mb {args.in_memory_mb or 'default'}, "
          f"{len(os.sched_getaffinity(0))} cores")  # fmt: skip
    print(
        f"{'images':>8} {'run':>7} {'decode s':>9} {'batch':>6} {'epoch s':>8} {'wall s':>7} {'peak RSS GB':>12} {'from':>6}"
    )
    for row in rows:
        print(_line(row))


def _line(r: dict) -> str:
    return (f"{r['images']:>8,} {r['attempt']:>7} {r['decode']:>9.1f} {r['batch']:>6} {r['epoch']:>8.1f} {r['wall']:>7.0f} "
            f"{r['rss_gb']:>12.2f} {'disk' if r['disk'] else 'memory':>6}")  # fmt: skip


if __name__ == "__main__":
    main()
