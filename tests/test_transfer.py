"""Transfer works end to end offline: mnist5k weights fine-tuned on digits beat digits alone.

The source run is the shared `mnist_cnn_workdir`; the recipes are configs/finetune.py's
offline pair (`mnist5k`, `digits`), whose docstring holds the measured numbers.
"""

import json
import os

import jax
import pytest

from jaxvision import config as config_lib
from jaxvision import data, evaluate, step_factory, train, workdir
from tests.trained_runs import REPO, mnist_cnn_workdir, scratch_dir

RECIPES = os.path.join(REPO, "configs", "finetune.py")


def _recipe(arg: str, **changes):
    config = config_lib.load(f"{RECIPES}:{arg}")
    config.unlock()
    for key, value in changes.items():
        config[key] = value
    config.lock()
    return config


def _param_shapes(config) -> dict[str, tuple[int, ...]]:
    info = data.prepare(config)
    built = step_factory.build(config, num_classes=info.num_classes, image_shape=info.image_shape)
    leaves = jax.tree_util.tree_leaves_with_path(built.abstract_state.params)
    return {jax.tree_util.keystr(path): x.shape for path, x in leaves}


def test_the_offline_recipes_build_one_architecture_so_every_weight_transfers():
    source, target = _recipe("mnist5k"), _recipe("digits")
    assert source.model.to_dict() == target.model.to_dict()
    shapes = _param_shapes(source)
    assert shapes == _param_shapes(target) and len(shapes) >= 6  # convs, dense, head


def _read_report(out: str) -> dict:
    with open(os.path.join(out, "eval", "test", "report.json")) as f:
        return json.load(f)


def _final_accuracy(wd: str) -> float:
    return [r for r in workdir.metrics_records(wd) if "eval/accuracy" in r][-1]["eval/accuracy"]


@pytest.mark.slow  # three short trainings: mnist5k 200 steps (shared), digits 50 steps twice
def test_fine_tuning_from_mnist5k_beats_training_digits_from_scratch_at_50_steps():
    source = mnist_cnn_workdir()
    assert workdir.load_config(source).model.to_dict() == _recipe("digits").model.to_dict()
    runs = {}
    for name, pretrained in (("finetuned", source), ("scratch", "")):
        runs[name] = os.path.join(scratch_dir(f"transfer_{name}"), "run")
        train.run(_recipe("digits", pretrained=pretrained), runs[name])
    finetuned, scratch = (_final_accuracy(runs[n]) for n in ("finetuned", "scratch"))
    # Measured (configs/finetune.py, seeds 0-2): 0.960-0.980 fine-tuned, 0.930-0.953 scratch.
    assert finetuned > scratch + 0.01, (finetuned, scratch)
    assert finetuned > 0.94

    # mnist5k and digits share their labels (0-9), so the source's own accuracy on digits,
    # before any fine-tuning, is a meaningful number: evaluate reports it.
    out = scratch_dir("transfer_eval")
    assert evaluate.main([f"--pretrained={source}", "--dataset=digits", f"--workdir={out}"]) == 0
    report = _read_report(out)
    assert report["dataset"] == "digits" and report["num_classes"] == 10
    assert 0.1 < report["accuracy"] < finetuned
