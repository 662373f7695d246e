"""
plumbing.py: what every run needs that is not the method, kept out of bs_unlearn.py so that it reads as the
paper: one-line errors (bad flags too, and whatever the machine does: Ctrl-C, a closed pipe, a full disk, a
missing GPU), row files checked field by field, devices, loading and saving models (a HF id, a folder or a .gguf
file), the step log, and run folders: written whole or not at all, one writer at a time, and replaced only when
they hold a finished run.
"""
import argparse
import contextlib
import errno
import glob
import io
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time


def _interrupted_while_starting(signum, frame):
    """Ctrl-C before run_main is in place (while torch loads, say): one line, not a traceback (inside a
    library's import it can surface as any error at all). Nothing is written yet, so the process just ends.
    The scripts import plumbing before torch, so that this is in place first."""
    try:
        os.write(2, b"interrupted while starting; nothing done\n")
    finally:
        os._exit(130)


HERE = os.path.dirname(os.path.realpath(__file__))
SCRIPTS = [os.path.join(HERE, name) for name in ("bs_unlearn.py", "eval.py", os.path.join("dev", "grid.py"))]
if (os.path.realpath((getattr(sys, "argv", None) or [""])[0]) in SCRIPTS  # these, run as scripts: ending in
        and "IPython" not in sys.modules  # run_main, which removes it (a program importing us is untouched)
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
    signal.signal(signal.SIGINT, _interrupted_while_starting)

import torch  # noqa: E402

try:
    import fcntl  # folder locks (POSIX); without it, runs are still written whole but not locked
except ImportError:
    fcntl = None


def fail(msg):
    """Bad input ends the run with one line on stderr, and nothing already on disk is touched."""
    sys.exit(f"error: {msg}")


class HelpFormatter(argparse.RawTextHelpFormatter):
    """--help keeps our line breaks and shows every flag's default (where its help does not say it already)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS) or action.default is False:
            return text
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    def __init__(self, **kwargs):
        super().__init__(**{"formatter_class": HelpFormatter, **kwargs})

    def error(self, message):  # argparse's own complaints are one line too, without the usage block
        fail(message)


def number(kind, low, high=math.inf, above=False):
    """An argparse type: a finite `kind` in [low, high], or (low, high] with above=True. NaN fails too."""
    def parse(text):
        x = kind(text)
        if not (math.isfinite(x) and (x > low if above else x >= low) and x <= high):
            bound = f"{'>' if above else '>='} {low}" + (f" and <= {high}" if high < math.inf else "")
            raise argparse.ArgumentTypeError(f"must be {bound} (got {text})")
        return x
    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value: ..."
    return parse


def first_line(e):
    """An exception's message, its first line only: a one-line error stays one line."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def is_text(x):
    return isinstance(x, str)


def is_texts(x):
    return isinstance(x, list) and all(isinstance(a, str) for a in x)


REQUIRED = ("question", "answer")
FIELDS = dict(question=(is_text, "a string"), answer=(is_text, "a string"),  # TOFU's fields we read
              paraphrased_answer=(is_text, "a string"), perturbed_answer=(is_texts, "a list of strings"))


def read_rows(path):
    """The rows of a JSON Lines file or a JSON array (TOFU ships both, all named .json), checked: every row
    an object with a question and an answer, and every TOFU field it has of the right type. A bad row is
    named by the file's own line number (JSON Lines) or its index (an array)."""
    if not os.path.isfile(path):
        fail(f"data file not found: {path}")
    try:
        with open(path, encoding="utf-8-sig") as f:  # (-sig: a byte-order mark is skipped)
            text = f.read()
    except UnicodeDecodeError:
        fail(f"{path} is not a UTF-8 text file")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            fail(f"cannot parse {path}: {e}")
        places = [f"row {i + 1}" for i in range(len(rows))] if isinstance(rows, list) else []
    else:  # JSON Lines
        rows, places = [], []
        for n, line in enumerate(text.split("\n"), 1):  # not splitlines: JSON strings may hold U+2028
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    fail(f"cannot parse {path}, line {n}: {e.msg} (column {e.colno})")
                places.append(f"line {n}")
    if not isinstance(rows, list):
        fail(f"{path} holds a JSON {type(rows).__name__}, not rows")
    for row, place in zip(rows, places):
        if not isinstance(row, dict):
            fail(f"{path}, {place}: a row must be a JSON object, not {json.dumps(row)[:40]}")
        for field, (ok, kind) in FIELDS.items():
            if field in REQUIRED and field not in row:
                fail(f"{path}, {place}: no {field!r} field")
            if field in row and not ok(row[field]):
                fail(f"{path}, {place}: {field!r} must be {kind}")
    return rows




def pick_device(name="auto"):
    """The device to run on: `name`, checked to exist here, or the best one there is (auto)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        fail(f"unknown --device {name!r}; use auto, cuda, cuda:N, mps or cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():  # no GPU, no driver, or a CPU build of torch
            build = "a CPU build of torch" if torch.version.cuda is None else "no CUDA GPU is visible"
            fail(f"--device {name}: {build} here; use --device cpu (or auto)")
        if (device.index or 0) >= torch.cuda.device_count():
            fail(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered from 0")
    has_mps = getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    if device.type == "mps" and not has_mps:
        fail(f"--device {name}: no Apple GPU (MPS) here; use --device cpu (or auto)")
    if device.type not in ("cpu", "cuda", "mps"):
        fail(f"--device {name}: not supported; use auto, cuda, cuda:N, mps or cpu")
    return device


def hub_args(path):
    """from_pretrained's (folder or id, extra kwargs): a .gguf file loads from its folder with gguf_file."""
    if path.endswith(".gguf"):
        return os.path.dirname(os.path.abspath(path)), dict(gguf_file=os.path.basename(path))
    return path, {}


def check_model_path(path, model=True):
    """A path that is plainly local (a .gguf file, absolute, ./, ../, or more than hub's owner/name) must be
    there, and a folder must hold a model (model=False: a tokenizer will do): else transformers answers with a
    hub error about a repo id, or a line cut short."""
    local = (path.endswith(".gguf") or os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1
             or os.path.isdir(path.split("/")[0]) and "/" in path)  # (runs/ga_typo: runs is a folder here)
    if local and not os.path.exists(path):
        fail(f"no model at {path}: no such file or folder")
    if model and os.path.isdir(path) and not any(os.path.exists(os.path.join(path, name))
                                                 for name in ("config.json", "adapter_config.json")):
        fail(f"{path} is a folder without a model in it (no config.json)")


def load_tokenizer(path, system_prompt=None, date_string=None):
    """The tokenizer, carrying the prompt settings format_prompt uses; without a pad token it pads with EOS
    (safe here: attention masks come from lengths)."""
    from transformers import AutoTokenizer
    check_model_path(path, model=False)
    folder, extra = hub_args(path)
    try:
        tok = AutoTokenizer.from_pretrained(folder, **extra)
    except Exception as e:  # a missing path, an unreachable hub, a broken file: one line, not a traceback
        fail(f"cannot load the tokenizer of {path!r}: {first_line(e)}")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    template = tok.chat_template if isinstance(getattr(tok, "chat_template", None), str) else ""
    if date_string is None and "date_string" in template:  # the template would print today's date:
        date_string = time.strftime("%d %b %Y")  # pin it, so a run keeps one prompt (main saves the date)
    tok.system_prompt, tok.date_string = system_prompt, date_string
    return tok


def load_model(path, device, dtype="auto", system_prompt=None, date_string=None):
    """Model and tokenizer from a HF id, a local directory or a .gguf file."""
    from transformers import AutoModelForCausalLM
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" else "float32"
    check_model_path(path)
    tok = load_tokenizer(path, system_prompt, date_string)
    folder, extra = hub_args(path)
    try:
        with no_hf_bars():  # our own lines say what happens (hub downloads keep their bars)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype), **extra)
    except Exception as e:  # a missing path, an unreachable hub, a cut weights file: one line, not a traceback
        fail(f"cannot load model {path!r}: {first_line(e)}")
    if extra:  # GGUF weights arrive dequantized but marked quantized, which save_pretrained refuses
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        plain = AutoModelForCausalLM.from_config(model.config, dtype=getattr(torch, dtype))
        plain.load_state_dict(model.state_dict())
        model = plain
    model = model.to(device)
    if getattr(model.config, "bs_unlearn_toy", False):
        # the toy model is tiny: eager attention beats sdpa, and one thread beats two (and gives the same
        # numbers whatever the core count or the load; dev/bench.py measures both)
        model.set_attn_implementation("eager")
        if device.type == "cpu":
            torch.set_num_threads(1)
    return model, tok


def autocast(model):
    """bf16 autocast on CUDA (the matmuls), fp32 elsewhere: how bs_unlearn.py and baselines.py run a model."""
    device = next(model.parameters()).device
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


@contextlib.contextmanager
def no_hf_bars():
    """Without transformers' own "Loading weights" / "Writing model shards" bars."""
    from transformers.utils import logging as hf_logging
    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def save_model(model, tok, path):
    from safetensors import SafetensorError  # (the weights writer's own error: a full disk, say)
    try:
        with no_hf_bars():
            model.save_pretrained(path)
            tok.save_pretrained(path)
    except (OSError, SafetensorError) as e:  # one line; atomic_dir removes what was written
        fail(f"cannot save the model to {path}: {getattr(e, 'strerror', None) or first_line(e)}")


# -----------------------------------------------------------------------------------------------------
# Run folders: written whole or not at all, one writer at a time, replaced only when they hold a finished run

RUN_CONFIG = "run_config.json"  # written last into every run folder; it lists the run's files
EVAL_SUMMARY = "summary.json"  # eval.py's: written last into its folder, listing that folder's files too


def run_problem(path, index=RUN_CONFIG, writer="bs_unlearn.py", key="method"):
    """Why the folder at `path` is not a finished run of bs_unlearn.py (None when it is one): it must hold
    run_config.json, and nothing that run did not write (so --overwrite never takes anything else with it).
    eval_problem asks the same of eval.py's folders."""
    try:
        with open(os.path.join(path, index)) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return f"has no readable {index}"
    if not isinstance(config, dict) or key not in config:
        return f"has a {index} that {writer} did not write"
    if not isinstance(config.get("files"), list):  # (folders made before the index listed their files)
        return f"holds the output of an older {writer}, whose {index} lists no files (remove it yourself)"
    others = sorted(set(os.listdir(path)) - set(config["files"]) - {index})
    if others:
        more = ", ..." if len(others) > 3 else ""
        return f"holds files {writer} did not write there ({', '.join(others[:3])}{more})"
    return None


def eval_problem(path):
    """Why the folder at `path` is not an evaluation written whole by eval.py (None when it is one)."""
    return run_problem(path, EVAL_SUMMARY, "eval.py", "summaries")


def check_out_dir(out_dir, overwrite, inputs, problem=run_problem, what="run"):
    """Everything about --out_dir that can fail before any work: not an input's folder (or one above it), not
    inside a finished run, not a file, writable, nobody writing it now, and empty unless --overwrite and it
    holds a finished `what` (problem(folder) is None). Creates nothing."""
    if not out_dir.strip():
        fail("--out_dir is empty; name a folder")
    out = os.path.realpath(out_dir)  # realpath: a symlink to the model directory is the model directory
    for path in [inputs] if isinstance(inputs, str) else inputs:
        folder = os.path.realpath(path if os.path.isdir(path) else os.path.dirname(path))  # (a .gguf: its folder)
        if os.path.exists(path) and os.path.commonpath([folder, out]) == out:
            fail(f"--out_dir {out_dir} is or holds the input model's directory ({path}); choose another")
    above = os.path.dirname(out)
    while above != os.path.dirname(above):  # a folder inside a finished run would make it look unfinished
        if run_problem(above) is None or eval_problem(above) is None:
            fail(f"--out_dir {out_dir} is inside the finished folder {above}; choose another")
        above = os.path.dirname(above)
    if os.path.exists(out) and not os.path.isdir(out):
        fail(f"--out_dir {out_dir} is a file, not a directory")
    if writer_of(out):
        fail(f"another run is writing to --out_dir {out_dir} now; wait for it or choose another")
    if os.path.commonpath([out, os.getcwd()]) == out:  # (the folder is replaced whole: the shell's would go)
        fail(f"--out_dir {out_dir} is or holds the current folder; choose another")
    if os.path.isdir(out) and os.listdir(out):
        why = problem(out)
        if why:
            fail(f"--out_dir {out_dir} is not empty and {why}: --overwrite replaces only a finished {what}, so it "
                 "is left as it is; choose another")
        if not overwrite:
            fail(f"--out_dir {out_dir} is not empty; pass --overwrite to replace the {what} in it, or choose "
                 "another")
    check_writable(out)


def run_files(folder):
    """The names a finished run holds, for its run_config.json."""
    return sorted(set(os.listdir(folder)) | {RUN_CONFIG})


def _temp_prefix(path):
    return f".{os.path.basename(path)}.tmp-"


NO_LOCK = -1  # where there is no fcntl (Windows): folders are still written whole, but not locked


def _lock(path, wait=True):
    """An open descriptor of the folder at `path` holding its exclusive lock, or None if another process
    holds it (wait=False). The lock goes when the descriptor is closed or its process ends, however it ends."""
    if fcntl is None:
        return NO_LOCK
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _unlock(fd):
    if fd != NO_LOCK:
        os.close(fd)


@contextlib.contextmanager
def _locked(folder):
    fd = _lock(folder)
    try:
        yield
    finally:
        _unlock(fd)


def writer_of(path, clean=False):
    """The temporary folder of a live process writing `path` (None if there is none). With clean=True the
    folders that dead ones left are removed: a temporary folder no live process locks, and an old run moved
    aside for a swap that never finished (put back when `path` is missing, else removed: it was replaced)."""
    if fcntl is None:  # no locks: a live writer cannot be told from a dead one, so nothing is touched
        return None
    live = None
    for tmp in sorted(glob.glob(os.path.join(glob.escape(os.path.dirname(path)), _temp_prefix(path) + "*"))):
        if tmp.endswith(".old"):
            if clean and not os.path.exists(path):
                os.rename(tmp, path)
            elif clean:
                shutil.rmtree(tmp, ignore_errors=True)
            continue
        if not os.path.isdir(tmp):  # (a file of that name is nobody's run: left alone)
            continue
        fd = _lock(tmp, wait=False)
        if fd is None:
            live = live or tmp
            continue
        try:
            if clean:
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            _unlock(fd)
    return live


def replaceable(path, replace):
    """Whether a new folder may take `path`'s place: nothing there, an empty folder, or replace(path) agrees."""
    return not (os.path.isdir(path) and os.listdir(path)) or bool(replace and replace(path))


@contextlib.contextmanager
def atomic_dir(path, replace=None, write=True):
    """Write a folder whole or not at all: the body writes into a new hidden folder beside `path`, which takes
    `path`'s place only once the body has finished. An error or Ctrl-C leaves `path` as it was. While it works,
    the hidden folder is locked: a second writer of `path` is refused, and folders left by killed ones are
    cleaned up. A folder already at `path` is replaced only if it is empty or `replace(path)` says yes.
    write=False (torchrun's ranks other than 0) does nothing and yields None."""
    if not write:
        yield None
        return
    path = os.path.realpath(path)  # a link's target is what gets replaced, not the link
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        with _locked(parent):  # one process at a time looks for other writers and makes its folder
            other = writer_of(path, clean=True)
            if other:
                fail(f"another run is writing to {path} now ({os.path.basename(other)}); wait for it or choose "
                     "another folder")
            if not replaceable(path, replace):
                fail(f"{path} is not empty, and nothing here may replace what it holds; choose another folder")
            tmp = tempfile.mkdtemp(prefix=_temp_prefix(path), dir=parent)
            fd = _lock(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # as mkdir would make it (mkdtemp's folders are the owner's alone)
    except OSError as e:
        fail(f"cannot write to {path}: {e.strerror or e}")
    old = f"{tmp}.old"
    try:
        yield tmp
        with _locked(parent):
            if not replaceable(path, replace):
                fail(f"{path} was filled by something else while this run worked; nothing saved")
            if os.path.exists(path):
                os.rename(path, old)
            os.rename(tmp, path)
    except BaseException:
        if os.path.exists(old) and not os.path.exists(path):
            os.rename(old, path)  # stopped between the two renames: the old folder goes back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _unlock(fd)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def run_dir(out_dir, overwrite, write=None):
    """The folder a run writes into (see atomic_dir): it takes --out_dir's place once the run is complete,
    replacing a run there only with --overwrite. Yields None in torchrun's ranks other than 0."""
    def finished_run(path):
        return overwrite and run_problem(path) is None
    with atomic_dir(out_dir, finished_run, is_main_process() if write is None else write) as folder:
        yield folder


def save_run(model, tok, folder, config):
    """Save the model, then run_config.json: last, listing every file of the run (see run_problem) and the
    number of torchrun processes that trained it."""
    save_model(model, tok, folder)
    try:
        with open(os.path.join(folder, RUN_CONFIG), "w") as f:
            world_size = int(os.environ.get("WORLD_SIZE", "1"))
            json.dump(dict(config, world_size=world_size, files=run_files(folder)), f, indent=2)
    except OSError as e:
        fail(f"cannot save the run to {folder}: {e.strerror or e}")


def check_lengths(model, **named_examples):
    """Stop when an example is longer than the model's positions: training on positions the model never
    learned would go unnoticed."""
    limit = getattr(model.config, "max_position_embeddings", None)
    for name, examples in named_examples.items():
        long = [e for e in examples if limit and len(e["input_ids"]) > limit]
        if long:
            worst = max(long, key=lambda e: len(e["input_ids"]))
            fail(f"{len(long)} of the {len(examples)} {name} rows are longer than the model's {limit} positions "
                 f"(the longest, {len(worst['input_ids'])} tokens: {worst.get('question', '')[:50]!r}); "
                 "shorten them or use a model with more positions")


def check_writable(path, flag="--out_dir"):
    """Fail now, not after the work, if a folder cannot be made at `path` (given by `flag`). Creates nothing:
    the probe is an unnamed temporary file in the nearest existing folder on the way."""
    here = os.path.abspath(path)
    while not os.path.exists(here):
        here = os.path.dirname(here)
    if not os.path.isdir(here):
        fail(f"cannot write to {flag} {path}: {here} is a file, not a directory")
    try:
        tempfile.TemporaryFile(dir=here).close()
    except OSError as e:  # read-only, or a folder like /proc
        fail(f"cannot write to {flag} {path}: {here} takes no new files ({e.strerror or e})")


# -----------------------------------------------------------------------------------------------------
# What a run prints, and how a script ends: one line, whatever happened

def is_main_process():
    """True but in torchrun's ranks other than 0, which train and stay silent."""
    return os.environ.get("RANK", "0") == "0"


def say(*args):
    """print, from one process only (torchrun's rank 0)."""
    if is_main_process():
        print(*args, flush=True)


class StepLog:
    """train's step lines: printed (or a progress bar with bar=True) and appended to log.jsonl as JSON."""
    last = None  # "step 12/40" of the newest step anywhere, for the line that Ctrl-C prints

    def __init__(self, path, total, bar=False, desc=None):
        from tqdm.auto import tqdm
        self.path, self.total, self.bar = path, total, bar
        self.file = open(path, "a") if path else None
        self.tqdm = tqdm(total=total, disable=not (bar and is_main_process()), desc=desc, leave=False)

    def write(self, record, line):
        StepLog.last = f"step {record['step']}/{self.total}"
        if self.file:
            try:
                self.file.write(json.dumps(record) + "\n")
            except OSError as e:
                fail(f"cannot write the step log {self.path}: {e.strerror or e}; nothing saved")
        self.tqdm.update(1)
        if not self.bar:
            say(line)

    def close(self):
        self.tqdm.close()
        if self.file:
            self.file.close()
        StepLog.last = None


class Diverged(SystemExit):
    """What StepCheck raises: the one-line exit of a run that went NaN or diverged (dev/grid.py records such a
    run as stopped and goes on; any other exit ends the grid)."""


class StepCheck:
    """Stops a run, before its step is applied, on a non-finite loss or gradient norm, or once it has diverged:
    its retain term has risen by more than ln V nats per answer token above its first step's, i.e. by more
    than a uniform guess over the vocabulary would cost. (No retain examples: no divergence check.)"""

    def __init__(self, vocab_size, retain_examples):
        n = len(retain_examples)
        tokens = sum(len(e["input_ids"]) - e["prompt_len"] for e in retain_examples) / max(1, n)
        self.uniform_guess = math.log(vocab_size) * tokens if n else math.inf  # per retain answer, on average
        self.limit = None

    def __call__(self, step, forget, retain, gnorm):
        if not all(map(math.isfinite, (forget, retain, gnorm))):
            raise Diverged(f"error: at step {step} the forget loss is {forget}, the retain loss {retain} and the "
                           f"gradient norm {gnorm}; lower --lr or check the data")
        if self.limit is None:
            self.limit = retain + self.uniform_guess
        if retain > self.limit:
            raise Diverged(f"error: at step {step} the run diverged: the retain term is {retain:.4g}, past "
                           f"{self.limit:.4g} (its start plus ln V nats per answer token); lower --lr, or pass "
                           "--allow_divergence; nothing saved")


class _PipeSafe:
    """stdout or stderr that outlives its reader: once it cannot be written (a closed pipe, `... | head -1`, or
    a full disk, `> /dev/full`), further output goes to /dev/null (said once on stderr), so the run goes on."""

    def __init__(self, stream, name):
        self.stream, self.name = stream, name

    def write(self, text):
        try:
            return self.stream.write(text)
        except OSError as e:
            self._closed(e)
            return len(text)

    def flush(self):
        try:
            self.stream.flush()
        except OSError as e:
            self._closed(e)

    def _closed(self, e):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self.stream.fileno())  # later writes and the flush at exit go nowhere, quietly
        os.close(devnull)
        if self.name == "stdout":
            why = "was closed" if isinstance(e, BrokenPipeError) else f"cannot be written ({e.strerror or e})"
            print(f"note: stdout {why}; the run goes on without printing", file=sys.stderr, flush=True)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _shown(path):
    """A path as the user knows it: a run's hidden folder (.NAME.tmp-XXXX) is shown as the folder it becomes."""
    return re.sub(r"(^|/)\.([^/]+)\.tmp-[^/]+", r"\1\2", str(path))


def run_main(main, after_interrupt="nothing saved"):
    """Run a script's main() so that whatever the user or the machine does ends in one line, not a traceback:
    Ctrl-C (exit 130), a closed stdout (the run goes on), a full disk or another OS error, running out of memory.
    Errors in the code itself still show their traceback."""
    if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # from here Ctrl-C is a KeyboardInterrupt
    streams = sys.stdout, sys.stderr
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:  # started with it closed (`>&-`): its output goes nowhere
            setattr(sys, name, open(os.devnull, "w"))
    sys.stdout, sys.stderr = _PipeSafe(sys.stdout, "stdout"), _PipeSafe(sys.stderr, "stderr")
    try:
        main()
    except KeyboardInterrupt:
        where = f" after {StepLog.last}" if StepLog.last else ""
        print(f"interrupted{where}; {after_interrupt}", file=sys.stderr)
        sys.exit(130)
    except (torch.OutOfMemoryError, MemoryError):
        fail("out of memory; try a smaller --batch_size, --bss_chunk or --gen_batch_size")
    except OSError as e:  # a full disk, a vanished folder, a device error
        where = f" ({_shown(e.filename)})" if e.filename else ""
        fail(f"{e.strerror or first_line(e)}{where}" + ("; free some space" if e.errno == errno.ENOSPC else ""))
    finally:
        sys.stdout, sys.stderr = streams


@contextlib.contextmanager
def quiet():
    """Swallow the step lines and progress bars (notebooks and dev/bench.py print their own summaries)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield
