"""How good a model's frozen features are: a linear probe and big_vision-style k-shot accuracy.

Features are the model's pre-logits (the head's input) on a dataset's train and test
splits, standardised with the train split's statistics. Evaluators:
- `linear_probe`: scikit-learn logistic regression, its inverse regulariser C chosen on a
  held-out 20% of train, then refit on all of train and scored on test;
- `fewshot`: for k in (1, 5, 10, 25) examples per class and several seeds, closed-form
  ridge regression to +-1 targets (what big_vision's few-shot evaluator fits), scored on
  test; the mean and spread over seeds.

Metrics are named `features/<dataset>/linear_probe` and `features/<dataset>/<k>shot`.
"""

import dataclasses
from typing import Any

import ml_collections
import numpy as np

SHOTS = (1, 5, 10, 25)
KINDS = ("linear_probe", "fewshot")
_PROBE_C = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


@dataclasses.dataclass(frozen=True)
class Features:
    """Standardised features and labels of a dataset's train and test splits."""

    dataset: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both scaled with train's per-feature mean and std (labels are not used)."""
    mean, std = train.mean(0), train.std(0) + 1e-6
    return (train - mean) / std, (test - mean) / std


def linear_probe(f: Features, seed: int = 0) -> dict[str, float]:
    """Test accuracy of a logistic regression on the features, C chosen on held-out train."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    fit_x, val_x, fit_y, val_y = train_test_split(
        f.train_x, f.train_y, test_size=0.2, random_state=seed, stratify=f.train_y
    )

    def fitted(c: float, x: np.ndarray, y: np.ndarray) -> Any:
        return LogisticRegression(C=c, max_iter=1000).fit(x, y)

    scores = {c: fitted(c, fit_x, fit_y).score(val_x, val_y) for c in _PROBE_C}
    best = max(_PROBE_C, key=lambda c: (scores[c], -c))  # ties: the stronger regulariser
    accuracy = fitted(best, f.train_x, f.train_y).score(f.test_x, f.test_y)
    return {"linear_probe": float(accuracy), "linear_probe_C": float(best)}


def ridge_predict(
    x: np.ndarray, y: np.ndarray, test_x: np.ndarray, num_classes: int, l2: float
) -> np.ndarray:
    """Class predictions of ridge regression (with intercept) to +-1 one-hot targets."""
    targets = 2.0 * np.eye(num_classes)[y] - 1.0
    x_mean, t_mean = x.mean(0), targets.mean(0)
    xc, tc = x - x_mean, targets - t_mean
    # The dual form: k-shot sets have fewer examples than features.
    alpha = np.linalg.solve(xc @ xc.T + l2 * np.eye(len(x)), tc)
    w = xc.T @ alpha
    return np.argmax((test_x - x_mean) @ w + t_mean, axis=1)


def shot_indices(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """`shots` random train examples of every class (fewer where a class has fewer)."""
    rng = np.random.default_rng(seed)
    picks = [
        rng.choice(np.flatnonzero(labels == c), min(shots, int((labels == c).sum())), False)
        for c in np.unique(labels)
    ]
    return np.sort(np.concatenate(picks))


def fewshot(
    f: Features, shots: tuple[int, ...] = SHOTS, seeds: int = 3, l2: float = 1.0
) -> dict[str, float]:
    """Mean and std over `seeds` of k-shot ridge-regression test accuracy for each k."""
    num_classes = int(max(f.train_y.max(), f.test_y.max())) + 1
    out = {}
    for k in shots:
        accs = []
        for seed in range(seeds):
            idx = shot_indices(f.train_y, k, seed)
            pred = ridge_predict(f.train_x[idx], f.train_y[idx], f.test_x, num_classes, l2)
            accs.append(float(np.mean(pred == f.test_y)))
        out[f"{k}shot"], out[f"{k}shot_std"] = float(np.mean(accs)), float(np.std(accs))
    return out


def evaluate(f: Features, kinds: tuple[str, ...] = KINDS) -> dict[str, float]:
    """The named evaluators on `f`, as `features/<dataset>/<metric>`."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"Unknown feature evaluator(s) {unknown}; known: {', '.join(KINDS)}.")
    out: dict[str, float] = {}
    if "linear_probe" in kinds:
        out.update(linear_probe(f))
    if "fewshot" in kinds:
        out.update(fewshot(f))
    return {f"features/{f.dataset}/{k}": v for k, v in out.items()}


