"""An image folder's layout: its classes and image files, in one of the LAYOUTS, checked before anything is
decoded (in well under a second, without TensorFlow: the CLI's checks run it)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tftrain.data.images import IMAGE_SUFFIXES
from tftrain.errors import UserError

LAYOUTS = "PATH/<class>/<images>, or PATH/train/<class>/... with PATH/test/<class>/... and optionally PATH/val/"


IMAGES_ALLOWED = "PNG, JPEG, BMP or GIF files (.png .jpg .jpeg .bmp .gif) in it or its subfolders"


@dataclass(frozen=True)
class Listing:
    """What `scan` found: class names (sorted folder names) and per split, (path relative to root, label)."""

    root: Path
    class_names: tuple[str, ...]
    splits: dict[str, list[tuple[str, int]]]  # "all" (flat layout), or "train", "test" and maybe "val"
    ignored: int  # files that are not images by suffix (or hidden, like .DS_Store and macOS ._ files)
    stats: dict[str, tuple[int, int]]  # path relative to root -> (size, mtime_ns); (-1, -1) for a dangling link


def image_files(folder: Path) -> list[Path]:
    """The image files under `folder`, at any depth, sorted; hidden files and folders (.DS_Store, ._x.png) left
    out."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def scan(path: str | Path) -> Listing:
    """The classes and image files of a folder in one of the LAYOUTS, checked before anything is decoded."""
    root = Path(path).expanduser().absolute()
    if not root.exists():
        raise UserError(
            f"image folder not found: received {str(path)!r}; allowed: an existing folder laid out as {LAYOUTS}"
        )
    if not root.is_dir():
        raise UserError(
            f"image folder expected: received the file {str(path)!r}; allowed: a folder laid out as {LAYOUTS}"
        )
    if not any(os.scandir(root)):
        raise UserError(f"image folder {root} is empty; allowed: a folder laid out as {LAYOUTS}")
    train = root / "train"
    if train.is_dir() and _subfolders(train):
        parts = {name: root / name for name in ("train", "val", "test") if (root / name).is_dir()}
    else:
        parts = {"all": root}
    found = {name: _scan_classes(folder, root, name in ("train", "all")) for name, folder in parts.items()}
    loose = 0 if "all" in parts else sum(1 for e in os.scandir(root) if not _is_dir(e))  # e.g. a README
    class_names = tuple(found.get("train", found.get("all"))[0])
    for name in [name for name in parts if name in ("val", "test")]:
        _check_same_classes(root, name, class_names, tuple(found[name][0]))
    label = {name: k for k, name in enumerate(class_names)}
    splits = {
        name: [(rel, label[c]) for c, images in classes.items() for rel in sorted(images)]
        for name, (classes, _) in found.items()
    }
    stats = {rel: stat for classes, _ in found.values() for images in classes.values() for rel, stat in images.items()}
    return Listing(root, class_names, splits, loose + sum(ignored for _, ignored in found.values()), stats)


def _subfolders(folder: Path) -> list[str]:
    """Visible subfolder names, sorted (symlinks to folders count; .git, .ipynb_checkpoints and such do not)."""
    return sorted(e.name for e in os.scandir(folder) if _is_dir(e) and not e.name.startswith((".", "__MACOSX")))


def _is_dir(entry: os.DirEntry) -> bool:
    """A folder, or a link to one; False for a link this process may not follow (/proc/1/cwd), as os.walk does."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _scan_classes(folder: Path, root: Path, primary: bool) -> tuple[dict[str, dict[str, tuple[int, int]]], int]:
    """Class name -> its image files (relative to root) with their (size, mtime), and the count of other files,
    for one split.
    Only the primary split (train/ or the folder itself) must have 2 classes: test/ and val/ must match it."""
    classes = _subfolders(folder)
    where = folder if folder == root else f"{root}/{folder.name}"
    loose = sum(1 for e in os.scandir(folder) if not _is_dir(e))  # files next to the class folders: ignored
    if primary and len(classes) < 2:
        extra = f" and {loose} files directly in it" if loose else ""
        raise UserError(
            f"image folder {where} has {len(classes)} class folder(s) ({name_list(classes) or 'none'}){extra}; "
            f"allowed: at least 2 class folders, one per class, named after it ({LAYOUTS})"
        )
    found = {name: _walk_images(folder / name, root) for name in classes}
    empty = [name for name, (images, _) in found.items() if not images]
    if empty:
        others = sum(found[name][1] for name in empty)
        raise UserError(
            f"class folder(s) with no images in {where}: {name_list(empty)} (received {others} other files); "
            f"allowed: {IMAGES_ALLOWED}"
        )
    return {name: images for name, (images, _) in found.items()}, loose + sum(n for _, n in found.values())


def _walk_images(folder: Path, root: Path) -> tuple[dict[str, tuple[int, int]], int]:
    """Image files anywhere under `folder` (following symlinks, each real folder once so a link loop ends),
    relative to root, with their (size, mtime) for the cache key; and the number of other files."""
    images, ignored, seen, todo, start = {}, 0, set(), [str(folder)], len(str(root)) + 1
    while todo:
        here = todo.pop()
        try:
            real = os.path.realpath(here)  # raises on a link it may not read (/proc/1/cwd)
            if real in seen:
                continue
            seen.add(real)
            entries = list(os.scandir(here))
        except OSError:  # unreadable folder: skipped, as os.walk does
            continue
        for e in entries:
            if _is_dir(e):
                if not e.name.startswith("."):
                    todo.append(e.path)
            elif e.name.lower().endswith(IMAGE_SUFFIXES) and not e.name.startswith("."):
                images[e.path[start:]] = file_stat(e)
            else:
                ignored += 1
    return images, ignored


def _check_same_classes(root: Path, split: str, train: tuple[str, ...], other: tuple[str, ...]) -> None:
    """test/ or val/ must name exactly train/'s classes: a label means the same class in every split."""
    if other != train:
        only_train, only_other = sorted(set(train) - set(other)), sorted(set(other) - set(train))
        raise UserError(
            f"class folders of {root}/{split} differ from train/: only in train/: {name_list(only_train) or 'none'}; "
            f"only in {split}/: {name_list(only_other) or 'none'}; allowed: the same class folders in train/ and {split}/"
        )


def name_list(names: list[str], limit: int = 10) -> str:
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def file_stat(entry: os.DirEntry) -> tuple[int, int]:
    try:
        st = entry.stat()
        return st.st_size, st.st_mtime_ns
    except OSError:  # a dangling symlink: listed, then reported unreadable by the decode
        return -1, -1
