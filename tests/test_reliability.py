"""Nothing broken is left looking whole, and nothing a user types destroys data: checked arguments, runs and
toy-model builds written whole or not at all, --overwrite that replaces only a finished run, one writer per
folder, a cache that repairs itself, one line for every bad file, and a NaN gradient or a diverging run caught
before its step. FAULTS (below) lists, in one table, every way a run can end early and the line it must end
with; a new case is one more row.

Every test here failed on the code before these checks existed. The ones that train use the cached toy model
(the `toy_cache` fixture) with a fraction of an epoch, a few seconds each on 2 CPU cores.
"""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import bs_unlearn as bs
import eval as ev
from conftest import one_line_error
import plumbing
import toy_world

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def leftovers(folder):
    """Temporary folders a run or a build left beside its target."""
    return [n for n in os.listdir(folder) if ".tmp-" in n]


def quick_run(toy_cache, out, *extra):
    return ["--method", "ga", "--epochs", "0.25", "--cache_dir", toy_cache[0], "--out_dir", str(out),
            "--sample_every", "1000", *extra]


# -----------------------------------------------------------------------------------------------------
# Arguments: every number in its range, refused before anything is created


@pytest.mark.parametrize("flag,value", [
    ("--lr", "-1"), ("--lr", "nan"), ("--lr", "0"), ("--lr", "inf"), ("--epochs", "0"), ("--epochs", "-3"),
    ("--batch_size", "0"), ("--grad_accum", "0"), ("--max_grad_norm", "0"), ("--warmup_epochs", "-1"),
    ("--npo_beta", "0"), ("--bst_topk", "0"), ("--bst_lambda", "1.5"), ("--bss_lambda", "-0.1"),
    ("--bst_temp", "0"), ("--bss_n", "0"), ("--bss_keep", "-1"), ("--bss_chunk", "0"),
    ("--gen_batch_size", "0"), ("--alpha", "-1"), ("--bss_regen", "nan"), ("--batch_size", "2.5")])
def test_numeric_flags_are_range_checked(tmp_path, flag, value):
    out = tmp_path / "runs" / "x"
    one_line_error(lambda: bs.main([flag, value, "--out_dir", str(out)]), flag, value)
    assert not (tmp_path / "runs").exists()


def test_bss_keep_above_n(tmp_path):
    one_line_error(lambda: bs.get_args(["--bss_n", "2", "--bss_keep", "3"]), "--bss_keep", "--bss_n")


def test_good_values_still_parse():
    args = bs.get_args(["--lr", "1e-5", "--epochs", "0.5", "--bst_lambda", "0", "--bss_lambda", "1",
                        "--warmup_epochs", "0", "--alpha", "0", "--bss_keep", "3"])
    assert (args.lr, args.epochs, args.bst_lambda, args.bss_lambda, args.alpha) == (1e-5, 0.5, 0, 1, 0)


# -----------------------------------------------------------------------------------------------------
# Output paths: checked before the model loads; a run appears only when it is complete


def test_out_dir_that_is_a_file(tmp_path, monkeypatch):
    target = tmp_path / "taken"
    target.write_text("mine")
    monkeypatch.setattr(bs, "load_model", None)  # must fail before any model is loaded
    one_line_error(lambda: bs.main(["--out_dir", str(target)]), "is a file")
    assert target.read_text() == "mine"


@pytest.mark.parametrize("where", ["/proc/bs_unlearn_run", "readonly/run"])
def test_out_dir_that_cannot_be_written(tmp_path, monkeypatch, where):
    if where.startswith("readonly"):
        if os.geteuid() == 0:
            pytest.skip("root can write into a read-only folder; /proc covers this case")
        ro = tmp_path / "readonly"
        ro.mkdir()
        ro.chmod(0o500)
        where = str(tmp_path / where)
    monkeypatch.setattr(bs, "load_model", None)
    one_line_error(lambda: bs.main(["--out_dir", where]), "cannot write")


