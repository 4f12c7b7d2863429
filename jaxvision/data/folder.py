"""`folder:/root`: a user's own images in root/<split>/<class>/*, streamed from disk.

Classes are the sorted sub-folder names of root/train (an empty class folder still gets
its index, so labels match the folder order). Every file is decoded once when the folder
is first scanned, with the same decoder the pipeline uses, so a file that passes can
never fail later inside tf.data; files that are empty, not images or corrupt are reported
with their path and skipped (or, with dataset.on_bad_file="error", stop the run). The
verdicts are cached per (path, size, mtime) so later runs and resumes scan in seconds.
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import os

import numpy as np
import tensorflow as tf

from jaxvision.console import log
from jaxvision.data import preprocess

EVAL_DIRS = ("test", "val", "validation")
_LOG_LINES = 21  # the summary and the first 20 problems


@dataclasses.dataclass
class ScanReport:
    """What a scan found: bad files by reason (paths), empty classes, and the totals."""

    num_images: int = 0
    empty: list[str] = dataclasses.field(default_factory=list)
    not_image: list[str] = dataclasses.field(default_factory=list)
    corrupt: list[str] = dataclasses.field(default_factory=list)
    empty_classes: list[str] = dataclasses.field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        """Files left out of the dataset."""
        return len(self.empty) + len(self.not_image) + len(self.corrupt)

    def lines(self) -> list[str]:
        """Human-readable report, one problem per line."""
        out = [f"{self.num_images} images, {self.num_skipped} files skipped"]
        for reason in ("empty", "not_image", "corrupt"):
            out += [f"skipped ({reason.replace('_', ' ')}): {p}" for p in getattr(self, reason)]
        out += [f"class folder with no images: {c}" for c in self.empty_classes]
        return out


def _verdict(path: str) -> str:
    """ "ok", "empty", "not_image" or "corrupt" for one file."""
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        return "empty"
    try:
        image = preprocess.decode_bytes(tf.constant(data), 3)
    except tf.errors.InvalidArgumentError as e:
        # TF says "Unknown image file format" for anything that is not an image at all.
        return "not_image" if "Unknown image file format" in str(e) else "corrupt"
    return "ok" if image.shape[0] > 0 and image.shape[1] > 0 else "corrupt"


def _cache_path(root: str, cache_dir: str) -> str:
    key = hashlib.sha1(os.path.abspath(root).encode()).hexdigest()[:16]
    return os.path.join(cache_dir, f"folder-{key}.json")


def _load_cache(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _save_cache(path: str, verdicts: dict) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(verdicts, f)
        os.replace(tmp, path)
    except OSError as e:  # A read-only cache dir only costs a rescan next time.
        log.warning("Cannot write the folder scan cache %s: %s", path, e)


def _walk(directory: str) -> list[str]:
    """Every non-hidden file under `directory`, in sorted order."""
    files = []
    # Symlinked class folders work (the top is always followed); links below are not
    # followed, so a link cycle cannot make the scan loop forever.
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".")]
    return files


@dataclasses.dataclass
class ImageFolder:
    """The verified files of each split of an image folder, with their labels."""

    root: str
    class_names: list[str]
    splits: dict[str, tuple[list[str], np.ndarray]]  # split -> (paths, labels)
    report: ScanReport

    def paths_and_labels(self, split: str) -> tuple[list[str], np.ndarray]:
        """The files of `split` in storage order (a fixed shuffle of the sorted listing)."""
        if split not in self.splits:
            raise ValueError(
                f"Split {split!r} not found in image folder {self.root}; "
                f"available: {', '.join(sorted(self.splits))}."
            )
        return self.splits[split]


def _classes(root: str) -> list[str]:
    train = os.path.join(root, "train")
    if not os.path.isdir(train):
        raise FileNotFoundError(
            f"Image folder {root!r} has no train/ directory. Expected "
            f"{root}/train/<class>/<image> and optionally {root}/test/<class>/<image>."
        )
    classes = sorted(
        d
        for d in os.listdir(train)
        if not d.startswith(".") and os.path.isdir(os.path.join(train, d))
    )
    if not classes:
        raise ValueError(f"{train} has no class sub-folders (expected train/<class>/<image>).")
    return classes


def _storage_order(n: int) -> np.ndarray:
    # Listings are sorted by class; a fixed shuffle lets a bounded shuffle buffer mix classes.
    return np.random.default_rng(0).permutation(n)


def _holdout(labels: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask of a stratified `fraction` of each class, fixed by seed 0."""
    rng = np.random.default_rng(0)
    held = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = round(fraction * len(idx))
        held[rng.permutation(idx)[:k]] = True
    return held


def scan(
    root: str,
    *,
    train_split: str = "train",
    eval_split: str = "test",
    validation_fraction: float = 0.1,
    on_bad_file: str = "skip",
    cache_dir: str = "",
    threads: int = 8,
) -> ImageFolder:
    """Lists, verifies and splits an image folder; bad files are reported and skipped."""
    root = os.path.expanduser(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Image folder {root!r} does not exist or is not a directory.")
    classes = _classes(root)
    present = [
        d for d in [train_split, eval_split, *EVAL_DIRS] if os.path.isdir(os.path.join(root, d))
    ]
    split_dirs = list(dict.fromkeys(present))
    for split in split_dirs:
        extra = sorted(set(os.listdir(os.path.join(root, split))) - set(classes) - {""})
        extra = [
            e
            for e in extra
            if not e.startswith(".") and os.path.isdir(os.path.join(root, split, e))
        ]
        if extra:
            raise ValueError(
                f"{root}/{split} has class folders that are not in {root}/train: {extra}. "
                "Labels come from train/'s folder names, so every split must use the same ones."
            )
    listing = {
        split: [
            (p, label)
            for label, c in enumerate(classes)
            for p in _walk(os.path.join(root, split, c))
        ]
        for split in split_dirs
    }
    cache_file = _cache_path(root, cache_dir or os.path.expanduser("~/.cache/jaxvision"))
    cache = _load_cache(cache_file)
    files = [p for entries in listing.values() for p, _ in entries]
    keys = {}
    for p in files:
        st = os.stat(p)
        keys[p] = f"{os.path.relpath(p, root)}|{st.st_size}|{st.st_mtime_ns}"
    todo = [p for p in files if keys[p] not in cache]
    if todo:
        log.info("Verifying %d new image files in %s ...", len(todo), root)
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            for p, v in zip(todo, pool.map(_verdict, todo)):
                cache[keys[p]] = v
        _save_cache(cache_file, {keys[p]: cache[keys[p]] for p in files})
    report = ScanReport()
    splits = {}
    for split, entries in listing.items():
        good = [(p, label) for p, label in entries if cache[keys[p]] == "ok"]
        for p, _ in entries:
            if cache[keys[p]] != "ok":
                getattr(report, cache[keys[p]]).append(p)
        paths = [p for p, _ in good]
        labels = np.asarray([label for _, label in good], np.int64)
        order = _storage_order(len(paths))
        splits[split] = ([paths[i] for i in order], labels[order])
        report.num_images += len(paths)
    counts = (
        np.bincount(splits[train_split][1], minlength=len(classes))
        if train_split in splits
        else None
    )
    report.empty_classes = (
        [c for c, n in zip(classes, counts) if n == 0] if counts is not None else []
    )
    if report.num_skipped and on_bad_file == "error":
        raise ValueError(
            f"Image folder {root}: {report.num_skipped} bad files (dataset.on_bad_file='error'):\n"
            + "\n".join(report.lines()[1:21])
        )
    lines = report.lines()
    for line in lines[:_LOG_LINES]:
        log.info("%s: %s", root, line)
    if len(lines) > _LOG_LINES:
        log.info("%s: ... and %d more (see ScanReport)", root, len(lines) - _LOG_LINES)
    other = [d for d in EVAL_DIRS if d in splits]
    if eval_split not in splits and other:
        log.info("%s has no %s/: evaluating on %s/.", root, eval_split, other[0])
        splits[eval_split] = splits[other[0]]
    if eval_split not in splits and train_split in splits and validation_fraction > 0:
        paths, labels = splits[train_split]
        held = _holdout(labels, validation_fraction)
        splits[eval_split] = ([p for p, h in zip(paths, held) if h], labels[held])
        splits[train_split] = ([p for p, h in zip(paths, held) if not h], labels[~held])
        log.info(
            "%s has no %s/: holding out %.0f%% of train (%d images) as %r.",
            root,
            eval_split,
            100 * validation_fraction,
            int(held.sum()),
            eval_split,
        )
    return ImageFolder(root, classes, splits, report)
