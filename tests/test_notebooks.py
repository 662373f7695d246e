"""The tutorial notebooks are committed as built from their sources, with outputs that support their text,
with Colab links that work, and (slow) a fresh kernel still runs them and every claim still holds.

The source of each notebook is notebooks/<name>.py (jupytext percent format); notebooks/build.py turns it into
the committed notebooks/<name>.ipynb. The fast tests read the committed files only. The slow ones execute
each *source* with nbclient in a fresh kernel, from notebooks/ as a reader would open it (so its first cell
finds the repository instead of cloning it), in memory: the committed files are never rewritten here; the
executed copies are saved under pytest's tmp_path for a look when a test fails. About 1.5 + 1 minutes on 2
CPU cores, plus the toy models' one-time builds (seeds 0, 1 and 2).

    python -m pytest tests/test_notebooks.py -q -m "not slow"    # a second or two
    BS_UNLEARN_CACHE=/tmp/bscache python -m pytest tests/test_notebooks.py -q
"""
import importlib.util
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
# notebooks/build.py, loaded from its path: a plain `import build` could find PyPA's `build` package instead
_spec = importlib.util.spec_from_file_location("notebooks_build", os.path.join(NOTEBOOKS, "build.py"))
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

nbformat = pytest.importorskip("nbformat")
NAMES = build.NAMES
MAX_KB = 300  # a committed notebook with its plots; GitHub and Colab open it without a wait


def committed(name):
    return nbformat.read(build.notebook_path(name), as_version=4)


def colab_badge(nb):
    """The owner/name of the first cell's Colab badge link."""
    m = re.search(r"\(https://colab\.research\.google\.com/github/([^)\s]+?)/blob/main/notebooks/([^)\s]+)\)",
                  nb.cells[0].source)
    assert m, "the first cell has no Colab badge"
    return m.group(1), m.group(2)


def clone_url(nb):
    """The owner/name of the setup cell's REPO_URL (the repository it clones outside a checkout)."""
    for cell in nb.cells:
        m = re.search(r'REPO_URL = "https://github\.com/([^"]+)"', cell.source)
        if cell.cell_type == "code" and m:
            return m.group(1)
    raise AssertionError("no setup cell with REPO_URL")


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_matches_its_source(name):
    """The .ipynb holds exactly the cells of its jupytext source: nobody edited one without the other."""
    jupytext = pytest.importorskip("jupytext")
    source = jupytext.read(build.source_path(name))
    nb = committed(name)
    assert [(c.cell_type, c.source) for c in nb.cells] == [(c.cell_type, c.source) for c in source.cells], \
        f"{name}.ipynb differs from {name}.py: run `python notebooks/build.py {name[:2]}`"


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_has_its_outputs(name):
    """Executed, without errors, with plots, and every claim its run printed holds."""
    nb = committed(name)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), f"{name} is committed without its outputs"
    assert not any(o.get("output_type") == "error" for c in code for o in c.outputs)
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs), f"{name} has no plots"
    text = build.printed(nb)
    assert "CLAIM FAILS" not in text
    assert text.count("claim holds:") >= 5
    assert os.path.getsize(build.notebook_path(name)) < MAX_KB * 1000, f"{name}.ipynb is over {MAX_KB} KB"


@pytest.mark.parametrize("name", NAMES)
def test_colab_links(name):
    """The badge opens this notebook in Colab, and the setup cell clones the same repository."""
    nb = committed(name)
    repo, path = colab_badge(nb)
    assert path == f"{name}.ipynb"
    assert repo == clone_url(nb), "the Colab badge and the clone URL name different repositories"
    assert re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", repo) and "<" not in repo
    assert set(build.repos_named(open(build.source_path(name)).read())) == {repo}


def test_no_placeholder_under_notebooks():
    """No '<your-github-user>'-style placeholder anywhere in notebooks/."""
    for fname in os.listdir(NOTEBOOKS):
        if fname.endswith((".py", ".ipynb", ".md")):
            text = open(os.path.join(NOTEBOOKS, fname), encoding="utf-8").read()
            assert not re.search(r"<your[-_ ]|<(user|owner|github)[-_ a-z]*>|github(\.com)?/<", text, re.I), fname


def test_repository_address():
    """origin when it is on GitHub, else $BS_UNLEARN_REPO, else the default; relinking rewrites both links."""
    assert build.github_repo("https://github.com/alice/bs-unlearn.git") == "alice/bs-unlearn"
    assert build.github_repo("git@github.com:alice/bs-unlearn.git") == "alice/bs-unlearn"
    assert build.github_repo("ssh://git@github.com/alice/bs.unlearn") == "alice/bs.unlearn"
    assert build.github_repo("https://gitlab.com/alice/bs-unlearn.git") is None
    origin = build.github_repo(build.origin_url())
    assert build.repo_address({}) == (origin or build.DEFAULT_REPO)
    assert build.repo_address({"BS_UNLEARN_REPO": "bob/fork"}) == (origin or "bob/fork")
    text = open(build.source_path(NAMES[0])).read()
    assert set(build.repos_named(build.relink(text, "bob/fork"))) == {"bob/fork"}


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes(name, toy_cache, tmp_path, monkeypatch):
    """A fresh kernel runs every cell of the source without an error, and every claim the text makes holds."""
    pytest.importorskip("jupytext")
    pytest.importorskip("nbclient")
    cache_dir, _, _ = toy_cache
    monkeypatch.setenv("BS_UNLEARN_CACHE", cache_dir)  # the kernel inherits it: no second build of the toy models
    nb = build.read_source(name)  # read only: no repository given, so the source is not rewritten
    try:
        build.execute(nb)
    finally:
        nbformat.write(nb, str(tmp_path / f"{name}.ipynb"))
    text = build.printed(nb)
    failed = [line for line in text.splitlines() if line.startswith("CLAIM FAILS")]
    assert not failed, "the notebook's text no longer matches its results:\n" + "\n".join(failed)
    assert text.count("claim holds:") >= 5
    assert "Traceback" not in text
