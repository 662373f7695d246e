"""
nb_common.py: what the two notebooks share, so that each shows only its own idea: the methods' names and
colours, the embedded example's starting model, `claim(...)` (a sentence of the text checked against this
run) and `show(fig)` (a plot kept small). Importing it also quiets Hugging Face's progress bars and sets the
plots' style. (The setup cell that fetches the repository stays in each notebook: it runs before this file
is there.)
"""
import io
import warnings

import matplotlib.pyplot as plt
from IPython.display import Image, display
from PIL import Image as PILImage
from transformers.utils import logging as hf_logging

import bs_unlearn as bs
import toy_world

METHODS = ["ga", "npo", "bs_t", "bs_s"]
NAMES = dict(ga="GA", npo="NPO", bs_t="BS-T", bs_s="BS-S")
COLORS = dict(ga="tab:red", npo="tab:orange", bs_t="tab:blue", bs_s="tab:green")

hf_logging.disable_progress_bar()
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets: plain bars are fine
plt.rcParams.update({"figure.dpi": 62, "axes.grid": True, "grid.alpha": 0.3, "axes.titlesize": 10})


def claim(text, holds):
    """Print whether this run still supports a sentence of the text (tests fail on 'CLAIM FAILS')."""
    print(("claim holds: " if holds else "CLAIM FAILS (the text above no longer matches this run): ") + text)


def show(fig):
    """Display a figure as a 48-colour PNG: the same picture in a quarter of the bytes, so the notebook
    stays small enough to open quickly from the repository page."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    img = PILImage.open(buf).convert("RGB").quantize(48, method=PILImage.Quantize.MEDIANCUT,
                                                     dither=PILImage.Dither.NONE)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    display(Image(out.getvalue()))


def toy_example():
    """The embedded example, as `python bs_unlearn.py` sees it: the starting model (built once, about 35 s on
    a CPU, and cached; bs.load_model runs it on one thread, faster for a model this small), its tokenizer,
    the forget and retain rows of forget10, the device, and the two cached models' paths."""
    full_path, retain_path = toy_world.ensure_toy_models(bs.get_args([]).cache_dir)  # $BS_UNLEARN_CACHE
    device = bs.pick_device("auto")  # CUDA when there is a GPU, else the CPU
    base, tok = bs.load_model(full_path, device, dtype="float32")  # fp32 on a GPU too: the CPU's curves
    forget_rows, retain_rows = toy_world.split_toy(toy_world.make_toy_data(), "forget10")
    print(f"device: {device}; {len(forget_rows)} forget / {len(retain_rows)} retain questions; "
          f"{sum(p.numel() for p in base.parameters()) / 1e6:.2f}M parameters")
    return base, tok, forget_rows, retain_rows, device, full_path, retain_path
