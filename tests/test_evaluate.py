"""evaluate: every report metric against scikit-learn, the training log, checkpoints, errors.

The shared trained run is only read here: every test that evaluates writes into its own
copy, so no test checks a report another test rewrote, in any order.
"""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn import metrics as skm

from jaxvision import evaluate, metrics, split_inference, workdir
from tests.trained_runs import cnn_workdir, run_cli, scratch_dir


def _copy_of_cnn_run(name: str) -> str:
    """The shared CNN run copied (without the reports training wrote) for one test to write."""
    copy = os.path.join(scratch_dir(name), "run")
    shutil.copytree(cnn_workdir(), copy, ignore=shutil.ignore_patterns("eval"))
    return copy


def _read_report(out_dir: str) -> tuple[dict, np.ndarray, np.ndarray]:
    with open(os.path.join(out_dir, "report.json")) as f:
        report = json.load(f)
    preds = np.load(os.path.join(out_dir, "predictions.npz"))
    return report, preds["labels"], preds["logits"]


def _read_json(out_dir: str) -> dict:
    with open(os.path.join(out_dir, "report.json")) as f:
        return json.load(f)


def _logged(wd: str, step: int, key: str) -> float:
    values = [r[key] for r in workdir.metrics_records(wd) if r["step"] == step and key in r]
    assert values, f"training logged no {key} at step {step}"
    return values[-1]


