"""The tutorial notebooks run end to end, still say what their text says, and are committed as built.

Each notebook is executed with nbclient in a fresh kernel, from notebooks/ as a reader would open it (so its
first cell finds the repository instead of cloning it), on an in-memory copy: the committed .ipynb files are
never rewritten here; the executed copies are saved under pytest's tmp_path for a look when a test fails.
About 3 + 1.5 minutes on 2 CPU cores, plus the toy models' one-time build.

    BS_UNLEARN_CACHE=/tmp/bscache python -m pytest tests/test_notebooks.py -q
"""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
NAMES = ["01_squeezing_effect.ipynb", "02_walkthrough.ipynb"]
CELL_TIMEOUT = 1200  # seconds for one cell; the longest (notebook 01's four runs) takes about 1-2 minutes


def outputs_text(nb):
    """Everything the code cells printed, as one string."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out["text"])
            elif out.get("output_type") == "error":
                parts.append(f"{out['ename']}: {out['evalue']}")
    return "\n".join(parts)


@pytest.fixture(scope="module")
def builder():
    sys.path.insert(0, NOTEBOOKS)
    import build_notebooks
    return build_notebooks


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_matches_its_source(builder, name):
    """The .ipynb holds the cells of build_notebooks.py, executed, with outputs (plots show on the repo page)."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    expected = builder.NOTEBOOKS[name]
    assert [c.source for c in nb.cells] == [c.source for c in expected], \
        f"{name} differs from notebooks/build_notebooks.py: run `python notebooks/build_notebooks.py`"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), f"{name} is committed without its outputs"
    assert not any(o.get("output_type") == "error" for c in code for o in c.outputs)
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs), f"{name} has no plots"
    assert "CLAIM FAILS" not in outputs_text(nb)
    assert "colab.research.google.com/github/" in nb.cells[0].source


@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes(name, toy_cache, tmp_path, monkeypatch):
    """A fresh kernel runs every cell without an error, and every claim the text makes still holds."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    cache_dir, _, _ = toy_cache
    monkeypatch.setenv("BS_UNLEARN_CACHE", cache_dir)  # the kernel inherits it: no second build of the toy models
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    for cell in nb.cells:  # start from a clean copy, as a reader would
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3", record_timing=False,
                                     resources={"metadata": {"path": NOTEBOOKS}})
    try:
        client.execute()
    finally:
        nbformat.write(nb, str(tmp_path / name))
    text = outputs_text(nb)
    failed = [line for line in text.splitlines() if line.startswith("CLAIM FAILS")]
    assert not failed, "the notebook's text no longer matches its results:\n" + "\n".join(failed)
    assert text.count("claim holds:") >= 5
    assert "Traceback" not in text
