"""Feature evaluators: a linear probe and k-shot accuracy on frozen pre-logits."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from jaxvision import feature_eval, parallel
from jaxvision import workdir as workdir_lib
from tests.trained_runs import mnist_cnn_workdir


@pytest.fixture(scope="module")
def digits_features():
    """Features on digits of a CNN trained on mnist5k, and of the same CNN untrained."""
    run = workdir_lib.load(mnist_cnn_workdir())
    mesh = parallel.make_mesh()
    random = run.model.init(jax.random.PRNGKey(1), np.zeros((1, *run.info.image_shape)))

    def features(variables):
        shape = run.info.image_shape
        return feature_eval.extract(
            run.model, variables, run.config, "digits", shape, "value_range(0,1)", mesh
        )

    return features(run.variables), features(random)


@pytest.mark.slow  # trains a CNN on mnist5k for 200 steps first
def test_trained_features_beat_random_features_on_another_dataset(digits_features):
    trained, random = (feature_eval.evaluate(f) for f in digits_features)
    assert trained["features/digits/linear_probe"] > random["features/digits/linear_probe"]
    for k in (5, 10):
        margin = trained[f"features/digits/{k}shot"] - random[f"features/digits/{k}shot"]
        assert margin > 0.05, (k, trained, random)
    assert trained["features/digits/10shot"] > 0.85


@pytest.mark.slow  # trains a CNN on mnist5k for 200 steps first
def test_fewshot_agrees_with_scikit_learn_ridge_on_the_same_features(digits_features):
    from sklearn.linear_model import RidgeClassifier

    f = digits_features[0]
    ours = feature_eval.fewshot(f, shots=(5,), seeds=2, l2=1.0)
    accs = []
    for seed in range(2):
        idx = feature_eval.shot_indices(f.train_y, 5, seed)
        assert len(idx) == 50 and np.all(np.bincount(f.train_y[idx]) == 5)
        clf = RidgeClassifier(alpha=1.0).fit(f.train_x[idx], f.train_y[idx])
        accs.append(clf.score(f.test_x, f.test_y))
    assert ours["5shot"] == pytest.approx(np.mean(accs), abs=1e-9)


@pytest.mark.slow  # trains a CNN on mnist5k for 200 steps first
def test_linear_probe_picks_its_regulariser_on_held_out_train(digits_features):
    result = feature_eval.linear_probe(digits_features[0])
    assert result["linear_probe_C"] in feature_eval._PROBE_C
    assert 0.9 < result["linear_probe"] <= 1.0


def test_unknown_evaluator_is_named():
    with pytest.raises(ValueError, match="knn"):
        feature_eval.parse_evals(("knn:digits",), "mnist5k")
    assert feature_eval.parse_evals(("fewshot:digits", "linear_probe"), "mnist5k") == {
        "digits": ["fewshot"],
        "mnist5k": ["linear_probe"],
    }


@pytest.mark.slow  # trains a CNN on mnist5k for 200 steps first
def test_the_evaluate_cli_reports_what_the_evaluators_compute(digits_features, tmp_path):
    from jaxvision import evaluate

    wd = str(tmp_path / "run")  # a copy: the shared run is only read
    shutil.copytree(mnist_cnn_workdir(), wd, ignore=shutil.ignore_patterns("eval"))
    assert evaluate.main(["--workdir", wd, "--evals=fewshot:digits"]) == 0  # latest checkpoint
    with open(os.path.join(wd, "eval", "test", "report.json")) as f:
        report = json.load(f)
    assert report["feature_evals"] == feature_eval.evaluate(digits_features[0], ("fewshot",))