def _ece_reference(labels: np.ndarray, probs: np.ndarray, bins: int) -> float:
    conf, correct = probs.max(1), probs.argmax(1) == labels
    total = 0.0
    for lo, hi in zip(np.linspace(0, 1, bins + 1)[:-1], np.linspace(0, 1, bins + 1)[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            total += in_bin.sum() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return total / len(labels)


def test_every_metric_matches_sklearn_and_training_log():
    wd = _copy_of_cnn_run("metrics")
    assert evaluate.main(["--workdir", wd]) == 0
    out = os.path.join(wd, "eval", "test")
    report, labels, logits = _read_report(out)

    # The predictions cover the test split once, in order, with the dataset's labels.
    run_config = workdir.load_config(wd)
    from jaxvision import data

    info = data.prepare(run_config)
    ds = info.builder.as_dataset(split="test", shuffle_files=False)
    assert np.array_equal(labels, np.array([int(ex["label"]) for ex in tfds.as_numpy(ds)]))

    probs = metrics.softmax(logits)
    pred = probs.argmax(1)
    assert report["step"] == 300 and report["num_examples"] == len(labels) == 1000
    assert report["accuracy"] == skm.accuracy_score(labels, pred)
    # Same checkpoint, same split: exactly what training logged at that step.
    assert report["accuracy"] == _logged(wd, 300, "eval/accuracy")
    assert report["top5_accuracy"] == pytest.approx(_logged(wd, 300, "eval/accuracy_top5"))
    assert report["top5_accuracy"] == skm.top_k_accuracy_score(labels, probs, k=5)
    assert report["top5_accuracy"] < 1.0 or report["accuracy"] > 0.99
    assert report["loss"] == pytest.approx(skm.log_loss(labels, probs), rel=1e-6)
    assert report["loss"] == pytest.approx(_logged(wd, 300, "eval/loss"), rel=1e-5)
    p, r, f, s = skm.precision_recall_fscore_support(labels, pred, zero_division=0)
    for c, row in enumerate(report["per_class"]):
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (p[c], r[c], f[c], s[c])
        )
        assert row["roc_auc"] == pytest.approx(skm.roc_auc_score(labels == c, probs[:, c]))
    for avg in ("macro", "weighted"):
        expected = skm.precision_recall_fscore_support(labels, pred, average=avg)[:3]
        got = report["precision_recall_f1"][avg]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx(expected)
        assert report["roc_auc"][avg] == pytest.approx(
            skm.roc_auc_score(labels, probs, multi_class="ovr", average=avg)
        )
    assert report["confusion_matrix"] == skm.confusion_matrix(labels, pred).tolist()
    assert report["ece"] == pytest.approx(_ece_reference(labels, probs, metrics.ECE_BINS))
    assert report["accuracy"] > 0.5, "the fixture run should have learned something"
    for name in ("confusion_matrix", "roc_curves", "reliability", "training_curves"):
        assert os.path.getsize(os.path.join(out, f"{name}.png")) > 1000
    with open(os.path.join(out, "summary.md")) as f:
        summary = f.read()
    assert f"{report['accuracy']:.4f}" in summary


def test_training_writes_curves_and_final_report():
    wd = cnn_workdir()
    assert os.path.getsize(os.path.join(wd, "training_curves.png")) > 1000
    report, _, _ = _read_report(os.path.join(wd, "eval", "test"))
    assert report["step"] == 300
    assert report["training_logged"]["eval/accuracy"] == report["accuracy"]


def test_checkpoint_step_and_best():
    wd = _copy_of_cnn_run("step_and_best")
    assert evaluate.main(["--workdir", wd, "--checkpoint", "100"]) == 0
    report, _, _ = _read_report(os.path.join(wd, "eval", "test-step100"))
    assert report["step"] == 100
    assert report["accuracy"] == _logged(wd, 100, "eval/accuracy")

    assert evaluate.main(["--workdir", wd, "--checkpoint", "best"]) == 0
    best, _, _ = _read_report(os.path.join(wd, "eval", "test-best"))
    logged = {s: _logged(wd, s, "eval/accuracy") for s in (100, 200, 300)}
    assert best["accuracy"] == max(logged.values())
    assert logged[best["step"]] == max(logged.values())


def test_compare_prints_one_row_per_workdir(capsys):
    wd = _copy_of_cnn_run("compare")
    other = _copy_of_cnn_run("compare_other")
    assert evaluate.main(["--workdir", wd, f"--compare={other}"]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    rows = [line for line in table if line.startswith("| /")]
    assert len(rows) == 2 and other in rows[1]
    # Same weights, same data: the two rows' metric columns agree.
    assert rows[0].split("|")[3:] == rows[1].split("|")[3:]
    assert os.path.isfile(os.path.join(wd, "eval", "test", "compare.md"))
    assert os.path.isfile(os.path.join(other, "eval", "test", "report.json"))


def test_compare_of_runs_on_different_datasets_exits_2_before_evaluating(capsys):
    wd = _copy_of_cnn_run("compare_datasets")
    other = _copy_of_cnn_run("compare_datasets_other")
    config_path = os.path.join(other, "config.json")
    with open(config_path) as f:
        saved = json.load(f)
    saved["dataset"]["name"] = "digits"
    with open(config_path, "w") as f:
        json.dump(saved, f)
    assert evaluate.main(["--workdir", wd, f"--compare={other}"]) == 2
    err = capsys.readouterr().err
    assert "one dataset" in err and f"{other} (digits)" in err
    assert not os.path.exists(os.path.join(wd, "eval"))
    assert not os.path.exists(os.path.join(other, "eval"))


def test_ema_without_ema_params_is_a_clear_error(capsys):
    wd = cnn_workdir()
    assert evaluate.main(["--workdir", wd, "--ema"]) == 2
    assert "no EMA parameters" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(wd, "eval", "test-ema"))


def test_bad_workdirs_exit_nonzero_and_write_nothing(capsys):
    missing = os.path.join(scratch_dir("missing"), "nope")
    assert evaluate.main(["--workdir", missing]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not os.path.exists(missing)

    no_ckpt = scratch_dir("no_ckpt")
    shutil.copy(os.path.join(cnn_workdir(), "config.json"), no_ckpt)
    assert evaluate.main(["--workdir", no_ckpt]) == 2
    assert "no checkpoints" in capsys.readouterr().err
    assert os.listdir(no_ckpt) == ["config.json"]

    assert evaluate.main(["--workdir", cnn_workdir(), "--checkpoint", "7"]) == 2
    assert "No checkpoint at step 7" in capsys.readouterr().err


def test_cli_exit_code_for_missing_workdir():
    result = run_cli(["-m", "jaxvision.evaluate", "--workdir=/nonexistent/jaxvision_run"])
    assert result.returncode == 2
    assert "does not exist" in result.stderr
    assert result.stdout == ""


def test_metrics_handle_absent_classes_and_few_classes():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 4))
    labels = rng.integers(0, 3, size=200)  # class 3 never occurs
    report = metrics.classification_report(labels, logits, ["a", "b", "c", "d"])
    probs = metrics.softmax(logits)
    assert report["per_class"][3]["roc_auc"] is None and report["per_class"][3]["support"] == 0
    aucs = [skm.roc_auc_score(labels == c, probs[:, c]) for c in range(3)]
    assert report["roc_auc"]["macro"] == pytest.approx(np.mean(aucs))
    assert report["top5_accuracy"] == 1.0  # 4 classes: every label is in the top 4
    assert report["loss"] == pytest.approx(skm.log_loss(labels, probs, labels=range(4)))
    assert sum(report["calibration"]["count"]) == 200


