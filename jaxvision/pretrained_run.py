"""A pretrained source readied for `evaluate`: its model and weights, reading another dataset.

`load(spec, dataset)` turns a catalog name, `hf-hub:` name, URL, weights file or another
workdir into the `workdir.LoadedRun` that `evaluate` reports on, reading `dataset` the way
the weights expect (their resolution, channels and normalisation). `label_mismatch` says
when the weights predict other classes than the dataset's, so that no accuracy is reported
that means nothing. A catalog name is checked against the dataset before any download.
"""

import dataclasses
from typing import Any

from jaxvision import config as config_lib
from jaxvision import data, feature_eval
from jaxvision import workdir as workdir_lib
from jaxvision.exit_status import BadInputError
from jaxvision.models import pretrained_catalog, pretrained_source

# Datasets that share a label set, in the same order (ImageNet-1k and its re-labelled tests).
_SAME_LABELS = {"imagenet2012": ("imagenet2012", "imagenet_v2", "imagenet2012_real")}
# Weights files say nothing about their inputs; the vision_transformer convention.
DEFAULT_NORM = "value_range(-1,1)"
DEFAULT_SIZE = 224


@dataclasses.dataclass(frozen=True)
class Labels:
    """The classes a checkpoint predicts, as far as its source says."""

    dataset: str  # what it was trained on; "" when the source does not say (a weights file)
    num_classes: int
    names: tuple[str, ...] = ()


@dataclasses.dataclass
class PretrainedRun:
    """What `evaluate` needs: the run to report on, its provenance, and its label check."""

    run: workdir_lib.LoadedRun
    record: dict[str, Any]  # source, sha256 (and step for a workdir)
    labels: Labels
    norm: str  # the normalisation op the weights expect (feature evaluators read with it)
    mismatch: str  # why the labels are not the dataset's; "" when they are


def label_mismatch(spec: str, labels: Labels, info: data.DataInfo) -> str:
    """Why `labels` are not `info`'s classes ("" when they are)."""
    names = tuple(info.class_names)
    if labels.names and names:
        same = labels.names == names
    elif labels.dataset:
        family = _SAME_LABELS.get(labels.dataset, (labels.dataset,))
        same = info.spec.name in family and labels.num_classes == info.num_classes
    else:
        same = labels.num_classes == info.num_classes
    if same:
        return ""

    def shown(n: int, names: tuple[str, ...]) -> str:
        listed = f" ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})" if names else ""
        return f"{n} classes{listed}"

    trained = labels.dataset or "the data it was trained on"
    return (
        f"--pretrained={spec} predicts the {shown(labels.num_classes, labels.names)} of "
        f"{trained}, but {info.spec.name} has {shown(info.num_classes, names)}. The label sets "
        f"differ, so its accuracy on {info.spec.name} would mean nothing. Measure its frozen "
        f"features there instead (--evals=linear_probe,fewshot), or fine-tune it on "
        f"{info.spec.name} (--config.pretrained={spec}; recipes in configs/finetune.py)."
    )


def load(
    spec: str,
    dataset: str,
    *,
    model_name: str | None = None,
    norm: str = "",
    out_dir: str | None = None,
    mesh: Any = None,
    evals: tuple[str, ...] = (),
) -> PretrainedRun:
    """The weights `spec` names as a run on `dataset`. Raises BadInputError for bad input,
    and for weights whose labels are not the dataset's unless `evals` are asked (a catalog
    entry is checked before it is downloaded)."""
    pretrained_source.check_spec(spec, model_name)
    if pretrained_source.is_workdir(spec):
        got = _from_workdir(spec, dataset, norm, out_dir, mesh)
    else:
        got = _from_weights(spec, dataset, model_name, norm, out_dir, evals)
    if got.mismatch and not evals:
        raise BadInputError(got.mismatch)
    return got


def _dataset(dataset: str, size: int, norm: str) -> tuple[Any, data.DataInfo]:
    """A config reading `dataset` in RGB at `size` px with `norm`, and its info."""
    config = feature_eval.dataset_config(config_lib.base(), dataset, (size, size, 3), norm)
    return config, data.prepare(config)


def _from_weights(
    spec: str,
    dataset: str,
    model_name: str | None,
    norm: str,
    out_dir: str | None,
    evals: tuple[str, ...],
) -> PretrainedRun:
    """A catalog entry, hub file, URL or weights file, read at its resolution."""
    entry = pretrained_catalog.find(spec, model_name)
    if entry is None and not model_name:
        raise BadInputError(
            f"--pretrained={spec}: a weights file, URL or hub file does not say which model "
            "it holds; pass --model=NAME (python -m jaxvision.models lists the names)."
        )
    name = entry.model if entry is not None else model_name
    norm = norm or (entry.preprocessing if entry is not None else DEFAULT_NORM)
    if entry is not None:
        config, info = _dataset(dataset, entry.image_size, norm)
        labels = Labels(entry.label_set, entry.num_classes)
        mismatch = label_mismatch(spec, labels, info)
        if mismatch and not evals:
            raise BadInputError(mismatch)  # before downloading anything
    # create() resolves the source (downloading it once) and keeps the checkpoint's head.
    model, variables = pretrained_source.create(name, pretrained=spec)
    if entry is None:
        own = getattr(model, "image_size", None)
        config, info = _dataset(dataset, own if isinstance(own, int) else DEFAULT_SIZE, norm)
        labels = Labels("", model.num_classes)
        mismatch = label_mismatch(spec, labels, info)
    with config.unlocked():
        config.model = config_lib.model(name)
    record = pretrained_source.resolve(spec, name).record()  # a cache hit now
    run = workdir_lib.LoadedRun(out_dir, config, info, model, variables, None, False)
    return PretrainedRun(run, record, labels, norm, mismatch)


def _from_workdir(
    spec: str, dataset: str, norm: str, out_dir: str | None, mesh: Any
) -> PretrainedRun:
    """Another workdir's best (else latest) checkpoint; its own pipeline on its own dataset."""
    resolved = pretrained_source.resolve(spec)
    source = workdir_lib.load(spec, checkpoint_step=str(resolved.step), mesh=mesh)
    labels = Labels(source.info.spec.name, source.info.num_classes, tuple(source.info.class_names))
    norm = norm or feature_eval.normalization_of(source.info.spec.eval_pp)
    if dataset == source.info.spec.name:
        config, info = source.config, source.info
    else:
        shape = source.info.image_shape
        config = feature_eval.dataset_config(source.config, dataset, shape, norm)
        info = data.prepare(config)
    run = dataclasses.replace(source, workdir=out_dir, config=config, info=info)
    return PretrainedRun(run, resolved.record(), labels, norm, label_mismatch(spec, labels, info))
