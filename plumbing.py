"""
plumbing.py: what every run needs that is not the method, kept out of bs_unlearn.py so that it reads as the
paper: one-line errors (bad flags too), row files checked field by field, devices, loading and saving models (a HF id, a
folder or a .gguf file), and folders written whole or not at all.
"""
import argparse
import contextlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time

import torch


def fail(msg):
    """Bad input ends the run with one line on stderr, and nothing already on disk is touched."""
    sys.exit(f"error: {msg}")


class Parser(argparse.ArgumentParser):
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
    if name != "auto":
        try:
            return torch.device(name)
        except RuntimeError:
            fail(f"unknown --device {name!r}; use auto, cuda, cuda:N, mps or cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def hub_args(path):
    """from_pretrained's (folder or id, extra kwargs): a .gguf file loads from its folder with gguf_file."""
    if path.endswith(".gguf"):
        return os.path.dirname(os.path.abspath(path)), dict(gguf_file=os.path.basename(path))
    return path, {}


def load_tokenizer(path, system_prompt=None, date_string=None):
    """The tokenizer, carrying the prompt settings format_prompt uses; without a pad token it pads with EOS
    (safe here: attention masks come from lengths)."""
    from transformers import AutoTokenizer
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
    tok = load_tokenizer(path, system_prompt, date_string)
    folder, extra = hub_args(path)
    try:
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


@contextlib.contextmanager
def atomic_dir(path):
    """Write a folder whole or not at all: the body writes into a new folder beside `path`, which takes
    `path`'s place only once the body has finished. An error or Ctrl-C leaves `path` as it was."""
    path = os.path.realpath(path)  # a link's target is what gets replaced, not the link
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # as mkdir would make it (mkdtemp's folders are the owner's alone)
    except OSError as e:
        fail(f"cannot write to {path}: {e.strerror or e}")
    old = f"{tmp}.old"
    try:
        yield tmp
        if os.path.exists(path):
            os.rename(path, old)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(old) and not os.path.exists(path):
            os.rename(old, path)  # stopped between the two renames: the old folder goes back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


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


def save_model(model, tok, path):
    try:
        model.save_pretrained(path)
        tok.save_pretrained(path)
    except OSError as e:  # a full disk, say: one line; atomic_dir removes what was written
        fail(f"cannot save the model to {path}: {e.strerror or e}")


@contextlib.contextmanager
def quiet():
    """Swallow the step lines and progress bars (notebooks and dev/bench.py print their own summaries)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield
