"""`folder:/root`: a user's own images in root/<split>/<class>/*, streamed from disk.

Classes are the sorted sub-folder names of root/train (an empty class folder still gets
its index, so labels match the folder order). Every file is decoded once when the folder
is first scanned, with the same decoder the pipeline uses, so a file that passes can
never fail later inside tf.data. Files that are empty, not images, corrupt, dangling links,
unreadable, named in bytes that are not UTF-8, or larger than dataset.max_image_pixels
(read from the header, never decoded: decompression bombs) are reported by path in a
warning and skipped (or, with dataset.on_bad_file="error", stop the run). The verdicts, with
each image's size and whether it is grayscale (`choose_image_size`, `choose_channels`), are
cached per (path, size, mtime, pixel limit) so later runs and resumes scan in seconds.
"""

import concurrent.futures
import dataclasses
import functools
import hashlib
import io
import json
import os
import re
import stat
import warnings

import numpy as np
import tensorflow as tf

from jaxvision.console import log
from jaxvision.data import image_ops

EVAL_DIRS = ("test", "val", "validation")
_LOG_LINES = 21  # the summary and the first 20 problems
# Why a file is skipped, as ScanReport fields and the words the report uses.
REASONS = {
    "empty": "empty",
    "not_image": "not an image",
    "corrupt": "corrupt",
    "broken_link": "dangling symbolic link",
    "unreadable": "unreadable",
    "bad_name": "file name is not UTF-8",
    "too_large": "more pixels than dataset.max_image_pixels",
}
# Verdicts that depend on the file system's state, not the file's bytes: never cached.
_UNCACHED = ("broken_link", "unreadable", "bad_name")


@dataclasses.dataclass
class ScanReport:
    """What a scan found: bad files by reason (paths), empty classes, and the totals."""

    num_images: int = 0
    empty: list[str] = dataclasses.field(default_factory=list)
    not_image: list[str] = dataclasses.field(default_factory=list)
    corrupt: list[str] = dataclasses.field(default_factory=list)
    broken_link: list[str] = dataclasses.field(default_factory=list)
    unreadable: list[str] = dataclasses.field(default_factory=list)
    bad_name: list[str] = dataclasses.field(default_factory=list)
    too_large: list[str] = dataclasses.field(default_factory=list)
    empty_classes: list[str] = dataclasses.field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        """Files left out of the dataset."""
        return sum(len(getattr(self, reason)) for reason in REASONS)

    def lines(self) -> list[str]:
        """Human-readable report, one problem per line."""
        out = [f"{self.num_images} images, {self.num_skipped} files skipped"]
        for reason, words in REASONS.items():
            out += [f"skipped ({words}): {printable(p)}" for p in getattr(self, reason)]
        out += [f"class folder with no images: {c}" for c in self.empty_classes]
        return out


def printable(path: str) -> str:
    """`path` with bytes that are not UTF-8 shown as escapes (os.walk keeps them as surrogates)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


# PIL modes of single-channel images (alpha, where present, is dropped when decoding).
_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")


def _header(data: bytes) -> tuple[float, int, int, int] | None:
    """(pixels, height, width, channels) from the image header without decoding; None if PIL
    cannot tell. Channels are 1 for grayscale and 3 for everything else."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                channels = 1 if image.mode in _GRAY_MODES else 3
    except Image.DecompressionBombError as e:
        # PIL refuses beyond twice its own limit; its message carries the size.
        found = re.search(r"\((\d+) pixels\)", str(e))
        return (float(found.group(1)) if found else float("inf")), 0, 0, 3
    except Exception:  # not an image PIL knows: TF's decoder below has the last word
        return None
    return width * height, height, width, channels


