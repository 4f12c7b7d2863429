"""The quick-start notebook runs top to bottom (with the smoke config)."""

import os

import nbformat
from nbclient import NotebookClient

from tests.trained_runs import REPO


def test_quickstart_notebook_executes(tmp_path):
    nb = nbformat.read(os.path.join(REPO, "colab", "quickstart.ipynb"), as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    params[0].source = f'CONFIG = "configs/quickstart.py:smoke"\nWORKDIR = "{tmp_path / "run"}"\n'
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": os.path.join(REPO, "colab")}},
    )
    client.execute()
    outputs = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
    )
    assert "final test accuracy:" in outputs
    # Both figures were drawn.
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2
    assert os.path.exists(tmp_path / "run" / "metrics.jsonl")
