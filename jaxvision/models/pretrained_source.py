"""One spelling for pretrained weights everywhere: resolve a source, then load it into a model.

A source is a catalog name (`vit_b16.augreg_in21k`, or the tag alone next to a model
name), `hf-hub:ORG/REPO[/FILE][@REVISION]` (FILE defaults to model.safetensors), an
HTTP(S) or gs:// URL, a weights file (.npz / .safetensors), or another jaxvision workdir
(its best checkpoint by logged eval accuracy, else its latest), read without modifying it.

    model, variables = models.create("vit_b16", pretrained="augreg_in21k_ft_in1k")
"""

import dataclasses
import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from jaxvision import weights_cache
from jaxvision.exit_status import BadInputError
from jaxvision.models import pretrained, pretrained_catalog, registry

HUB_PREFIX = "hf-hub:"
_URL_PREFIXES = ("http://", "https://", "gs://")


@dataclasses.dataclass(frozen=True)
class ResolvedWeights:
    """Where a pretrained source's weights are, and what a run records about them."""

    spec: str  # what the user wrote
    source: str  # the catalog source, hub file, URL, file or workdir it resolved to
    sha256: str  # of the file; "" for a workdir checkpoint (Orbax verifies its own files)
    path: Path | None = None  # the local weights file
    workdir: str | None = None  # or the workdir and step
    step: int | None = None
    entry: pretrained_catalog.CatalogEntry | None = None

    def overrides(self) -> dict[str, Any]:
        """Model overrides the weights need (catalog entry, or read from the file)."""
        if self.entry is not None:
            size = {"image_size": self.entry.image_size} if _has_field(self.entry.model) else {}
            return {**self.entry.overrides, **size}
        if self.path is not None:
            return pretrained.recommended_overrides(self.path)
        return {}

    def record(self) -> dict[str, Any]:
        """What config.json keeps: the resolved source and its checksum."""
        out = {"source": self.source, "sha256": self.sha256}
        if self.workdir is not None:
            out["step"] = self.step
        return out


def _has_field(model: str, field: str = "image_size") -> bool:
    """Whether the registered model's constructor takes `field` (ViTs fix their image size)."""
    factory = registry._REGISTRY[model]
    cls = getattr(factory, "func", factory)
    return field in getattr(cls, "__dataclass_fields__", {})


def is_workdir(path: str) -> bool:
    """Whether `path` is a jaxvision training workdir (config.json and checkpoints/)."""
    return os.path.isfile(os.path.join(path, "config.json")) and os.path.isdir(
        os.path.join(path, "checkpoints")
    )


def _split_hub(spec: str) -> tuple[str, str, str]:
    """`ORG/REPO[/FILE][@REV]` -> (repo, file, revision)."""
    rest, _, revision = spec[len(HUB_PREFIX) :].partition("@")
    parts = rest.strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise BadInputError(
            f"pretrained={spec!r}: write hf-hub:ORG/REPO[/FILE][@REVISION], e.g. "
            "hf-hub:timm/resnet50.a1_in1k/model.safetensors."
        )
    filename = "/".join(parts[2:]) or "model.safetensors"
    return "/".join(parts[:2]), filename, revision or "main"


def _fetch(source: str, entry: pretrained_catalog.CatalogEntry | None) -> weights_cache.CachedFile:
    sha256 = entry.sha256 if entry else None
    size = entry.size if entry else None
    if source.startswith(HUB_PREFIX):
        repo, filename, revision = _split_hub(source)
        return weights_cache.fetch_hub(repo, filename, revision=revision, sha256=sha256, size=size)
    return weights_cache.fetch_url(source, sha256=sha256, size=size)


def resolve(spec: str, model: str | None = None) -> ResolvedWeights:
    """Finds (downloading into the cache if needed, and verifying) the weights `spec` names."""
    spec = str(spec)
    entry = pretrained_catalog.find(spec, model)
    if entry is not None:
        got = _fetch(entry.source, entry)
        return ResolvedWeights(spec, entry.source, got.sha256, path=got.path, entry=entry)
    if spec.startswith(HUB_PREFIX) or spec.startswith(_URL_PREFIXES):
        got = _fetch(spec, None)
        return ResolvedWeights(spec, got.source, got.sha256, path=got.path)
    if os.path.isdir(spec):
        if not is_workdir(spec):
            raise BadInputError(
                f"pretrained={spec!r} is a directory but not a jaxvision workdir (no "
                "config.json and checkpoints/). Give a workdir a training run wrote."
            )
        step = _workdir_step(spec)
        return ResolvedWeights(spec, os.path.abspath(spec), "", workdir=spec, step=step)
    if os.path.isfile(spec):
        path = Path(spec)
        return ResolvedWeights(
            spec, str(path.resolve()), weights_cache.sha256_of(path), path=path.resolve()
        )
    close = [e.name for e in pretrained_catalog.entries() if spec in e.name][:5]
    raise BadInputError(
        f"pretrained={spec!r} is not a catalog name, hf-hub:ORG/REPO[/FILE], URL, file or "
        "workdir."
        + (f" Catalog names containing it: {', '.join(close)}." if close else "")
        + " List the catalog with: python -m jaxvision.models --pretrained"
    )