def dataset_config(
    config: ml_collections.ConfigDict, dataset: str, image_shape: tuple[int, ...], norm: str
) -> ml_collections.ConfigDict:
    """`config` reading `dataset` at the model's input size and channels, normalised with
    `norm`, without augmentation (features of train and test alike)."""
    size, channels = image_shape[0], image_shape[-1]
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.dataset.name = dataset
        c.dataset.num_classes = 0
        c.dataset.train_split = c.dataset.eval_split = ""
        c.dataset.image_size = size
        pp = f"decode({channels})|resize({size})|{norm}"
        c.dataset.train_pp = c.dataset.eval_pp = pp
    return c


def normalization_of(pp: str) -> str:
    """The normalisation op of a preprocessing string (what the model's inputs went through)."""
    ops = [op.strip() for op in pp.split("|")]
    found = [op for op in ops if op.startswith(("value_range", "normalize"))]
    return found[-1] if found else "value_range(0,1)"


class _PreLogits:
    """Looks like a model to `split_inference.forward_split` but returns its pre-logits."""

    def __init__(self, model: Any):
        self.model = model

    def apply(self, variables: dict, images: Any, train: bool = False) -> Any:
        _, features = self.model.apply(variables, images, train=False, return_features=True)
        return features["pre_logits"]


def extract(
    model: Any,
    variables: dict,
    config: ml_collections.ConfigDict,
    dataset: str,
    image_shape: tuple[int, ...],
    norm: str,
    mesh: Any,
) -> Features:
    """Pre-logits of `dataset`'s train and test splits (every process must call it)."""
    from jaxvision import data
    from jaxvision.split_inference import forward_split

    c = dataset_config(config, dataset, image_shape, norm)
    info = data.prepare(c)
    wrapped = _PreLogits(model)
    splits = {}
    for split in (info.spec.train_split, info.spec.eval_split):
        labels, x = forward_split(wrapped, variables, data.eval_batches(c, info, mesh, split), mesh)
        splits[split] = (x.astype(np.float64), labels)
    (train_x, train_y), (test_x, test_y) = (
        splits[info.spec.train_split],
        splits[info.spec.eval_split],
    )
    train_x, test_x = standardise(train_x, test_x)
    return Features(dataset, train_x, train_y, test_x, test_y)


def parse_evals(specs: tuple[str, ...] | list[str], default_dataset: str) -> dict[str, list[str]]:
    """`("fewshot:digits", "linear_probe")` -> {"digits": ["fewshot"], default: [...]}."""
    out: dict[str, list[str]] = {}
    for spec in specs:
        kind, _, dataset = spec.partition(":")
        if kind not in KINDS:
            raise ValueError(
                f"evals entry {spec!r}: the evaluator must be one of {', '.join(KINDS)}, "
                "optionally with :DATASET (e.g. fewshot:digits)."
            )
        out.setdefault(dataset or default_dataset, []).append(kind)
    return out


def check_datasets(
    config: ml_collections.ConfigDict,
    specs: tuple[str, ...] | list[str],
    image_shape: tuple[int, ...],
    norm: str,
) -> None:
    """Raises (bad input) unless every dataset `specs` names is readable as `extract` reads it."""
    from jaxvision import data

    for dataset in parse_evals(specs, config.dataset.name):
        data.prepare(dataset_config(config, dataset, image_shape, norm))


def evaluate_model(
    model: Any,
    variables: dict,
    config: ml_collections.ConfigDict,
    specs: tuple[str, ...] | list[str],
    image_shape: tuple[int, ...],
    norm: str,
    mesh: Any,
) -> dict[str, float]:
    """Every evaluator `specs` names (see `parse_evals`) on the model's frozen features."""
    out = {}
    for dataset, kinds in parse_evals(specs, config.dataset.name).items():
        f = extract(model, variables, config, dataset, image_shape, norm, mesh)
        out.update(evaluate(f, tuple(kinds)))
    return out
