"""
build.py: turn the notebooks' sources into the committed, executed .ipynb files.

The source of each notebook is a plain Python file in jupytext's percent format, next to it:
01_squeezing_effect.py -> 01_squeezing_effect.ipynb, 02_walkthrough.py -> 02_walkthrough.ipynb
(`# %%` starts a code cell, `# %% [markdown]` a text cell). Edit the .py files, never the .ipynb: this script
converts each source with jupytext, executes it with nbclient in a fresh kernel from notebooks/ (as a reader
would open it), and writes the .ipynb with its outputs, so the plots show on the repository page and Colab
opens it ready to read. Every number the text relies on is computed in the notebook; `claim(...)` prints
"CLAIM FAILS" when a run no longer supports the sentence it checks, and the build then ends with status 1.

    python notebooks/build.py                # both notebooks, about 2.5 minutes on 2 CPU cores (cache warm)
    python notebooks/build.py 02             # only the notebooks whose name contains "02"
    python notebooks/build.py --no-execute   # convert only: cells without outputs (not for committing)
    python notebooks/build.py --relink       # only re-point the Colab badge and clone URL (keeps outputs)
    python notebooks/build.py --png_dir /tmp/figs   # also save every plot as a PNG, to look at

The repository address (owner/name) that the Colab badge and the setup cell's `git clone` use comes from
one place, in this order: the git remote `origin` when it is a GitHub URL; else the environment variable
BS_UNLEARN_REPO (e.g. `BS_UNLEARN_REPO=alice/bs-unlearn python notebooks/build.py --relink`); else
DEFAULT_REPO below. Every build writes it into the .py sources too, so a source and its notebook always
agree (tests/test_notebooks.py checks that, and that both links name the same repository).
"""
import argparse
import base64
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
NAMES = ["01_squeezing_effect", "02_walkthrough"]
DEFAULT_REPO = "bs-unlearn/bs-unlearn"
CELL_TIMEOUT = 1200  # seconds for one cell; the longest (notebook 01's twelve runs) takes about a minute

OWNER_NAME = r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+?"  # lazy: 'name.git' is the repository 'name'
# the two places a notebook names its repository: the Colab badge, and the setup cell's clone URL
LINKS = re.compile(rf"(https://colab\.research\.google\.com/github/)({OWNER_NAME})(?=/blob/)"
                   rf"|(REPO_URL = \"https://github\.com/)({OWNER_NAME})(?=\")")


# -----------------------------------------------------------------------------------------------------
# The repository address


def github_repo(url):
    """'owner/name' from a GitHub remote URL (https, ssh or git@ form), else None."""
    m = re.fullmatch(rf"(?:https?://|ssh://git@|git@|git://)(?:[^@/]+@)?github\.com[:/]({OWNER_NAME})(?:\.git)?/?",
                     url.strip())
    return m.group(1) if m else None


def origin_url():
    """The URL of this checkout's git remote `origin` ('' when there is none, or no git)."""
    try:
        return subprocess.run(["git", "-C", HERE, "remote", "get-url", "origin"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def repo_address(env=None):
    """owner/name: from `git remote get-url origin` if it is on GitHub, else $BS_UNLEARN_REPO, else the default."""
    env = os.environ if env is None else env
    repo = github_repo(origin_url())
    override = env.get("BS_UNLEARN_REPO", "").strip()
    if not repo and override:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", override):
            sys.exit(f"error: BS_UNLEARN_REPO must look like owner/name, not {override!r}")
        repo = override
    return repo or DEFAULT_REPO


def repos_named(text):
    """Every owner/name the text's Colab and GitHub links point to."""
    return [m.group(2) or m.group(4) for m in LINKS.finditer(text)]


def relink(text, repo):
    """The text with both links pointing to repo."""
    return LINKS.sub(lambda m: (m.group(1) or m.group(3)) + repo, text)


# -----------------------------------------------------------------------------------------------------
# Build


def source_path(name):
    return os.path.join(HERE, name + ".py")


def notebook_path(name):
    return os.path.join(HERE, name + ".ipynb")


def read_source(name, repo=None):
    """The notebook of a jupytext source, its links re-pointed to `repo` first (the .py is rewritten)."""
    import jupytext
    path = source_path(name)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if repo and relink(text, repo) != text:
        text = relink(text, repo)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return jupytext.reads(text, fmt="py:percent")


def execute(nb, timeout=CELL_TIMEOUT):
    """Run every cell in a fresh kernel whose working directory is notebooks/ (outputs land in nb)."""
    from nbclient import NotebookClient
    NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": HERE}}).execute()
    return nb


def printed(nb):
    """Everything the code cells printed, as one string (errors as 'Name: message')."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out["text"])
            elif out.get("output_type") == "error":
                parts.append(f"{out['ename']}: {out['evalue']}")
    return "\n".join(parts)


def save_pngs(nb, name, png_dir):
    os.makedirs(png_dir, exist_ok=True)
    for old in os.listdir(png_dir):  # this notebook's plots of an earlier build
        if old.startswith(name[:2] + "_cell") and old.endswith(".png"):
            os.remove(os.path.join(png_dir, old))
    for i, cell in enumerate(nb.cells):
        for j, out in enumerate(cell.get("outputs", [])):
            if "image/png" in out.get("data", {}):
                with open(os.path.join(png_dir, f"{name[:2]}_cell{i:02d}_{j}.png"), "wb") as f:
                    f.write(base64.b64decode(out["data"]["image/png"]))


def build(name, repo, run=True, png_dir=None):
    """Convert (and execute) one notebook; returns the claims that failed."""
    import nbformat
    nb = read_source(name, repo)
    t0 = time.time()
    if run:
        try:
            execute(nb)
        except Exception:
            nbformat.write(nb, notebook_path(name))  # the outputs so far, to see what went wrong
            raise
    nbformat.write(nb, notebook_path(name))
    failed = [line for line in printed(nb).splitlines() if line.startswith("CLAIM FAILS")]
    claims = printed(nb).count("claim holds:") + len(failed)
    size = os.path.getsize(notebook_path(name)) / 1e3
    print(f"{name}.ipynb: " + (f"executed in {time.time() - t0:.0f} s, {claims} claims, {len(failed)} failed, "
                               if run else "converted, not executed, ") + f"{size:.0f} KB")
    for line in failed:
        print("   " + line)
    if png_dir:
        save_pngs(nb, name, png_dir)
    return failed


def relink_notebook(name, repo):
    """Re-point the links in the source and in the committed notebook, keeping its outputs."""
    import nbformat
    read_source(name, repo)
    nb = nbformat.read(notebook_path(name), as_version=4)
    for cell in nb.cells:
        cell.source = relink(cell.source, repo)
    nbformat.write(nb, notebook_path(name))
    print(f"{name}: links point to {repo}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    p.add_argument("only", nargs="*", help="build only the notebooks whose name contains one of these")
    p.add_argument("--no-execute", action="store_true", help="write the cells without running them")
    p.add_argument("--relink", action="store_true", help="only update the repository links (no run)")
    p.add_argument("--png_dir", default=None, help="also save every plot as a PNG here")
    args = p.parse_args(argv)
    repo = repo_address()
    print(f"repository: {repo} (Colab badge and clone URL)")
    failed = []
    for name in NAMES:
        if args.only and not any(o in name for o in args.only):
            continue
        if args.relink:
            relink_notebook(name, repo)
        else:
            failed += build(name, repo, not args.no_execute, args.png_dir)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
