"""
plumbing.py: what every run needs that is not the method, kept out of bs_unlearn.py so that it reads as the
paper: one-line errors, row files checked field by field, devices, loading and saving models (a HF id, a
folder or a .gguf file), and folders written whole or not at all.
"""
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile

import torch


def fail(msg):
    """Bad input ends the run with one line on stderr, and nothing already on disk is touched."""
    sys.exit(f"error: {msg}")


FIELD_TYPES = dict(question=str, answer=str, paraphrased_answer=str, perturbed_answer=list)


def read_rows(path):
    """The rows of a JSON Lines file or a JSON array (TOFU ships both, all named .json), checked: every row
    an object with a question and an answer, and every TOFU field it has of the right type."""
    if not os.path.isfile(path):
        fail(f"data file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        fail(f"{path} is not a UTF-8 text file")
    if text.lstrip().startswith("["):
        try:
            rows, where = json.loads(text), lambda i: f"row {i + 1}"
        except json.JSONDecodeError as e:
            fail(f"cannot parse {path}: {e}")
    else:  # JSON Lines: name the file's own line number when one is cut or broken
        rows, lines = [], []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    fail(f"cannot parse {path}, line {n}: {e.msg} (column {e.colno})")
                lines.append(n)
        where = lambda i: f"line {lines[i]}"
    if not isinstance(rows, list):
        fail(f"{path} holds a JSON {type(rows).__name__}, not rows")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            fail(f"{path}, {where(i)}: a row must be a JSON object, not {json.dumps(row)[:40]}")
        for field, kind in FIELD_TYPES.items():
            if field in ("question", "answer") and field not in row:
                fail(f"{path}, {where(i)}: no {field!r} field")
            if field in row and not (isinstance(row[field], kind) and (kind is str or all(
                    isinstance(a, str) for a in row[field]))):
                fail(f"{path}, {where(i)}: {field!r} must be {'a string' if kind is str else 'a list of strings'}")
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
        fail(f"cannot load the tokenizer of {path!r}: {(str(e).strip().splitlines() or [type(e).__name__])[0]}")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
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
        fail(f"cannot load model {path!r}: {(str(e).strip().splitlines() or [type(e).__name__])[0]}")
    if extra:  # GGUF weights arrive dequantized but marked quantized, which save_pretrained refuses
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
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    except OSError as e:
        fail(f"cannot write to {path}: {e.strerror or e}")
    try:
        yield tmp
        old = f"{tmp}.old"
        if os.path.exists(path):
            os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