def _with_dataset(name: str, dataset: str) -> str:
    """A copy of the shared run whose config.json names `dataset` (moved or never prepared)."""
    wd = _copy_of_cnn_run(name)
    path = os.path.join(wd, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["dataset"].update(name=dataset, data_dir=os.path.join(wd, "no_tfds_data"))
    with open(path, "w") as f:
        json.dump(config, f)
    return wd


@pytest.mark.parametrize(
    "dataset, says",
    [("folder:/nonexistent/jaxvision_images", "does not exist"), ("cifar10", "not prepared")],
)
def test_missing_dataset_is_bad_input_with_a_message_not_a_traceback(dataset, says, capsys):
    # On main: the folder's FileNotFoundError was a traceback with exit status 1, and an
    # unprepared tfds dataset a RuntimeError reported as bad input only by accident.
    wd = _with_dataset(f"missing_{dataset[:6]}", dataset)
    assert evaluate.main(["--workdir", wd]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert not os.path.exists(os.path.join(wd, "eval"))


def test_out_of_memory_and_xla_errors_are_runtime_failures_not_bad_input(monkeypatch, capsys):
    # On main: "error: RESOURCE_EXHAUSTED ..." with exit status 2, as if the input were bad.
    import jax

    wd = _copy_of_cnn_run("oom")

    def fail(message):
        def forward_split(*args, **kwargs):
            raise jax.errors.JaxRuntimeError(message)

        return forward_split

    monkeypatch.setattr(split_inference, "forward_split", fail("RESOURCE_EXHAUSTED: Out of memory"))
    assert evaluate.main(["--workdir", wd]) == 1
    err = capsys.readouterr().err
    assert "out of memory" in err and "not bad input" in err
    monkeypatch.setattr(split_inference, "forward_split", fail("INTERNAL: something in XLA"))
    assert evaluate.main(["--workdir", wd]) == 1
    assert "runtime failure" in capsys.readouterr().err


def test_a_config_json_of_an_earlier_version_loads_as_it_was_trained(tmp_path):
    with open(os.path.join(cnn_workdir(), "config.json")) as f:
        saved = json.load(f)
    saved["model"]["winograd"] = True  # a key that moved into the backend layer
    saved["dataset"] = {**saved["dataset"], "name": "folder:/data/x", "image_size": 0}
    saved["dataset"].pop("channels", None)
    with open(tmp_path / "config.json", "w") as f:
        json.dump(saved, f)
    config = workdir.load_config(str(tmp_path))
    assert "winograd" not in config.model
    assert (config.dataset.image_size, config.dataset.channels) == (224, 3)


def _best_step(wd: str) -> int:
    logged = {s: _logged(wd, s, "eval/accuracy") for s in (100, 200, 300)}
    return max(logged, key=lambda s: (logged[s], s))


def test_pretrained_workdir_on_its_own_dataset_reports_what_its_evaluation_reports(tmp_path):
    source = _copy_of_cnn_run("pretrained_source")
    out = str(tmp_path / "out")
    args = [f"--pretrained={source}", "--dataset=shapes", f"--workdir={out}"]
    assert evaluate.main(args) == 0
    report, labels, logits = _read_report(os.path.join(out, "eval", "test"))
    step = _best_step(source)  # a workdir source gives its best checkpoint
    assert report["pretrained"]["step"] == report["step"] == step
    assert report["pretrained"]["source"] == os.path.abspath(source)
    assert report["accuracy"] == _logged(source, step, "eval/accuracy")
    assert report["num_examples"] == len(labels) == len(logits) == 1000
    assert "label_mismatch" not in report and report["training_logged"] == {}
    assert os.path.getsize(os.path.join(out, "eval", "test", "confusion_matrix.png")) > 1000
    with open(os.path.join(out, "eval", "test", "summary.md")) as f:
        assert f"Pretrained weights {source}" in f.read()
    assert not os.path.exists(os.path.join(source, "eval"))  # the source is only read


def test_a_catalog_checkpoint_of_another_label_set_is_bad_input_before_any_download(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("JAXVISION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("JAXVISION_OFFLINE", "1")  # a download attempt would fail otherwise
    out = str(tmp_path / "out")
    args = ["--pretrained=vit_ti16.augreg_in21k_ft_in1k", "--dataset=digits", f"--workdir={out}"]
    assert evaluate.main(args) == 2
    err = capsys.readouterr().err
    for says in ("1000 classes of imagenet2012", "digits has 10 classes", "--evals", "fine-tune"):
        assert says in err, (says, err)
    assert not os.path.exists(out) and not os.path.exists(tmp_path / "cache")


def test_weights_of_another_label_set_give_features_not_accuracy(tmp_path, capsys):
    source = _copy_of_cnn_run("pretrained_mismatch")  # 6 shapes, evaluated on 10 digits
    out = str(tmp_path / "out")
    args = [f"--pretrained={source}", "--dataset=digits", f"--workdir={out}"]
    assert evaluate.main(args) == 2
    assert "6 classes" in capsys.readouterr().err and not os.path.exists(out)

    assert evaluate.main([*args, "--evals=fewshot"]) == 0
    report = _read_json(os.path.join(out, "eval", "test"))
    assert "accuracy" not in report and "digits has 10 classes" in report["label_mismatch"]
    features = report["feature_evals"]
    assert {f"features/digits/{k}shot" for k in (1, 5, 10, 25)} <= set(features)
    assert features["features/digits/25shot"] > 0.3  # chance is 0.1
    assert not os.path.exists(os.path.join(out, "eval", "test", "predictions.npz"))
    assert "No accuracy" in capsys.readouterr().out


def test_feature_evaluators_of_a_workdir_join_its_report(capsys):
    wd = _copy_of_cnn_run("evals")
    assert evaluate.main(["--workdir", wd, "--evals=fewshot:digits"]) == 0
    report, _, _ = _read_report(os.path.join(wd, "eval", "test"))
    assert report["accuracy"] == _logged(wd, 300, "eval/accuracy")  # the usual report, plus
    features = report["feature_evals"]
    assert sorted(features) == sorted(
        f"features/digits/{k}shot{s}" for k in (1, 5, 10, 25) for s in ("", "_std")
    )
    assert "| features/digits/25shot |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, says",
    [
        (["--pretrained=vit_ti16.augreg_in21k"], "needs --dataset"),
        (["--workdir=/nonexistent/run", "--dataset=digits"], "--dataset goes with --pretrained"),
        (["--pretrained=vit_ti16.augreg_in21k", "--dataset=digits", "--ema"], "--ema choose"),
        (["--pretrained=vit_ti16.augreg_in21k", "--dataset=digits", "--evals=knn"], "knn"),
        (["--pretrained=/nonexistent/w.npz", "--dataset=digits"], "is not a file"),
        (["--pretrained=https://example.invalid/w.npz", "--dataset=digits"], "--model=NAME"),
    ],
)
def test_pretrained_flag_misuse_is_bad_input(args, says, capsys):
    assert evaluate.main(args) == 2
    assert says in capsys.readouterr().err


def test_a_training_workdir_is_not_an_output_directory_for_pretrained_weights(capsys):
    source = cnn_workdir()
    args = [f"--pretrained={source}", "--dataset=shapes", f"--workdir={source}"]
    assert evaluate.main(args) == 2
    assert "is a training run's workdir" in capsys.readouterr().err


def test_an_unreadable_probe_dataset_is_bad_input_before_anything_is_written(capsys):
    wd = _copy_of_cnn_run("bad_probe")
    assert evaluate.main(["--workdir", wd, "--evals=fewshot:no_such_dataset"]) == 2
    assert "no_such_dataset" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(wd, "eval"))