def test_full_disk_leaves_no_run(toy_cache, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", disk_full)
    out = tmp_path / "run"
    one_line_error(lambda: bs.main(quick_run(toy_cache, out)), "cannot save", "No space left")
    assert not out.exists() and leftovers(tmp_path) == []


def test_interrupted_run_keeps_the_old_one(toy_cache, tmp_path, monkeypatch):
    out = tmp_path / "run"
    bs.main(quick_run(toy_cache, out))
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(bs, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bs.main(quick_run(toy_cache, out, "--overwrite"))
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before  # the finished run, untouched
    assert leftovers(tmp_path) == []


# -----------------------------------------------------------------------------------------------------
# The toy-model cache: built atomically, rebuilt when broken, built once by concurrent processes


@pytest.fixture
def private_cache(toy_cache, tmp_path):
    """A copy of the session's cached full model, free to break."""
    cache = tmp_path / "cache"
    src = toy_world.toy_model_dir(toy_cache[0], "full")
    shutil.copytree(src, toy_world.toy_model_dir(str(cache), "full"))
    return str(cache)


class CopyingBuild:
    """Stands in for toy_world.build_toy_model: copies the session's cached model instead of training one."""

    def __init__(self, toy_cache):
        self.source, self.calls = toy_world.toy_model_dir(toy_cache[0], "full"), []

    def __call__(self, out_dir, rows, seed=0):
        self.calls.append(out_dir)
        shutil.copytree(self.source, out_dir, dirs_exist_ok=True)


@pytest.mark.parametrize("damage", ["truncate", "delete", "tokenizer"])
def test_broken_cache_is_rebuilt(toy_cache, private_cache, monkeypatch, capsys, damage):
    path = toy_world.toy_model_dir(private_cache, "full")
    weights = os.path.join(path, "model.safetensors")
    if damage == "truncate":
        with open(weights, "r+b") as f:
            f.truncate(os.path.getsize(weights) // 2)
    elif damage == "delete":
        os.remove(weights)
    else:
        with open(os.path.join(path, "tokenizer.json"), "w") as f:
            f.write('{"version": "1.0", "mod')
    build = CopyingBuild(toy_cache)
    monkeypatch.setattr(toy_world, "build_toy_model", build)
    full, _ = toy_world.ensure_toy_models(private_cache, with_retain=False)
    assert len(build.calls) == 1 and "cannot be loaded" in capsys.readouterr().out
    bs.load_model(full, torch.device("cpu"))  # usable again
    toy_world.ensure_toy_models(private_cache, with_retain=False)
    assert len(build.calls) == 1  # and not rebuilt a second time


def test_interrupted_build_leaves_no_cache(tmp_path, monkeypatch):
    def interrupted(out_dir, rows, seed=0):
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            f.write("{}")  # what save_pretrained writes first
        raise KeyboardInterrupt
    monkeypatch.setattr(toy_world, "build_toy_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        toy_world.ensure_toy_models(str(tmp_path), with_retain=False)
    parent = os.path.dirname(toy_world.toy_model_dir(str(tmp_path), "full"))
    assert not os.path.exists(os.path.join(parent, "full")) and leftovers(parent) == []


def test_second_process_waits_for_the_first_build(private_cache):
    """While one process holds the build lock, a second one waits; once the first has finished, the second
    uses its model instead of building again."""
    from filelock import FileLock
    path = toy_world.toy_model_dir(private_cache, "full")
    moved = path + "-aside"
    stamp = os.stat(os.path.join(path, "model.safetensors")).st_mtime_ns
    os.rename(path, moved)  # as if the first process were still building
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {ROOT!r})
        import toy_world
        toy_world.build_toy_model = lambda *a, **k: sys.exit("built again")
        print("ready", flush=True)
        toy_world.ensure_toy_models({private_cache!r}, with_retain=False)
        print("used the cached model")
    """)
    with FileLock(path + ".lock"):
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        assert child.stdout.readline().strip() == "ready"  # imports done: next it asks for the model
        time.sleep(3)
        assert child.poll() is None  # still waiting for the lock
        os.rename(moved, path)  # the first build completes
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0 and "used the cached model" in out, (out, err)
    assert os.stat(os.path.join(path, "model.safetensors")).st_mtime_ns == stamp  # not rewritten


def test_cache_that_cannot_be_written(monkeypatch):
    one_line_error(lambda: toy_world.ensure_toy_models("/proc/bs_unlearn_cache", with_retain=False),
                   "cannot write", "--cache_dir")


# -----------------------------------------------------------------------------------------------------
# Files with bad rows, and a model folder with cut weights


def tofu_args(data, out, model="unused"):
    return ["--data", "tofu", "--data_dir", str(data), "--model", str(model), "--out_dir", str(out)]


@pytest.mark.parametrize("content,words", [
    ("[1, 2, 3]", ["row 1", "JSON object"]),
    ('{"question": "q?", "answer": null}\n', ["line 1", "'answer'", "a string"]),
    ('{"question": "q?", "answer": "a.", "perturbed_answer": "x"}\n', ["'perturbed_answer'", "list of strings"]),
    ('{"question": "q?", "answer": "a."}\n\n{"question": 3, "answer": "a."}\n', ["line 3", "'question'"]),
    ('{"a": 1}', ["line 1", "'question'"]),
    ('"just a string"', ["line 1", "JSON object"]),
    ('{"rows": []}\n', ["line 1", "'question'"]),
])
def test_bad_rows_name_file_row_and_field(tmp_path, content, words):
    data = tmp_path / "data"
    data.mkdir()
    (data / "forget10.json").write_text(content)
    msg = one_line_error(lambda: bs.main(tofu_args(data, tmp_path / "out")), *words)
    assert "forget10.json" in msg and not (tmp_path / "out").exists()


def test_binary_file(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "forget10.json").write_bytes(bytes(range(128, 256)) * 4)
    one_line_error(lambda: bs.main(tofu_args(data, tmp_path / "out")), "forget10.json", "UTF-8")


def test_truncated_jsonl_names_the_files_own_line(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = [json.dumps(dict(question=f"q{i}?", answer=f"a{i}.")) for i in range(21)]
    rows[-1] = rows[-1][:14]  # the last record is cut
    (data / "forget10.json").write_text("\n".join(rows[:10]) + "\n\n" + "\n".join(rows[10:]))
    one_line_error(lambda: bs.main(tofu_args(data, tmp_path / "out")), "forget10.json", "line 22")


def test_model_folder_with_cut_weights(toy_cache, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(toy_world.toy_model_dir(toy_cache[0], "full"), model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    one_line_error(lambda: bs.load_model(str(model), torch.device("cpu")), "cannot load model")


# -----------------------------------------------------------------------------------------------------
# A NaN gradient is caught before the optimizer applies it


def test_nan_gradient_stops_before_the_step(toy_cache, monkeypatch):
    model, tok = bs.load_model(toy_cache[1], torch.device("cpu"))
    forget_rows, retain_rows = toy_world.split_toy(toy_world.make_toy_data(), "forget10")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def finite_loss_nan_gradient(model, batch, method, args):
        # sqrt at 0: the value is 0, the gradient 0.5 / sqrt(0) * 0 = inf * 0 = NaN
        return torch.sqrt(bs.forward(model, batch).sum() * 0)
    monkeypatch.setattr(bs, "forget_loss", finite_loss_nan_gradient)
    args = bs.get_args(["--method", "ga", "--epochs", "0.25", "--alpha", "0"])
    one_line_error(lambda: bs.train(model, tok, bs.encode_rows(tok, forget_rows), [], args),
                   "step 1", "gradient norm nan")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # nothing applied


# -----------------------------------------------------------------------------------------------------
# Found in review: the folder swap, the model's own folder, row files, the prompt's date


def test_swap_stopped_between_renames_keeps_the_old_run(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.txt").write_text("old")
    real_rename, calls = os.rename, []

    def second_rename_interrupted(src, dst):
        calls.append(src)
        if len(calls) == 2:  # the old run has moved aside; the new one has not moved in yet
            raise KeyboardInterrupt
        real_rename(src, dst)
    monkeypatch.setattr(os, "rename", second_rename_interrupted)
    with pytest.raises(KeyboardInterrupt):
        with bs.atomic_dir(str(out), replace=lambda path: True) as tmp:
            open(os.path.join(tmp, "model.txt"), "w").write("new")
    monkeypatch.setattr(os, "rename", real_rename)
    assert (out / "model.txt").read_text() == "old" and leftovers(tmp_path) == []


def test_atomic_dir_mode_and_links(tmp_path):
    old = os.umask(0o022)
    try:
        with bs.atomic_dir(str(tmp_path / "run")) as tmp:
            open(os.path.join(tmp, "a"), "w").write("x")
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "run").st_mode & 0o777) == 0o755  # as mkdir makes it, not mkdtemp's 0700
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target", target_is_directory=True)
    with bs.atomic_dir(str(tmp_path / "link")) as tmp:
        open(os.path.join(tmp, "b"), "w").write("y")
    assert (tmp_path / "link").is_symlink() and (tmp_path / "target" / "b").read_text() == "y"
    assert sorted(os.listdir(tmp_path)) == ["link", "run", "target"]


@pytest.mark.parametrize("model_inside", ["model", "model/m.gguf"])
def test_out_dir_holding_the_model_is_refused(tmp_path, model_inside):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "model" / "m.gguf").write_bytes(b"GGUF")
    for out in (tmp_path / "model", tmp_path):
        one_line_error(lambda: bs.main(["--model", str(tmp_path / model_inside), "--out_dir", str(out),
                                        "--method", "ga", "--overwrite"]), "holds the input model")
    assert sorted(os.listdir(tmp_path / "model")) == ["config.json", "m.gguf"]


def test_rows_with_line_separators_and_a_byte_order_mark(tmp_path):
    row = dict(question="q\u2028?", answer="a\u2029.", perturbed_answer=["b\x85."])
    jsonl = tmp_path / "rows.json"
    jsonl.write_text(json.dumps(row, ensure_ascii=False) + "\r\n" + json.dumps(row, ensure_ascii=False) + "\n")
    assert bs.read_rows(str(jsonl)) == [row, row]
    array = tmp_path / "array.json"
    array.write_bytes(b"\xef\xbb\xbf" + json.dumps([row]).encode())
    assert bs.read_rows(str(array)) == [row]


def test_a_template_date_is_pinned_and_saved(tmp_path):
    tok = toy_world.word_tokenizer(["Question: hi Answer: yes"])
    tok.chat_template = "Today Date: {{ date_string }}{% for m in messages %} {{ m['content'] }}{% endfor %}"
    tok.save_pretrained(tmp_path / "tok")
    loaded = bs.load_tokenizer(str(tmp_path / "tok"))
    assert loaded.date_string == time.strftime("%d %b %Y")  # today's, fixed for the whole run
    assert bs.format_prompt(loaded, "hi").startswith(f"Today Date: {loaded.date_string} hi")
    assert bs.load_tokenizer(str(tmp_path / "tok"), date_string="10 Apr 2025").date_string == "10 Apr 2025"
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # prints no date
    tok.save_pretrained(tmp_path / "plain")
    assert bs.load_tokenizer(str(tmp_path / "plain")).date_string is None


# -----------------------------------------------------------------------------------------------------
# Every fault in one table: what the user types (and what the machine does meanwhile), the first line the
# script must end with, and what must be on disk afterwards. Each runs in-process as `python bs_unlearn.py`
# (or eval.py) would, through plumbing.run_main; the cases only a real process shows (a closed pipe, signals,
# two processes at once) follow the table.

REPO_FILES = ["README.md", "bs_unlearn.py", "plumbing.py", "requirements.txt"]


def tofu_rows(n, answer="It is a fact."):
    return "".join(json.dumps(dict(question=f"Where was author {i} born?", answer=answer)) + "\n"
                   for i in range(n))


def setup_places(tmp_path, toy_cache):
    """The folders the table's commands name: {repo} a copy of the repository's files, {data} TOFU-shaped
    files, {notes} a folder with one unrelated file, {run} a finished run (plus, in {run_plus}, one file the
    run did not write), {busy} a folder another live process is writing, {out} a new folder, {model} the toy."""
    places = dict(tmp=tmp_path, model=toy_world.toy_model_dir(toy_cache[0], "full"), out=tmp_path / "out")
    places["repo"] = tmp_path / "repo"
    places["repo"].mkdir()
    for name in REPO_FILES:
        shutil.copy(os.path.join(ROOT, name), places["repo"])
    (places["repo"] / ".git").mkdir()
    places["data"] = tmp_path / "data"
    places["data"].mkdir()
    (places["data"] / "forget10.json").write_text(tofu_rows(4))
    (places["data"] / "retain90.json").write_text(tofu_rows(8))
    places["notes"] = tmp_path / "notes"
    places["notes"].mkdir()
    (places["notes"] / "thesis.txt").write_text("years of work")
    return places


def make_run(folder, toy_cache):
    bs.main(quick_run(toy_cache, folder))


def snapshot(folder):
    """Every file below folder with its bytes: equal snapshots mean nothing was touched."""
    if not os.path.exists(folder):
        return None
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files}


def disk_full_on_save(monkeypatch):
    from safetensors import SafetensorError
    from transformers import PreTrainedModel

    def save_pretrained(self, *args, **kwargs):  # as safetensors reports it
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                              'message: "No space left on device" })')
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_pretrained)


def disk_full_on_log(monkeypatch):
    real_open = open

    class FullFile:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

    def opener(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return FullFile(f) if str(path).endswith("log.jsonl") and "a" in mode else f
    monkeypatch.setattr("builtins.open", opener)


def torch_cpu_build(monkeypatch):  # the CPU wheel that .ci/run installs
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)


def cuda_build_without_gpu(monkeypatch):  # requirements.txt's CUDA build on a machine with no GPU (or driver)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.8")


def cuda_build_one_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.version, "cuda", "12.8")


def another_writer(monkeypatch, places):
    """A live process writing {out}: its locked hidden folder beside it (this process holds the lock)."""
    tmp = places["tmp"] / ".out.tmp-live"
    tmp.mkdir()
    monkeypatch.setattr(plumbing, "_held_by_test", plumbing._lock(str(tmp)), raising=False)


def interrupted_in_step_2(monkeypatch):
    real = plumbing.StepCheck.__call__

    def check(self, step, *args):  # Ctrl-C while step 2 runs
        if step == 2:
            raise KeyboardInterrupt
        return real(self, step, *args)
    monkeypatch.setattr(plumbing.StepCheck, "__call__", check)


def long_answer_rows(monkeypatch, places):
    (places["data"] / "forget10.json").write_text(tofu_rows(3) + tofu_rows(1, "word " * 140))


def empty_retain_file(monkeypatch, places):
    (places["data"] / "retain90.json").write_text("")


QUICK = "--method ga --epochs 0.5 --sample_every 1000"
TOFU = "--data tofu --data_dir {data} --model {model}"
OVERWRITE_ONLY_RUNS = "--overwrite replaces only a finished run"
FAULTS = [
    # (case, script and arguments, fake, words the one line must hold, where nothing may change)
    ("overwrite the repository", f"bs {QUICK} --out_dir {{repo}} --overwrite", None, [OVERWRITE_ONLY_RUNS],
     "repo"),
    ("overwrite the data folder", f"bs {QUICK} {TOFU} --out_dir {{data}} --overwrite", None,
     [OVERWRITE_ONLY_RUNS], "data"),
    ("overwrite a folder of notes", f"bs {QUICK} --out_dir {{notes}} --overwrite", None, [OVERWRITE_ONLY_RUNS],
     "notes"),
    ("overwrite a run someone added to", f"bs {QUICK} --out_dir {{run_plus}} --overwrite", None,
     ["did not write", "thesis.txt"], "run_plus"),
    ("a run there, no --overwrite", f"bs {QUICK} --out_dir {{run}}", None, ["not empty", "--overwrite"], "run"),
    ("a model path that is not there", f"bs {QUICK} --model {{tmp}}/nope --out_dir {{out}}", None,
     ["no model at", "no such file or folder"], "out"),
    ("a folder that holds no model", f"bs {QUICK} --model {{notes}} --out_dir {{out}}", None,
     ["without a model", "config.json"], "notes"),
    ("a new run inside a finished one", f"bs {QUICK} --out_dir {{run}}/sub", None, ["inside the finished"], "run"),
    ("an evaluation into a folder of notes", "eval --out_dir {notes} --overwrite", None,
     ["--overwrite replaces only a finished evaluation"], "notes"),
    ("another run writing there", f"bs {QUICK} --out_dir {{out}}", another_writer, ["another run is writing"],
     "out"),
    ("--device cuda, CPU build of torch", f"bs {QUICK} --device cuda --out_dir {{out}}", torch_cpu_build,
     ["--device cuda", "CPU build"], "out"),
    ("--device cuda, no GPU", f"bs {QUICK} --device cuda --out_dir {{out}}", cuda_build_without_gpu,
     ["--device cuda", "no CUDA GPU"], "out"),
    ("--device cuda:5, one GPU", f"bs {QUICK} --device cuda:5 --out_dir {{out}}", cuda_build_one_gpu,
     ["--device cuda:5", "1 CUDA GPU"], "out"),
    ("eval --device cuda:5, one GPU", "eval {run} --device cuda:5 --out_dir {out}", cuda_build_one_gpu,
     ["--device cuda:5", "1 CUDA GPU"], "out"),
    ("eval --device cuda, no GPU", "eval {run} --device cuda --out_dir {out}", cuda_build_without_gpu,
     ["--device cuda", "no CUDA GPU"], "out"),
    ("disk full while saving the weights", f"bs {QUICK} --out_dir {{out}}", disk_full_on_save,
     ["cannot save the model", "No space left"], "out"),
    ("disk full while writing the step log", f"bs {QUICK} --out_dir {{out}}", disk_full_on_log,
     ["cannot write the step log", "No space left"], "out"),
    ("Ctrl-C during training", f"bs {QUICK} --out_dir {{out}}", interrupted_in_step_2,
     ["interrupted after step 1/2", "nothing saved"], "out"),
    ("a diverging learning rate", f"bs {QUICK} --lr 10 --out_dir {{out}}", None,
     ["diverged", "retain term", "--allow_divergence"], "out"),
    ("a row longer than the model's positions", f"bs {QUICK} {TOFU} --out_dir {{out}}", long_answer_rows,
     ["1 of the 4 forget rows", "128 positions"], "out"),
    ("an empty retain file", f"bs {QUICK} {TOFU} --out_dir {{out}}", empty_retain_file,
     ["retain split", "empty", "--alpha 0"], "out"),
]


def run_as_script(script, argv, capsys):
    """(exit code, the last line on stderr) of `python SCRIPT.py ARGV`, run in this process."""
    main = bs.main if script == "bs" else ev.main
    with pytest.raises(SystemExit) as e:
        plumbing.run_main(lambda: main(argv))
        sys.exit(0)
    err = capsys.readouterr().err.strip().splitlines()
    code = e.value.code
    if isinstance(code, str):  # sys.exit("error: ...") prints that one line
        return 1, code
    return code, err[-1] if err else ""


@pytest.mark.parametrize("case,command,fake,words,unchanged", FAULTS, ids=[row[0] for row in FAULTS])
def test_fault_ends_in_one_line(toy_cache, tmp_path, monkeypatch, capsys, case, command, fake, words,
                                unchanged):
    places = setup_places(tmp_path, toy_cache)
    if "{run" in command:
        places["run"] = tmp_path / "run"
        make_run(places["run"], toy_cache)
        places["run_plus"] = tmp_path / "run_plus"
        shutil.copytree(places["run"], places["run_plus"])
        (places["run_plus"] / "thesis.txt").write_text("years of work")
    capsys.readouterr()
    script, *argv = command.split()
    argv = [a.format(**places) for a in argv]
    before = snapshot(places[unchanged])
    if fake is not None:
        fake(monkeypatch, *([places] if fake.__code__.co_argcount == 2 else []))
    code, line = run_as_script(script, argv, capsys)
    monkeypatch.undo()
    assert code != 0 and "\n" not in line and "Traceback" not in line, (code, line)
    for w in words:
        assert w in line, (w, line)
    assert snapshot(places[unchanged]) == before  # nothing there was touched (or nothing was created)
    assert [n for n in os.listdir(tmp_path) if ".tmp-" in n and n != ".out.tmp-live"] == []


def test_overwrite_replaces_a_finished_run(toy_cache, tmp_path):
    out = tmp_path / "run"
    make_run(out, toy_cache)
    first = snapshot(out)
    bs.main(quick_run(toy_cache, out, "--overwrite", "--seed", "1"))
    assert snapshot(out) != first and "run_config.json" in os.listdir(out)
    config = json.load(open(out / "run_config.json"))
    assert sorted(config["files"]) == sorted(os.listdir(out)) and config["seed"] == 1
    assert leftovers(tmp_path) == []


def test_help_shows_defaults():
    run = subprocess.run([sys.executable, "bs_unlearn.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0
    for flag, default in [("--lr", "0.0003"), ("--bss_n", "3"), ("--method", "bs_s"), ("--lora_r", "0")]:
        options = run.stdout[run.stdout.index("options:"):]
        block = options[options.index(f"  {flag} "):]
        assert f"(default: {default})" in block[:block.index("\n  --", 1)], flag


# the cases a real process shows: a closed pipe, Ctrl-C and kill signals, two processes at once

def cli(toy_cache, out, *extra):
    return [sys.executable, "bs_unlearn.py", *quick_run(toy_cache, out, *extra)]


def cli_env(toy_cache):
    return dict(os.environ, BS_UNLEARN_CACHE=toy_cache[0], HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


def test_closed_stdout_finishes_the_run(toy_cache, tmp_path):
    out = tmp_path / "run"
    run = subprocess.run(" ".join(cli(toy_cache, out)) + " | head -1", shell=True, cwd=ROOT, text=True,
                         capture_output=True, env=cli_env(toy_cache), timeout=300, executable="/bin/bash")
    assert run.stdout.count("\n") == 1 and "Traceback" not in run.stderr, run.stderr
    assert "stdout was closed" in run.stderr
    assert plumbing.run_problem(str(out)) is None  # the run went on and finished


@pytest.mark.parametrize("how", ["closed", "full"])
def test_stdout_that_cannot_be_written_finishes_the_run(toy_cache, tmp_path, how):
    # started with stdout closed (`>&-`), or on a full disk (`> /dev/full`): the run is saved all the same
    if how == "full" and not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    out = tmp_path / "run"
    stdout = open("/dev/full", "w") if how == "full" else None
    run = subprocess.run(cli(toy_cache, out), cwd=ROOT, text=True, env=cli_env(toy_cache), timeout=300,
                         stdout=stdout, stderr=subprocess.PIPE,
                         preexec_fn=(lambda: os.close(1)) if how == "closed" else None)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    if how == "full":
        assert "stdout cannot be written (No space left on device)" in run.stderr
    assert plumbing.run_problem(str(out)) is None


@pytest.mark.parametrize("script", ["bs_unlearn.py", "dev/grid.py", "elsewhere/eval.py"])
def test_ctrl_c_while_starting_is_one_line(toy_cache, tmp_path, script):
    # one of the scripts, interrupted while its imports run (before run_main is in place): one line, exit 130.
    # A program of the user's that happens to be called eval.py keeps Python's own Ctrl-C.
    path = os.path.join(str(tmp_path), "eval.py") if script.startswith("elsewhere") else os.path.join(ROOT, script)
    code = (f"import os, signal, sys, time\nsys.argv = [{path!r}]\nsys.path.insert(0, {ROOT!r})\n"
            "import plumbing\ntry:\n    os.kill(os.getpid(), signal.SIGINT)\n    time.sleep(30)\n"
            "except KeyboardInterrupt:\n    print('my own handler')\n")
    run = subprocess.run([sys.executable, "-c", code], text=True, capture_output=True, timeout=120,
                         env=cli_env(toy_cache), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    if script.startswith("elsewhere"):
        assert (run.returncode, run.stdout) == (0, "my own handler\n"), run.stderr
    else:
        assert (run.returncode, run.stdout, run.stderr) == (130, "", "interrupted while starting; nothing done\n")


@pytest.mark.parametrize("script", ["bs_unlearn.py", "eval.py", "dev/grid.py"])
def test_scripts_import_plumbing_before_torch(script):
    # so that Ctrl-C while torch loads (a second or more) meets the handler above, not a traceback
    import ast
    tree = ast.parse(open(os.path.join(ROOT, script)).read())
    names = [a.name if isinstance(node, ast.Import) else node.module for node in tree.body
             if isinstance(node, (ast.Import, ast.ImportFrom)) for a in node.names]
    assert names.index("plumbing") < names.index("torch"), names


def test_an_empty_out_dir_is_refused(capsys):
    one_line_error(lambda: bs.main(["--out_dir", ""]), "--out_dir is empty")


def test_errors_name_the_folder_the_user_gave_not_its_hidden_twin():
    assert plumbing._shown("/tmp/x/.out.tmp-ab12cd/model.safetensors") == "/tmp/x/out/model.safetensors"
    assert plumbing._shown("/a/b.c/.d/file.tmp") == "/a/b.c/.d/file.tmp"


def wait_for_step(child, n):
    for line in child.stdout:
        if line.startswith(f"step {n:4d}/"):
            return
    raise AssertionError("the run ended before step %d" % n)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_signal_mid_run_leaves_nothing_that_looks_finished(toy_cache, tmp_path, sig):
    out = tmp_path / "run"
    # (a test session started in the background, `cmd &`, ignores SIGINT, and so would the child: not here)
    child = subprocess.Popen(cli(toy_cache, out, "--epochs", "20"), cwd=ROOT, text=True, env=cli_env(toy_cache),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for_step(child, 3)
    child.send_signal(sig)
    _, err = child.communicate(timeout=120)
    assert not out.exists()
    if sig == signal.SIGINT:  # Ctrl-C: one line and exit 130
        assert child.returncode == 130 and err.strip().splitlines()[-1].startswith("interrupted after step ")
        assert err.strip().endswith("nothing saved") and "Traceback" not in err, err
        assert leftovers(tmp_path) == []
    else:  # a kill leaves its hidden folder; the next run into the same place removes it
        assert len(leftovers(tmp_path)) == 1
        bs.main(quick_run(toy_cache, out))
        assert leftovers(tmp_path) == [] and plumbing.run_problem(str(out)) is None


def test_two_runs_into_one_folder_at_once(toy_cache, tmp_path):
    out = tmp_path / "run"
    children = [subprocess.Popen(cli(toy_cache, out, "--epochs", "2"), cwd=ROOT, text=True,
                                 env=cli_env(toy_cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                for _ in range(2)]
    results = [(c.wait(timeout=300), c.stderr.read().strip()) for c in children]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    refused = [err for code, err in results if code == 1][0]
    assert len(refused.splitlines()) == 1 and refused.startswith("error:"), refused
    assert "another run" in refused or "not empty" in refused  # (which one depends on who gets there first)
    assert plumbing.run_problem(str(out)) is None and leftovers(tmp_path) == []


def test_a_file_named_like_a_hidden_run_folder_blocks_nothing(toy_cache, tmp_path):
    (tmp_path / ".run.tmp-notes").write_text("mine")  # a file, not a run's folder: neither a writer nor removed
    bs.main(quick_run(toy_cache, tmp_path / "run"))
    assert plumbing.run_problem(str(tmp_path / "run")) is None
    assert (tmp_path / ".run.tmp-notes").read_text() == "mine"


def test_toy_world_encodes_as_bs_unlearn_does(toy_cache):
    """toy_world trains its model with its own short loop and encoder (it must not import bs_unlearn); its
    examples must stay token for token what bs_unlearn.encode makes of the same rows."""
    tok = bs.load_tokenizer(toy_cache[1])
    for row in toy_world.make_toy_data()[:40]:
        mine = bs.encode(tok, row["question"], row["answer"])
        theirs = toy_world.encode(tok, row["question"], row["answer"])
        assert theirs == dict(input_ids=mine["input_ids"], labels=mine["labels"])