def _file_problem(path: str) -> str | None:
    """ "bad_name", "broken_link" or "unreadable" for a file that cannot be read as data."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "bad_name"  # tf.data takes UTF-8 strings only
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "broken_link" if os.path.islink(path) else "unreadable"
    except OSError:
        return "unreadable"
    # FIFOs, sockets and devices: reading one could block the scan forever.
    return None if stat.S_ISREG(info.st_mode) else "unreadable"


def _verdict(path: str, max_pixels: int = 0) -> str:
    """ "ok:HxWxC" (the image's size and 1 or 3 channels) or a key of REASONS for one file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return "unreadable"
    if not data:
        return "empty"
    header = _header(data)
    if max_pixels and header is not None and header[0] > max_pixels:
        return "too_large"
    try:
        image = image_ops.decode_bytes(tf.constant(data), 3)
    except tf.errors.InvalidArgumentError as e:
        # TF says "Unknown image file format" for anything that is not an image at all.
        return "not_image" if "Unknown image file format" in str(e) else "corrupt"
    height, width = image.shape[0], image.shape[1]
    if not (height > 0 and width > 0):
        return "corrupt"
    return f"ok:{height}x{width}x{header[3] if header else 3}"


def _shape(verdict: str) -> tuple[int, int, int]:
    """(height, width, channels) of an "ok:HxWxC" verdict."""
    h, w, c = verdict.partition(":")[2].split("x")
    return int(h), int(w), int(c)


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
    def unreadable(error: OSError) -> None:
        log.warning("Cannot list %s (%s); its images are left out.", error.filename, error)

    for dirpath, dirnames, filenames in os.walk(directory, onerror=unreadable):
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
    shapes: np.ndarray  # [images, 3]: height, width and channels (1 or 3) of every good file

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
    max_image_pixels: int = 0,
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
    keys, verdicts = {}, {}
    for p in files:
        problem = _file_problem(p)
        if problem:
            verdicts[p] = problem
            continue
        st = os.stat(p)
        keys[p] = f"{os.path.relpath(p, root)}|{st.st_size}|{st.st_mtime_ns}|{max_image_pixels}"
    # A bare "ok" comes from a cache written before sizes were recorded: verify again.
    todo = [p for p in keys if cache.get(keys[p], "ok") == "ok"]
    if todo:
        log.info("Verifying %d new image files in %s ...", len(todo), root)
        check = functools.partial(_verdict, max_pixels=max_image_pixels)
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            for p, v in zip(todo, pool.map(check, todo)):
                cache[keys[p]] = v
        # Unreadable files may become readable: only verdicts on their bytes are kept.
        _save_cache(cache_file, {k: cache[k] for k in keys.values() if cache[k] not in _UNCACHED})
    verdicts.update({p: cache[k] for p, k in keys.items()})
    report = ScanReport()
    splits = {}
    shapes = {p: _shape(v) for p, v in verdicts.items() if v.startswith("ok:")}
    for split, entries in listing.items():
        good = [(p, label) for p, label in entries if p in shapes]
        for p, _ in entries:
            if p not in shapes:
                getattr(report, verdicts[p]).append(p)
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
    log.info("%s: %s", root, lines[0])
    for line in lines[1:_LOG_LINES]:
        log.warning("%s: %s", root, line)
    if len(lines) > _LOG_LINES:
        log.warning("%s: ... and %d more (see ScanReport)", root, len(lines) - _LOG_LINES)
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
    sizes = np.asarray(list(shapes.values()), np.int64).reshape(-1, 3)
    return ImageFolder(root, classes, splits, report, sizes)


def choose_image_size(shapes: np.ndarray, *, cap: int, multiple: int) -> tuple[int, str]:
    """A training size that fits the images, and why: their median shorter side, rounded up
    to `multiple` (patch sizes and pooling divide it) and at most `cap`."""
    if not len(shapes):
        return cap, "the folder has no images to measure"
    median = int(np.median(np.minimum(shapes[:, 0], shapes[:, 1])))
    size = min(cap, -(-median // multiple) * multiple)
    why = f"the median shorter side of its {len(shapes)} images is {median} px"
    if size != median:
        why += f", {'capped at' if size == cap else 'rounded up to a multiple of'} "
        why += f"{cap} px" if size == cap else f"{multiple}"
    return size, why


def choose_channels(shapes: np.ndarray) -> tuple[int, str]:
    """1 when every image is grayscale, else 3, and why."""
    color = int((shapes[:, 2] != 1).sum()) if len(shapes) else 0
    if len(shapes) and not color:
        return 1, f"all {len(shapes)} images are grayscale"
    return 3, f"{color} of {len(shapes)} images are in colour"
