"""The notebooks in colab/: saved outputs in sync with their code, and each one runs in a fresh
kernel that installs jaxvision by its own first cell (from a wheel of this checkout)."""

import os
import re
import sys

import nbformat
import pytest

from tests.trained_runs import REPO

sys.path.insert(0, os.path.join(REPO, "tools"))
import sync_notebooks

sys.path.pop(0)


def _notebook(name: str) -> nbformat.NotebookNode:
    return nbformat.read(os.path.join(REPO, "colab", f"{name}.ipynb"), as_version=4)


def _text(nb: nbformat.NotebookNode) -> str:
    return "".join(
        o.get("text", "") + o.get("data", {}).get("text/plain", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )


def _figures(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def test_every_notebook_in_colab_is_synced_and_listed():
    on_disk = sorted(
        f[:-6] for f in os.listdir(os.path.join(REPO, "colab")) if f.endswith(".ipynb")
    )
    assert on_disk == sorted(sync_notebooks.NOTEBOOKS)
    with open(os.path.join(REPO, "colab", "README.md")) as f:
        listing = f.read()
    for name in on_disk:
        assert f"{name}.ipynb" in listing


def test_saved_outputs_were_produced_by_the_notebooks_current_code():
    # A notebook whose code changed since its outputs were saved fails here; refresh with
    # `python tools/sync_notebooks.py NAME`.
    assert sync_notebooks.stale(list(sync_notebooks.NOTEBOOKS)) == []


@pytest.mark.parametrize("name", sync_notebooks.NOTEBOOKS)
def test_saved_notebook_shows_its_figures_badge_and_accelerator(name):
    nb = _notebook(name)
    assert _figures(nb) >= 1
    assert sync_notebooks.colab_badge(sync_notebooks.source_url(), name) in nb.cells[0].source
    assert "Runtime > Change runtime type > TPU" in nb.cells[0].source
    assert "mesh {'data': 1}" in _text(nb) and "compute dtype float32" in _text(nb)


def test_a_changed_code_cell_makes_the_notebook_stale(tmp_path, monkeypatch):
    nb = _notebook("quickstart")
    nb.cells[-1].source += "\nprint('changed')"
    nbformat.write(nb, tmp_path / "quickstart.ipynb")
    monkeypatch.setattr(sync_notebooks, "COLAB", str(tmp_path))
    assert sync_notebooks.stale(["quickstart"]) == [
        "colab/quickstart.ipynb: code changed since its outputs were saved"
    ]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    """A wheel of this checkout: the source the notebooks' install cells are given."""
    return sync_notebooks.build_wheel(str(tmp_path_factory.mktemp("dist")))


def _run(name: str, parameters: str, wheel: str, tmp_path) -> nbformat.NotebookNode:
    """Runs colab/NAME.ipynb with `parameters` in a new kernel without jaxvision."""
    kernel = sync_notebooks.fresh_kernel(str(tmp_path / "kernel"), wheel)
    nb = _notebook(name)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    cell.source = parameters
    cwd = tmp_path / "content"
    cwd.mkdir()
    sync_notebooks.execute(nb, kernel, str(cwd))
    assert "installed from jaxvision-0.1.0-py3-none-any.whl" in _text(nb)
    return nb


@pytest.mark.slow
def test_quickstart_notebook_runs_from_a_fresh_kernel(wheel, tmp_path):
    nb = _run("quickstart", 'NUM_EPOCHS = 2.0\nWORKDIR = "run"\n', wheel, tmp_path)
    assert "final test accuracy:" in _text(nb)
    assert _figures(nb) == 2
    assert (tmp_path / "content" / "run" / "metrics.jsonl").exists()


def test_the_readmes_link_only_the_projects_own_address():
    assert sync_notebooks.readme_problems() == []


@pytest.mark.slow
def test_finetune_notebook_beats_from_scratch_at_the_same_step_count(wheel, tmp_path):
    # PRETRAINED="" makes the notebook pretrain its ViT on mnist5k first: offline, in this test.
    parameters = (
        'PRETRAINED = ""\nTARGET = ""\nMODEL = "vit_ti4"\nMODEL_OVERRIDES = dict(image_size=16, '
        'pool="gap", depth=2, hidden_size=64, num_heads=2, mlp_dim=128)\nIMAGE_SIZE = 16\n'
        'PRETRAIN_STEPS = 400\nSTEPS = 60\nWORKDIR = "run"\n'
    )
    nb = _run("finetune", parameters, wheel, tmp_path)
    found = re.search(r"fine-tuned test accuracy ([\d.]+), from scratch ([\d.]+)", _text(nb))
    assert found, _text(nb)[-2000:]
    tuned, scratch = map(float, found.groups())
    assert tuned > scratch + 0.05
    assert _figures(nb) == 2  # the confusion matrix and the worst mistakes


@pytest.mark.slow
def test_explain_notebook_draws_both_galleries(wheel, tmp_path):
    nb = _run(
        "explain",
        'CNN_RUN = ""\nVIT_RUN = ""\nSTEPS = 40\nWORKDIR = "run"\n',
        wheel,
        tmp_path,
    )
    assert _figures(nb) == 1


@pytest.mark.slow
def test_distill_notebook_trains_a_teacher_and_its_students(wheel, tmp_path):
    parameters = 'TEACHER = ""\nTEACHER_STEPS = 40\nSTEPS = 20\nWORKDIR = "run"\n'
    parameters += 'METHODS = ("alone", "soft", "deit")\n'
    text = _text(_run("distill", parameters, wheel, tmp_path))
    for method in ("alone", "soft", "deit"):
        assert re.search(rf"{method} +test accuracy [\d.]+", text), text[-2000:]
    assert len(re.findall(r"agreement with the teacher [\d.]+", text)) == 2
    assert re.search(r"teacher: source=\S+ sha256=[0-9a-f]{64}", text), text[-2000:]
    assert "logits shape (2, 10)" in text