def check_spec(spec: str, model: str | None = None) -> None:
    """Raises BadInputError for a source that cannot be valid, without any download."""
    if pretrained_catalog.find(spec, model) is not None or spec.startswith(_URL_PREFIXES):
        return
    if spec.startswith(HUB_PREFIX):
        _split_hub(spec)
        return
    if os.path.isdir(spec):
        if not is_workdir(spec):
            resolve(spec)  # raises, saying why
        return
    if not os.path.isfile(spec):
        raise BadInputError(
            f"pretrained={spec!r} is not a file, workdir, catalog name (python -m "
            "jaxvision.models --pretrained), hf-hub:ORG/REPO[/FILE] or URL."
        )


def download(name: str) -> Path:
    """The local, verified file of catalog entry `name` (downloaded into the cache if needed)."""
    resolved = resolve(name)
    if resolved.path is None:
        raise ValueError(f"{name!r} is not a weights file but a workdir.")
    return resolved.path


def _workdir_step(workdir: str) -> int:
    """The workdir's best checkpoint by logged eval accuracy, else its latest."""
    from jaxvision import checkpoint, checkpoint_choice

    ckpts = checkpoint.open_read_only(os.path.join(workdir, "checkpoints"))
    try:
        try:
            return checkpoint_choice.choose_step(workdir, ckpts, "best")
        except checkpoint_choice.WorkdirError:
            return checkpoint_choice.choose_step(workdir, ckpts, "latest")
    finally:
        ckpts.close()


def _workdir_arrays(resolved: ResolvedWeights) -> dict[str, np.ndarray]:
    """The workdir checkpoint's params and batch stats as flat `params/...` arrays."""
    from jaxvision import checkpoint

    ckpts = checkpoint.open_read_only(os.path.join(resolved.workdir, "checkpoints"))
    try:
        state, _ = ckpts.restore(resolved.step, None)  # None: the arrays as saved
    finally:
        ckpts.close()
    flat = {}
    for collection in ("params", "batch_stats"):
        tree = state.get(collection) or {}
        for key, value in traverse_util.flatten_dict(tree).items():
            flat["/".join((collection, *map(str, key)))] = np.asarray(value)
    return flat


def load(
    resolved: ResolvedWeights,
    model: nn.Module,
    *,
    image_shape: tuple[int, ...] | None = None,
    rng: jax.Array | None = None,
) -> dict[str, Any]:
    """The resolved weights as `model`'s variables for inputs of `image_shape` (H, W, C;
    default the model's own size, 3 channels); head and posemb adapted (`load_pretrained`)."""
    kw = {"rng": rng}
    if image_shape is not None:
        kw.update(image_size=image_shape[0], channels=image_shape[-1])
        if _has_field_value(model, "image_size"):
            kw.pop("image_size")  # a ViT knows its own size
    if resolved.path is not None:
        return pretrained.load_pretrained(resolved.path, model, **kw)
    arrays = _workdir_arrays(resolved)
    where = f"{resolved.workdir} (checkpoint step {resolved.step})"
    return pretrained.variables_from_arrays(arrays, "npz", model, where, **kw)


def _has_field_value(model: nn.Module, field: str) -> bool:
    return isinstance(getattr(model, field, None), int)


def create(
    name: str,
    *,
    num_classes: int | None = None,
    pretrained: str | None = None,
    **overrides: Any,
) -> nn.Module | tuple[nn.Module, dict[str, Any]]:
    """`registry.create`, or with `pretrained` the model and its loaded variables.

    With `pretrained`, `num_classes` defaults to the checkpoint's (a different count gets a
    fresh head) and the catalog's overrides (image size, exact GELU, ...) apply unless
    given here.
    """
    if pretrained is None:
        if num_classes is None:
            raise ValueError(f"create({name!r}) needs num_classes (or pretrained=...).")
        return registry.create(name, num_classes=num_classes, **overrides)
    resolved = resolve(pretrained, name)
    entry = resolved.entry
    if entry is not None and entry.model != name:
        raise BadInputError(
            f"pretrained={pretrained!r} holds a {entry.model}, not a {name}: use "
            f"models.create({entry.model!r}, pretrained={pretrained!r})."
        )
    overrides = {**resolved.overrides(), **overrides}
    if num_classes is None:
        num_classes = entry.num_classes if entry is not None else _file_classes(resolved)
    model = registry.create(name, num_classes=num_classes, **overrides)
    return model, load(resolved, model)


def num_classes_of(resolved: ResolvedWeights) -> int:
    """The class count of the resolved weights' classifier head (catalog entry, file or workdir)."""
    return resolved.entry.num_classes if resolved.entry is not None else _file_classes(resolved)


def _file_classes(resolved: ResolvedWeights) -> int:
    """The head width of a weights file or workdir, so its head is kept."""
    if resolved.workdir is not None:
        arrays = {k: v for k, v in _workdir_arrays(resolved).items() if k.endswith("head/bias")}
    else:
        arrays, _ = pretrained._read(resolved.path)
    for key in ("head/bias", "params/head/bias", "head.bias", "fc.bias", "resnet/head/conv2d/bias"):
        if key in arrays:
            return int(arrays[key].shape[-1])
    raise BadInputError(f"{resolved.source} has no classifier head; pass num_classes to create().")
