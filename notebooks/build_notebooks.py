"""
build_notebooks.py: the source of the two tutorial notebooks. Edit the cells here, not in the .ipynb files.

Writes notebooks/01_squeezing_effect.ipynb and notebooks/02_walkthrough.ipynb with nbformat, executes them
with nbclient (from notebooks/, as a reader would) and saves them with their outputs, so the plots show on
the repository page. Every number the prose relies on is computed in the notebook itself; `claim(...)`
cells print a line starting with "CLAIM FAILS" when a run no longer supports the text above it, and
tests/test_notebooks.py fails on such a line.

    python notebooks/build_notebooks.py                 # write and execute both (about 4 minutes on 2 cores)
    python notebooks/build_notebooks.py 02              # only the notebooks whose name contains "02"
    python notebooks/build_notebooks.py --no-execute    # write the cells only (no outputs)
    python notebooks/build_notebooks.py --png_dir /tmp/figs   # also save every plot as a PNG, to look at
"""
import argparse
import base64
import os
import sys
import time
from textwrap import dedent

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))
BADGE = ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
         "(https://colab.research.google.com/github/<your-github-user>/bs-unlearn/blob/main/notebooks/{name})")


def md(text):
    return nbformat.v4.new_markdown_cell(dedent(text).strip())


def code(text):
    return nbformat.v4.new_code_cell(dedent(text).strip())


# -----------------------------------------------------------------------------------------------------
# Cells shared by both notebooks

SETUP = code('''
    # Setup. In a clone of the repository (this notebook opened from notebooks/) it only finds the code.
    # Anywhere else, Colab included, it fetches the repository and installs its requirements first.
    import os, subprocess, sys

    REPO_URL = "https://github.com/<your-github-user>/bs-unlearn"  # placeholder: put the repository's owner here
    if os.path.isfile(os.path.join("..", "bs_unlearn.py")):
        ROOT = os.path.abspath("..")
    else:
        ROOT = os.path.abspath("bs-unlearn")
        if not os.path.isdir(ROOT):
            subprocess.run(["git", "clone", "--depth", "1", REPO_URL, ROOT], check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", os.path.join(ROOT, "requirements.txt")],
                       check=True)
    sys.path.insert(0, ROOT)
''')

IMPORTS = '''
    import contextlib, copy, io, time, warnings
    warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets: plain bars are fine
    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers.utils import logging as hf_logging

    import bs_unlearn as bs
    import toy_world
    import eval as ev  # the repository's eval.py (imported under another name: `eval` is also a builtin)

    t_start = time.time()
    hf_logging.disable_progress_bar()
    plt.rcParams.update({"figure.dpi": 90, "axes.grid": True, "grid.alpha": 0.3, "axes.titlesize": 10})
    # The toy models are built once (~70 s on 2 cores) and cached, exactly as `python bs_unlearn.py` builds them:
    # with torch's default thread count, since a different count gives a (slightly) different model.
    full_path, retain_path = toy_world.ensure_toy_models(bs.get_args([]).cache_dir)
    device = bs.pick_device("auto")  # CUDA when there is a GPU, else the CPU
    if device.type == "cpu":
        torch.set_num_threads(1)  # from here on: a 0.25M-parameter model runs faster on one thread than on two
    base, tok = bs.load_model(full_path, device, dtype="float32")  # fp32 on a GPU too: the same curves as on a CPU
    forget_rows, retain_rows = toy_world.split_toy(toy_world.make_toy_data(), "forget10")
    print(f"device: {device}; {len(forget_rows)} forget / {len(retain_rows)} retain questions; "
          f"{sum(p.numel() for p in base.parameters()) / 1e6:.2f}M parameters")

    METHODS = ["ga", "npo", "bs_t", "bs_s"]
    NAMES = dict(ga="GA", npo="NPO", bs_t="BS-T", bs_s="BS-S")
    COLORS = dict(ga="tab:red", npo="tab:orange", bs_t="tab:blue", bs_s="tab:green")


    @contextlib.contextmanager
    def quiet():
        """bs.train prints a line per step and eval.py draws progress bars: keep them out of the page."""
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield


    def claim(text, holds):
        """Print whether this run still supports a sentence of the text (tests fail on 'CLAIM FAILS')."""
        print(("claim holds: " if holds else "CLAIM FAILS (the text above no longer matches this run): ") + text)
'''


# -----------------------------------------------------------------------------------------------------
# 01: the squeezing effect

NB01 = [
    md('''
    # The squeezing effect, seen on a small model

    ''' + BADGE.format(name="01_squeezing_effect.ipynb") + '''

    *LLM Unlearning with LLM Beliefs* (Li et al., ICLR 2026, [arXiv 2510.19422](https://arxiv.org/abs/2510.19422))
    starts from one observation: when gradient ascent (GA) or NPO lowers the probability of an answer the model
    should forget, the probability does not vanish. It moves, mostly into the model's *own* other ways of saying
    the same thing. The answer's probability, its ROUGE score and its truth ratio all drop, and the model still
    states the fact, in other words. The paper calls this the **squeezing effect** and proposes bootstrapping
    (BS): push down the model's beliefs too, its top next tokens (**BS-T**) or its own sampled answers
    (**BS-S**).

    This notebook looks at the effect on the repository's embedded example: a 0.25M-parameter Llama that has
    memorised 640 facts about 80 fictitious authors, each fact trained in three phrasings, and is asked to
    forget the last 8 authors (64 questions). Everything runs on a CPU in about three minutes.

    1. One softmax, one gradient step: the effect in its simplest form.
    2. The toy model: where the probability of a forgotten answer goes, position by position.
    3. The paper's Fig. 2 on the toy model: the target against the model's likely, middling and unlikely answers.
    4. Why the usual metrics mislead: ROUGE-L and truth ratio against a direct fact-leak count.
    5. The honest comparison: leak against retained utility along each run, over three seeds.

    All the code that trains and measures lives in `bs_unlearn.py` and `eval.py`; this notebook imports it.
    '''),
    SETUP,
    code(IMPORTS),
    md('''
    ## 1. One softmax, one gradient step

    Take one next-token distribution, $p = \\mathrm{softmax}(z)$, and one token $y$. The whole effect is in one
    derivative:

    $$\\frac{\\partial \\log p_y}{\\partial z_j} = \\mathbb{1}[j = y] - p_j .$$

    A **positive** step (fine-tuning on $y$, minimising $-\\log p_y$) moves the logits along $+(e_y - p)$: $z_y$
    rises and every other logit falls by $\\eta\\, p_j$. A **negative** step (gradient ascent, minimising
    $\\log p_y$: GA's Eq. 1, and NPO's direction too) moves them along $-(e_y - p)$: $z_y$ falls and every other
    logit *rises* by $\\eta\\, p_j$, **in proportion to the probability it already has**. The strongest
    competitor gains most; a token the model never considered gains almost nothing. Ren & Sutherland
    ("Learning Dynamics of LLM Finetuning", ICLR 2025, [arXiv 2407.10490](https://arxiv.org/abs/2407.10490))
    named this the squeezing effect of negative gradients.

    Below, a peaked distribution shaped like the toy model's after "Oona Falk ...": the answer's word *comes*,
    the model's other phrasings *was* and *grew*, and a tail. One step of each kind, taken with the repository's
    own helpers on a one-token answer (`bs.sequence_logps` does the shift and the mask, exactly as in training).
    '''),
    code('''
    words = ["comes", "was", "grew", "is", "lives", "wrote", "won", "the"]
    z0 = torch.tensor([3.0, 1.3, 0.8, -0.5, -1.0, -1.5, -2.0, -2.5])  # the logits of one next-token distribution
    TARGET, BELIEF = 0, 1  # the answer's word, and the model's strongest other phrasing
    labels = torch.tensor([[-100, TARGET]])  # a one-token answer: position 0's logits predict position 1


    def grad_on_logits(loss_fn, z=z0):
        """d loss / d z for loss_fn(logits, labels) on the one-position 'sequence' (logits of shape (1, 2, V))."""
        z = z.clone().requires_grad_(True)
        logits = torch.stack([z, torch.zeros_like(z)])[None]  # (1, 2, V); the second position is never scored
        loss_fn(logits, labels).backward()
        return z.grad


    positive = lambda lg, lb: bs.nll_loss(lg, lb)                    # fine-tuning: minimise -log p_y
    negative = lambda lg, lb: bs.ga_loss(bs.sequence_logps(lg, lb))  # GA, Eq. 1: minimise log p_y
    LR = 5.0  # one plain gradient step, large so that the change is easy to see; any size moves the same way
    p0 = F.softmax(z0, -1)
    p_pos = F.softmax(z0 - LR * grad_on_logits(positive), -1)
    p_neg = F.softmax(z0 - LR * grad_on_logits(negative), -1)
    print("sanity: the gradient of GA's loss (log p_y) on the logits is e_y - p:",
          torch.allclose(grad_on_logits(negative), F.one_hot(torch.tensor(TARGET), len(words)) - p0))
    for name, p in [("before", p0), ("positive step", p_pos), ("negative step", p_neg)]:
        print(f"{name:>14}: p(comes) {p[TARGET]:.3f}   p(was) {p[BELIEF]:.3f}   p(tail, 5 words) "
              f"{p[3:].sum():.3f}   'was' holds {p[BELIEF] / (1 - p[TARGET]):.0%} of the mass that is not on 'comes'")
    lost = p0[TARGET] - p_neg[TARGET]
    print(f"the negative step took {lost:.3f} from 'comes'; 'was' received "
          f"{(p_neg[BELIEF] - p0[BELIEF]) / lost:.0%} of it, the 5 tail words together "
          f"{(p_neg[3:].sum() - p0[3:].sum()) / lost:.0%}")
    '''),
    code('''
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.2), sharex=True)
    x = np.arange(len(words))
    for col, (title, p_after) in enumerate([("positive step: fine-tune on 'comes'", p_pos),
                                            ("negative step: gradient ascent on 'comes'", p_neg)]):
        for r, log in enumerate([False, True]):
            ax = axes[r, col]
            ax.bar(x - 0.2, p0, 0.4, color="lightgray", edgecolor="gray", label="before the step")
            ax.bar(x + 0.2, p_after, 0.4, color="tab:green" if col == 0 else "tab:red", label="after the step")
            ax.set_yscale("log" if log else "linear")
            ax.set_ylim((1e-3, 1.5) if log else (0, 1))
            ax.set_ylabel("probability" + (" (log scale)" if log else ""))
            if not log:
                ax.legend(loc="upper right", fontsize=8)
            if log:  # how many times more (or less) likely each word became
                for i in range(len(words)):
                    ax.annotate(f"x{p_after[i] / p0[i]:.1f}", (x[i], max(p0[i], p_after[i])),
                                textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
            if r == 0:
                ax.set_title(title)
            else:
                ax.set_xticks(x, [f"{w}\\n(target)" if i == TARGET else w for i, w in enumerate(words)])
                ax.set_xlabel("next token")
    gain = p_neg / p0
    fig.suptitle("One gradient step on one softmax. Notice (right): ascent on 'comes' hands most of its mass to the "
                 "runner-up\\n'was'. The log scale shows why: the likelier a word was, the more it gains "
                 f"(x{gain[BELIEF]:.1f} for 'was', x{gain[3:].min():.1f} to x{gain[3:].max():.1f} for the tail).",
                 fontsize=11)
    fig.tight_layout()
    plt.show()
    '''),
    md('''
    ### The same calculus for BS-T and BS-S

    Any forget loss of the form $\\sum_j t_j \\log p_j$ with a fixed soft target $t$ (summing to 1) has gradient
    $t - p$ on the logits, so one step changes $z_j$ by $\\eta\\,(p_j - t_j)$. A tail token has
    $p_j \\approx t_j \\approx 0$ and barely moves, so **a token gains on the tail whenever the target gives it
    less weight than the model does** ($p_j > t_j$).

    * GA: $t = e_y$. Every competitor gains, in proportion to $p_j$.
    * BS-T (Eqs. 5-6): $t = \\lambda q + (1 - \\lambda) e_y$, with $q$ the model's own top-$k$ distribution,
      renormalised and detached. At temperature 1, $q_j = p_j / P_k$ with $P_k$ the top-$k$ mass, so when the top
      $k$ hold nearly all the mass, $t - p = (1 - \\lambda)(e_y - p)$: **BS-T's step at a position is GA's step
      times $(1 - \\lambda)$**. The cell below checks this with `bs.bst_loss`, on this softmax and on the toy
      model's real answer positions.
    * BS-S (Eq. 7) adds sampled answers. Where a sample leaves the target's path, it puts weight
      $\\lambda_{\\text{bss}} \\times$ (its share of the samples) on its token, and samples drawn from the model
      have shares close to $p_j$, so at that position $p_j - t_j \\approx (1 - \\lambda_{\\text{bss}})\\,p_j > 0$:
      on average BS-S squeezes there as well. What BS-S adds is *reach*: each sample goes on down its own
      phrasing ("... was born in Leipzig") and the loss lowers the fact where that phrasing states it, which GA
      never touches directly.

    So on paper, no method stops the squeeze at the position where the phrasings part; BS-S should differ at
    the fact, along the other phrasings. Section 2 measures both places.
    '''),
    code('''
    lam = 0.2  # BS-T's default --bst_lambda
    g_ga = grad_on_logits(negative)
    g_bst = grad_on_logits(lambda lg, lb: bs.bst_loss(lg, lb, k=len(words), lam=lam))
    print(f"toy softmax, k = V: BS-T gradient / GA gradient, logit by logit: {(g_bst / g_ga).numpy().round(4)}")

    # the same on the toy model's real answer positions (V = 252 words, the default k = 20)
    targets = [bs.encode(tok, r["question"], r["answer"]) for r in forget_rows]
    batch = bs.collate(targets, tok.pad_token_id)
    with torch.no_grad():
        logits = bs.forward(base, batch).float().cpu()
    answer_pos = batch["labels"][:, 1:] != -100  # (B, T-1): the positions whose logits predict an answer token
    topk_mass = F.softmax(logits[:, :-1], -1).topk(20, -1).values.sum(-1)[answer_pos]
    grads = {}
    for name, fn in [("ga", lambda lg: bs.ga_loss(bs.sequence_logps(lg, batch["labels"]))),
                     ("bs_t", lambda lg: bs.bst_loss(lg, batch["labels"], k=20, lam=lam))]:
        lg = logits.clone().requires_grad_(True)
        fn(lg).backward()
        grads[name] = lg.grad[:, :-1][answer_pos]  # (answer positions, V)
    ratio = (grads["bs_t"] * grads["ga"]).sum() / (grads["ga"] ** 2).sum()
    resid = (grads["bs_t"] - ratio * grads["ga"]).norm() / grads["bs_t"].norm()
    print(f"toy model, {int(answer_pos.sum())} answer positions: the top 20 of 252 words hold at least "
          f"{topk_mass.min():.4f} of the mass; BS-T gradient = {ratio:.4f} x GA gradient "
          f"(what is left over: {resid:.1e} of its norm)")
    claim("BS-T's gradient on the logits is (1 - lambda) = 0.8 times GA's", abs(ratio - 0.8) < 0.01 and resid < 0.01)
    '''),
    md('''
    ## 2. The toy model: where the probability of a forgotten answer goes

    Now the real thing. We unlearn the 64 forget questions with each method at the repository's defaults
    (`bs.get_args`: lr 3e-4, 10 epochs of 4 steps, batch 16, a retain NLL term with weight 1), from fresh copies
    of the same starting model. To watch a run from the inside without changing `bs.train`, we register a
    PyTorch *optimizer step hook*: a function called after every optimizer step, which measures the model and
    puts it back in training mode. It does not draw random numbers, so the runs are the ones `bs.train` makes
    on its own.

    First the question we follow, and the starting model's next-token distribution along its answer. The
    model learned three phrasings per fact, with the target phrasing seen three times as often, so it hesitates
    exactly where the phrasings part.
    '''),
    code('''
    Q = 0  # the first forget question
    row = forget_rows[Q]
    print(f"question: {row['question']}\\ntarget:   {row['answer']}\\nthe other two trained phrasings: "
          f"{row['train_answers'][1:]}\\nnever trained (held-out paraphrase): {row['paraphrased_answer']}\\n")


    def fact_position(example, fact):
        """Index of the logits that predict the fact's key word in an encoded answer (teacher-forced).
        The key word is the fact's first word after a leading article ('The Hollow Lantern' -> 'Hollow')."""
        words = tok(fact, add_special_tokens=False)["input_ids"]
        ids, start = example["input_ids"], example["prompt_len"]
        s = next(s for s in range(start, len(ids)) if ids[s:s + len(words)] == words)
        return s - 1 + (tok.decode(words[:1]).lower() == "the")


    def key_positions(row):
        """The three places we watch, as (encoded answer, logits index, the token that answer has there):
        the branch (where the starting model most doubts the target's next word), the fact on the target,
        and the fact on the model's top belief (the other trained phrasing it finds most likely)."""
        target = bs.encode(tok, row["question"], row["answer"])
        others = [bs.encode(tok, row["question"], a) for a in row["train_answers"][1:]]
        belief = others[int(bs.score(base, tok, others)["logp"].argmax())]
        with torch.no_grad():
            p = F.softmax(bs.forward(base, bs.collate([target], tok.pad_token_id))[0].float(), -1)  # (T, V)
        ids = target["input_ids"]
        branch = max(range(target["prompt_len"] - 1, len(ids) - 1), key=lambda t: 1 - p[t, ids[t + 1]].item())
        places = [(target, branch), (target, fact_position(target, row["fact"])),
                  (belief, fact_position(belief, row["fact"]))]
        return [(e, t, e["input_ids"][t + 1]) for e, t in places]


    keys = [key_positions(r) for r in forget_rows]  # for all 64 questions: 3 places each
    PLACES = ["branch: where the phrasings part", "the fact, on the target's path",
              "the fact, on the top belief's path"]
    # The starting model's 3 most likely *other* tokens at every place: the 'beliefs' at that position.
    with torch.no_grad():
        rivals = []
        for places in keys:
            out = []
            for e, t, y in places:
                p = F.softmax(bs.forward(base, bs.collate([e], tok.pad_token_id))[0, t].float(), -1)
                p[y] = 0
                out.append(p.topk(3).indices.tolist())
            rivals.append(out)
    prefix = lambda e, t: tok.decode(e["input_ids"][e["prompt_len"]:t + 1])
    for (e, t, y), r, name in zip(keys[Q], rivals[Q], PLACES):
        print(f"{name:<36} '{prefix(e, t)} ___'   token: '{tok.decode([y])}'   "
              f"the starting model's other top tokens: {[tok.decode([i]) for i in r]}")
    '''),
    md('''
    The probe below runs after every second optimizer step: one forward pass over the 64 target answers and
    the 64 top beliefs, reading the probability of the token at each of the three places, of the starting
    model's three other top tokens there, and of everything else. Every fourth step (once an epoch) it also
    runs `eval.evaluate` on the forget set and on 64 retain questions, which gives every metric used in
    sections 3 to 5. The four runs take a minute or two.
    '''),
    code('''
    from torch.optim.optimizer import register_optimizer_step_post_hook

    probe_batch = bs.collate([places[0][0] for places in keys] + [places[2][0] for places in keys], tok.pad_token_id)
    n_q = len(keys)
    idx_row = torch.tensor([[q, q, n_q + q] for q in range(n_q)])  # which sequence holds each place: (64, 3)
    idx_t = torch.tensor([[t for _, t, _ in places] for places in keys])  # (64, 3)
    idx_tok = torch.tensor([[[y] + r for (_, _, y), r in zip(places, rs)]
                            for places, rs in zip(keys, rivals)])  # (64, 3, 4): the token, then its 3 rivals


    @torch.no_grad()
    def probe(model):
        """(64 questions, 3 places, 5): p(the answer's token), p(each of the 3 rivals), p(everything else)."""
        p = F.softmax(bs.forward(model, probe_batch).float(), -1).cpu()  # (128, T, V)
        p = p[idx_row, idx_t]  # (64, 3, V)
        picked = p.gather(-1, idx_tok)  # (64, 3, 4)
        return torch.cat([picked, 1 - picked.sum(-1, keepdim=True)], -1)


    eval_data = dict(forget=forget_rows, retain=retain_rows[::9])  # every 9th retain question: 64, all 8 kinds of fact
    # eval.py's defaults (geometric-mean truth ratio, 10 beliefs per question), but greedy answers of at most 64
    # tokens: the toy model has 128 positions, and its answers are under 20 tokens when it still stops at all
    eval_args = ev.get_args(["--max_new_tokens", "64"])
    with quiet():
        beliefs = ev.draw_beliefs(base, tok, forget_rows, eval_args.n_beliefs, eval_args.belief_temp, seed=0)


    def evaluate(model, with_beliefs=True):
        """eval.py's numbers for one model ('summary'), plus its greedy forget answers and their ROUGE-L."""
        with quiet():
            res = ev.evaluate(model, tok, eval_data, beliefs if with_beliefs else None, eval_args)
        f = res["splits"]["forget"]["rows"]
        return dict(res["summary"], answers=f["answer"], rouge_rows=f["rouge"])


    def unlearn(method, seed=0, probe_every=2, eval_every=4, with_beliefs=True):
        """Unlearn the forget set from a fresh copy of the starting model with bs.train at its defaults,
        measuring it after every `probe_every` / `eval_every` optimizer steps (0: never)."""
        model = copy.deepcopy(base)
        args = bs.get_args(["--method", method, "--seed", str(seed)])
        forget_ex = [dict(bs.encode(tok, r["question"], r["answer"]), question=r["question"]) for r in forget_rows]
        retain_ex = [dict(bs.encode(tok, r["question"], r["answer"]), question=r["question"]) for r in retain_rows]
        if method == "npo":
            bs.attach_ref_logps(model, tok, forget_ex)  # NPO's frozen reference log-probs, from the starting model
        rec = dict(probe={0: start_probe}, evals={0: start_eval}, steps=0)

        def after_step(optimizer, *_):
            rec["steps"] += 1
            s = rec["steps"]
            if probe_every and s % probe_every == 0:
                rec["probe"][s] = probe(model)
            if eval_every and s % eval_every == 0:
                rec["evals"][s] = evaluate(model, with_beliefs)
            model.train()

        hook = register_optimizer_step_post_hook(after_step)
        try:
            with quiet():
                bs.train(model, tok, forget_ex, retain_ex, args)
        finally:
            hook.remove()
        return rec


    start_probe, start_eval = probe(base), evaluate(base)
    runs = {}
    for m in METHODS:
        t0 = time.time()
        runs[m, 0] = unlearn(m)
        e = runs[m, 0]["evals"][40]
        print(f"{NAMES[m]:>4}: {time.time() - t0:5.1f} s | target log-prob {e['d_target']:+.2f} | likely beliefs "
              f"{e['d_high']:+.2f} | fact leak {e['fact_leak']:.2f} | retain utility {e['mu']:.3f}")
    '''),
    md('''
    The first figure follows the one question. Each panel stacks the next-token probability at one place over
    the 40 steps: the answer's own token at the bottom, then the starting model's three other top tokens there,
    then everything else (grey).
    '''),
    code('''
    SHADES = [["#08306b", "#6baed6", "#9ecae1", "#c6dbef"], ["#67000d", "#fb6a4a", "#fc9272", "#fcbba1"],
              ["#00441b", "#74c476", "#a1d99b", "#c7e9c0"]]


    def trajectory(method, q=None):
        """Probe steps and values: one question's, or the mean over all 64; (3 places, 5 parts, steps)."""
        steps = sorted(runs[method, 0]["probe"])
        values = torch.stack([runs[method, 0]["probe"][s] for s in steps], -1)  # (64, 3, 5, S)
        return steps, (values[q] if q is not None else values.mean(0)).numpy()


    def mass_grid(q, title):
        """3 rows (places) x 4 columns (methods) of stacked next-token probability over the optimizer steps."""
        fig = plt.figure(figsize=(14, 9.2), layout="constrained")
        for r, sub in enumerate(fig.subfigures(3, 1)):
            axes = sub.subplots(1, 4, sharey=True)
            if q is not None:  # one question: the words themselves
                e, t, y = keys[q][r]
                sub.suptitle(f"{r + 1}. {PLACES[r]}: '{prefix(e, t)} ...'", fontsize=11, x=0.01, ha="left")
                labels = ([f"\u201c{tok.decode([y])}\u201d (the answer's token)"]
                          + [f"\u201c{tok.decode([i])}\u201d" for i in rivals[q][r]] + ["anything else"])
                colors = SHADES[r] + ["#d9d9d9"]
            else:  # the mean over questions: the rivals in one band
                sub.suptitle(f"{r + 1}. {PLACES[r]} (mean over the 64 questions)", fontsize=11, x=0.01, ha="left")
                labels = ["the target's word" if r == 0 else "the fact",
                          "3 rival words (mostly other phrasings)" if r == 0 else "the 3 likeliest wrong facts",
                          "anything else"]
                colors = [SHADES[r][0], SHADES[r][2], "#d9d9d9"]
            for ax, m in zip(axes, METHODS):
                steps, v = trajectory(m, q)
                parts = v[r] if q is not None else [v[r, 0], v[r, 1:4].sum(0), v[r, 4]]
                ax.stackplot(steps, *parts, colors=colors, labels=labels, edgecolor="white", linewidth=0.3)
                ax.set(xlim=(0, steps[-1]), ylim=(0, 1), title=NAMES[m], xlabel="optimizer step")
            axes[0].set_ylabel("next-token probability")
            axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8.5)
        fig.suptitle(title, fontsize=11.5)
        plt.show()


    mass_grid(Q, f"'{row['question']}': where the answer's probability goes. Notice row 1: under every method 'comes' "
                 "loses its mass\\nto the other phrasings ('was', 'grew'), not to 'anything else'. The fact 'Leipzig' "
                 "(rows 2-3) keeps most of its mass.")
    '''),
    md('''
    For this question BS-S squeezes hardest of all. The reason is in its belief samples: BS-S samples 3 answers
    per question from the starting model, and a model that gives its target phrasing a probability of about
    0.4 (the average here) often samples the target itself. Then the "belief" term is just more gradient
    ascent on the target.
    '''),
    code('''
    bss_args = bs.get_args(["--method", "bs_s", "--seed", "0"])  # the same seed, so the same samples as the run above
    forget_ex = [bs.encode(tok, r["question"], r["answer"]) for r in forget_rows]
    with quiet():
        bss_beliefs = bs.sample_beliefs(base, tok, forget_ex, bss_args)
    print(f"BS-S's {bss_args.bss_n} samples for '{row['question']}':")
    for b in bss_beliefs[Q]:
        print("   ", tok.decode(b["input_ids"][b["prompt_len"]:], skip_special_tokens=True))
    copies = sum(b["input_ids"] == e["input_ids"] for e, bb in zip(forget_ex, bss_beliefs) for b in bb)
    total = sum(len(bb) for bb in bss_beliefs)
    print(f"over all 64 questions, {copies} of the {total} samples ({copies / total:.0%}) are the target answer itself")
    '''),
    md('''
    One question can be unusual, so here is the same picture averaged over all 64 forget questions (each with
    its own three places and rivals; the rivals are summed into one band). At the branch the rivals are the
    other phrasings of the *same* fact, so mass moving there is the squeeze; at the fact, the rivals are
    *wrong* facts, so mass moving there is real forgetting.
    '''),
    code('''
    mass_grid(None, "All 64 forget questions. Notice row 1: every method moves the target word's mass into the other "
                    "phrasings, BS-S least.\\nRows 2-3: the fact loses only part of its mass, and BS-S takes the most "
                    "from it, also on the belief's path (row 3).")
    summary = {m: trajectory(m)[1][:, :, -1] for m in METHODS}  # the mean at step 40: (3 places, 5 parts)
    start = start_probe.mean(0).numpy()
    print("at the start:  branch: target word %.2f, rivals %.2f | fact on target path %.2f | fact on belief path %.2f"
          % (start[0, 0], start[0, 1:4].sum(), start[1, 0], start[2, 0]))
    for m in METHODS:
        s = summary[m]
        print(f"after {NAMES[m]:>4}:  branch: target word {s[0, 0]:.2f}, rivals {s[0, 1:4].sum():.2f}, else {s[0, 4]:.2f} "
              f"| fact on target path {s[1, 0]:.2f} | fact on belief path {s[2, 0]:.2f}")
    claim("at the branch, every method leaves more mass on the rival phrasings than it started with",
          all(summary[m][0, 1:4].sum() > start[0, 1:4].sum() + 0.1 for m in METHODS))
    claim("BS-S moves the least mass off the target word at the branch",
          all(summary["bs_s"][0, 0] > summary[m][0, 0] for m in ["ga", "npo", "bs_t"]))
    claim("BS-S lowers the fact on the top belief's path more than GA and NPO do",
          all(summary["bs_s"][2, 0] < summary[m][2, 0] for m in ["ga", "npo"]))
    '''),
    md('''
    **What this shows.** Where the phrasings part, all four methods do what section 1 predicts: the target
    word's probability flows into the model's other phrasings, and very little of it into "anything else".
    BS-T tracks GA (its gradient there is GA's times 0.8). NPO tracks GA too: its gradient is GA's times
    $2\\sigma(\\beta\\,\\Delta)$, with $\\Delta$ the drop in the target's log-probability, which is 1 at the start
    and still about 0.75 when the target has lost 5 nats ($\\beta = 0.1$), and Adam rescales the update anyway.
    BS-S squeezes less at the branch: part of its loss is spent down the belief paths, so the target's own
    wording is pushed less hard. It also takes the most mass from the fact, on the target's path and on the
    belief's. But under no method does the mass at the branch leave the beliefs for the tail. On this model,
    "bootstrapping stops the squeeze" holds only in a weaker form: BS-S squeezes less, and erodes the fact more.

    For GA, NPO and BS-T, most of the drop in the target's log-probability is a drop in its *wording*; the fact
    keeps most of its mass.

    ## 3. The paper's Fig. 2 on the toy model

    The paper's Fig. 2 samples answers from the starting model, ranks them by likelihood into a **high** (top
    20%), **mid** (20-60%) and **low** (60-100%) band, and plots the change in log-probability of each band
    and of the target over training. `eval.draw_beliefs` does the same with 10 samples per question (sampled
    rather than beam-searched; duplicates and the target itself dropped), and `eval.evaluate` reports each
    band's mean change in summed log-probability against the starting model (`d_high`, `d_mid`, `d_low`,
    `d_target`).
    '''),
    code('''
    n_band = {b: sum(s["band"] == b for s in beliefs["samples"]) for b in ("high", "mid", "low")}
    print(f"{len(beliefs['samples'])} distinct beliefs for 64 questions (high {n_band['high']}, mid {n_band['mid']}, "
          f"low {n_band['low']}); for example, for '{row['question']}':")
    for s in sorted([s for s in beliefs["samples"] if s["row"] == Q], key=lambda s: -s["base_logp"]):
        print(f"   {s['band']:>4}  log-prob {s['base_logp']:6.2f}  {s['text']}")

    fig, axes = plt.subplots(2, 4, figsize=(14, 6.6), sharey="row")
    series = [("d_target", "target answer", "black", "-"), ("d_high", "high band (top 20%)", "tab:red", "-"),
              ("d_mid", "mid band (20-60%)", "tab:purple", "--"), ("d_low", "low band (60-100%)", "tab:gray", ":")]
    for col, m in enumerate(METHODS):
        ev_m = runs[m, 0]["evals"]
        for r, last in enumerate([40, 16]):  # the whole run, then its first 4 epochs up close
            ax = axes[r, col]
            ev_steps = [s for s in sorted(ev_m) if s <= last]
            for key, label, color, ls in series:
                ax.plot(ev_steps, [ev_m[s][key] for s in ev_steps], ls, color=color, label=label, marker=".")
            ax.axhline(0, color="black", lw=0.6)
            ax.set_title(NAMES[m] + ("" if r == 0 else ": the first 16 steps"), fontsize=11)
            ax.set_xlabel("optimizer step")
        axes[1, col].set_ylim(-1.2, 0.35)
    axes[0, 0].set_ylabel("change in summed log-prob\\nvs the starting model (nats)")
    axes[1, 0].set_ylabel("the same, zoomed in (nats)")
    axes[0, -1].legend(loc="lower left", fontsize=8)
    fig.suptitle("The paper's Fig. 2 on the toy model. Notice: in the first epochs the likely answers rise while the "
                 "target falls (GA, NPO, BS-T;\\nzoom below); then everything falls, the target fastest. BS-S's likely "
                 "answers barely rise and end lowest.", fontsize=11)
    fig.tight_layout()
    plt.show()
    for m in METHODS:
        ev_m = runs[m, 0]["evals"]
        peak = max(ev_m, key=lambda s: ev_m[s]["d_high"])
        end40 = ev_m[40]
        print(f"{NAMES[m]:>4}: high band peaks at {ev_m[peak]['d_high']:+.2f} (step {peak:2d}); at step 40 target "
              f"{end40['d_target']:+.2f}, high {end40['d_high']:+.2f}, mid {end40['d_mid']:+.2f}, low {end40['d_low']:+.2f}")
    claim("under GA the high band rises above its start at some checkpoint while the target falls",
          max(runs["ga", 0]["evals"][s]["d_high"] for s in runs["ga", 0]["evals"]) > 0.05)
    claim("at step 40, BS-S has lowered the high band more than GA and NPO",
          all(runs["bs_s", 0]["evals"][40]["d_high"] < runs[m, 0]["evals"][40]["d_high"] for m in ["ga", "npo"]))
    '''),
    md('''
    **What this shows.** The paper's picture (the high band *rising* while GA and NPO push the target down)
    appears here only early: over the first two epochs (8 steps) the likely answers gain a little while the
    target falls. Then they fall too, and by step 16 every band is below where it started: everything the model
    says about these authors degrades. What remains of the squeeze is relative: the target loses more than twice as much
    log-probability as its likely rephrasings. BS-T again follows GA. BS-S's likely answers barely rise and
    end lowest, as in the paper, because answers like them are what it trains against.

    ## 4. Why the usual metrics mislead

    TOFU scores forgetting on the target answer: ROUGE-L recall of the greedy answer against the target, and
    the truth ratio ($\\min(R, 1/R)$ with $R = p_{\\text{perturbed}} / p_{\\text{paraphrase}}$; 1 means the model
    can no longer tell the true answer from false ones). The toy data lets us count what actually matters
    directly: the **fact leak**, the share of forget questions whose greedy answer still contains the fact's key
    entity. All three come from the same `eval.evaluate` calls as above.
    '''),
    code('''
    retrained, _ = bs.load_model(retain_path, device, dtype="float32")  # trained on the retain authors only
    ref = evaluate(retrained, with_beliefs=False)
    fig, axes = plt.subplots(1, 4, figsize=(14, 4), sharey=True)
    series = [("fact_leak", "fact leak (answers that still name the fact)", "black", "-", 2.2),
              ("forget_rouge", "ROUGE-L recall vs the target", "tab:blue", "--", 1.5),
              ("forget_tr", "truth ratio min(R, 1/R) (1 = can't tell)", "tab:purple", ":", 1.5)]
    for ax, m in zip(axes, METHODS):
        ev_m = runs[m, 0]["evals"]
        ev_steps = sorted(ev_m)
        for key, label, color, ls, lw in series:
            ax.plot(ev_steps, [ev_m[s][key] for s in ev_steps], ls, color=color, lw=lw, label=label, marker=".")
            ax.axhline(ref[key], color=color, lw=4, alpha=0.2)  # the retain-only model: what 'forgotten' looks like
        ax.set_title(NAMES[m], fontsize=12)
        ax.set_xlabel("optimizer step")
        ax.set_ylim(0, 1.05)
    axes[0].plot([], [], color="gray", lw=4, alpha=0.3, label="pale bands: the retain-only model's level")
    axes[0].set_ylabel("score on the 64 forget questions")
    axes[0].legend(loc="lower left", fontsize=7.5)
    fig.suptitle("ROUGE-L against the fact leak. Notice: ROUGE-L drops to the level of a model that never saw these "
                 "authors (pale blue band),\\nwhile most answers still state the fact (black, far above its pale band). "
                 "The truth ratio moves little.", fontsize=11)
    fig.tight_layout()
    plt.show()

    print("answers at step 40 with ROUGE-L recall below 0.5 (the metric calls them mostly forgotten):")
    for m in METHODS:
        e = runs[m, 0]["evals"][40]
        low = [i for i, r in enumerate(e["rouge_rows"]) if r < 0.5]
        named = [i for i in low if forget_rows[i]["fact"].lower() in e["answers"][i].lower()]
        print(f"   {NAMES[m]:>4}: {len(low):2d} of 64, and {len(named):2d} of those still state the fact")
    e = runs["ga", 0]["evals"][40]
    print("\\nfor example, GA's answers at step 40 (ROUGE-L recall | names the fact | answer):")
    shown = [i for i, r in enumerate(e["rouge_rows"])
             if r < 0.5 and forget_rows[i]["fact"].lower() in e["answers"][i].lower()]
    for i in shown[:5]:
        print(f"   {e['rouge_rows'][i]:.2f} | yes | {forget_rows[i]['question']} -> {e['answers'][i]}\\n"
              f"                  target: {forget_rows[i]['answer']}")
    g = runs["ga", 0]["evals"]
    claim("under GA, ROUGE-L falls by more than the fact leak does",
          g[0]["forget_rouge"] - g[40]["forget_rouge"] > g[0]["fact_leak"] - g[40]["fact_leak"])
    '''),
    md('''
    **What this shows.** The greedy answers above are the squeezing effect in text: the model answers in one
    of its *other* phrasings, so ROUGE-L against the target phrasing is low, and the fact is still there.
    ROUGE-L reaches the score of the retain-only model, which never saw these authors (they share names and
    sentence frames, so it scores about 0.43 without knowing a single fact), while the leak stays far above
    that model's. The truth ratio is not fooled in the same way: it moves only part of the way towards the
    retain-only model's level, which is the honest answer, but it moves so little that it barely tells the
    methods apart. Any score that reads the target's wording will over-report forgetting whenever the model
    knows other ways to say the same thing.

    ## 5. The honest comparison: a trade-off curve per method, over three seeds

    End-of-run numbers are one point on a path, and the path can matter: in an earlier prototype of this
    repository, retain accuracy dipped mid-run and recovered, so the last checkpoint did not say how a method
    got there. And a method that forgets more usually also damages more. So we plot the **fact leak**
    against the **retained utility** (`mu`, TOFU's model utility: the harmonic mean of Prob, ROUGE-L and truth
    ratio on the 64 retain questions) at checkpoints along each run, for three seeds. The seed changes the
    order of the forget and retain batches and BS-S's belief samples; the starting model is the same. Two
    reference points: the starting model, and the model trained on the retain authors only (what perfect
    unlearning would look like).
    '''),
    code('''
    SEEDS = [0, 1, 2]
    for seed in SEEDS[1:]:
        t0 = time.time()
        for m in METHODS:
            runs[m, seed] = unlearn(m, seed, probe_every=0, eval_every=8, with_beliefs=False)
        print(f"seed {seed}: 4 runs in {time.time() - t0:.0f} s")
    CKPTS = [0, 8, 16, 24, 32, 40]  # checkpoints every seed has (seed 0 also has the ones in between)

    fig, ax = plt.subplots(figsize=(8.5, 5.6))
    for m in METHODS:
        for seed in SEEDS:  # thin lines: each seed
            ev_m = runs[m, seed]["evals"]
            ax.plot([ev_m[s]["mu"] for s in CKPTS], [ev_m[s]["fact_leak"] for s in CKPTS], color=COLORS[m], lw=0.6,
                    alpha=0.45)
        mu = np.mean([[runs[m, sd]["evals"][s]["mu"] for s in CKPTS] for sd in SEEDS], 0)
        leak = np.mean([[runs[m, sd]["evals"][s]["fact_leak"] for s in CKPTS] for sd in SEEDS], 0)
        ax.plot(mu, leak, "-o", color=COLORS[m], lw=2.2, ms=4,
                label=f"{NAMES[m]} (mean of 3 seeds; a dot every 8 steps)")
        ax.annotate("step 40", (mu[-1], leak[-1]), textcoords="offset points", xytext=(-8, -13), fontsize=8,
                    color=COLORS[m])
    ax.plot(start_eval["mu"], start_eval["fact_leak"], "k*", ms=13, label="starting model (step 0)")
    ax.plot(ref["mu"], ref["fact_leak"], "P", color="tab:purple", ms=11, label="retain-only model (the ideal)")
    ax.set_xlabel("retained utility: model utility on 64 retain questions (higher is better)")
    ax.set_ylabel("fact leak on the 64 forget questions (lower is better)")
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title("Leak against utility along each run. Notice: every method trades utility for forgetting;\\n"
                 "BS-S reaches the lowest leak, and at equal utility its curve lies below GA's and NPO's", fontsize=10)
    fig.tight_layout()
    plt.show()

    print(f"{'':>5} {'fact leak':>15} {'utility (mu)':>15} {'ROUGE-L':>15}   (step 40, mean +- sd over 3 seeds)")
    end = {}
    for m in METHODS:
        vals = {k: np.array([runs[m, sd]["evals"][40][k] for sd in SEEDS]) for k in ("fact_leak", "mu", "forget_rouge")}
        end[m] = {k: v.mean() for k, v in vals.items()}
        print(f"{NAMES[m]:>5} " + " ".join(f"{v.mean():8.3f} +- {v.std():.3f}" for v in vals.values())
              + f"   leak per seed: {vals['fact_leak'].round(3).tolist()}")
    for name, e in [("start", start_eval), ("retain-only", ref)]:
        print(f"{name:>11} {e['fact_leak']:8.3f}{'':9}{e['mu']:8.3f}{'':9}{e['forget_rouge']:8.3f}")
    claim("BS-S ends with a lower mean fact leak than GA, NPO and BS-T",
          all(end["bs_s"]["fact_leak"] < end[m]["fact_leak"] for m in ["ga", "npo", "bs_t"]))
    claim("BS-S ends with a lower leak than NPO in every seed",
          all(runs["bs_s", sd]["evals"][40]["fact_leak"] < runs["npo", sd]["evals"][40]["fact_leak"] for sd in SEEDS))
    claim("BS-S ends with a retained utility at least as high as GA's and NPO's",
          all(end["bs_s"]["mu"] >= end[m]["mu"] - 0.005 for m in ["ga", "npo"]))
    # does utility dip and come back within a run? the largest rise after a checkpoint's low point, per method
    rebound = {m: max(max(runs[m, sd]["evals"][s]["mu"] for s in CKPTS[i:]) - runs[m, sd]["evals"][CKPTS[i - 1]]["mu"]
                      for sd in SEEDS for i in range(1, len(CKPTS))) for m in METHODS}
    print("largest recovery of utility after a checkpoint, over all seeds: "
          + ", ".join(f"{NAMES[m]} {v:+.3f}" for m, v in rebound.items()))
    mean_at = lambda m, s, k: np.mean([runs[m, sd]["evals"][s][k] for sd in SEEDS])
    claim("at every checkpoint after the start, BS-S's mean leak is below GA's and NPO's, at no lower utility",
          all(mean_at("bs_s", s, "fact_leak") < mean_at(m, s, "fact_leak") and
              mean_at("bs_s", s, "mu") >= mean_at(m, s, "mu") - 0.005 for s in CKPTS[1:] for m in ["ga", "npo"]))
    claim("BS-S's leak varies the most across seeds",
          all(np.std([runs["bs_s", sd]["evals"][40]["fact_leak"] for sd in SEEDS]) >
              np.std([runs[m, sd]["evals"][40]["fact_leak"] for sd in SEEDS]) for m in ["ga", "npo", "bs_t"]))
    claim("utility falls almost monotonically: no run recovers more than 0.01", max(rebound.values()) < 0.01)
    print(f"\\nthis notebook ran in {time.time() - t_start:.0f} s")
    '''),
    md('''
    **What the embedded example shows, plainly.**

    * Every method trades utility for forgetting, and none comes near the retain-only model, which leaks
      almost nothing at a *higher* utility than the starting model. Forty steps of any of these objectives
      remove the target's wording far more than the fact.
    * BS-S is the best of the four here: at the end of the run it leaks the least, in every seed, without
      losing more utility than GA or NPO, and along the way its curve lies below theirs. Its seeds also
      differ the most, since its belief samples change with the seed. The gap to the ideal is still larger
      than the gap to NPO. That fits the paper's own modest margin at 1B (TOFU forget10, Llama-3.2-1B:
      Agg 0.61 for BS-S against 0.58 for NPO).
    * BS-T does not beat GA here, and section 1 says why: with the default $\\lambda = 0.2$ and temperature 1
      its gradient at each position is GA's scaled by 0.8, so it acts as GA with a lighter forget term.
    * GA and NPO are nearly the same run (section 2 says why).
    * The utility here falls almost monotonically (the largest recovery printed above is under 0.01), so
      on this model the end of the run does not hide a dip; the curve still shows what a single number
      hides: how much utility each method spends per unit of forgetting.

    Caveats: one tiny model on templated data, one learning rate (the repository's default, 3e-4), 40 steps,
    three seeds that share a starting model, and a fact-leak count that only works because the facts are
    single entities. The starting model matters: while writing this notebook we also ran it on a second toy
    model, built by the same recipe but with one CPU thread instead of two (so numerically a slightly
    different model). There the ranking held (mean leak at step 40 over 3 seeds: BS-S 0.48, GA 0.61,
    NPO 0.62, BS-T 0.67, BS-S lower than NPO in every seed), but two finer points did not: BS-S no longer
    lowered the likely beliefs more than GA did, and its curve was not below the others at every checkpoint.
    This is a microscope for the mechanism, not a benchmark.

    Next: `02_walkthrough.ipynb` goes through `bs_unlearn.py` section by section.
    '''),
]


# -----------------------------------------------------------------------------------------------------
# 02: bs_unlearn.py, section by section

NB02 = [
    md('''
    # A walkthrough of `bs_unlearn.py`

    ''' + BADGE.format(name="02_walkthrough.ipynb") + '''

    `bs_unlearn.py` is one file meant to be read top to bottom: config, data, the log-prob helper, the four
    objectives of *LLM Unlearning with LLM Beliefs* (Li et al., ICLR 2026,
    [arXiv 2510.19422](https://arxiv.org/abs/2510.19422)), belief sampling, and the training loop. This notebook
    follows the same order. Each equation is followed by the function that implements it and by a sanity
    check that prints the value you should expect. At the end, a short training run and the evaluation table
    of `eval.py`. It runs on a CPU in about a minute; `01_squeezing_effect.ipynb` is the companion that
    looks at *why* the method exists.
    '''),
    SETUP,
    code(IMPORTS),
    md('''
    ## 1. Config

    `bs.get_args(argv)` is the command line of `python bs_unlearn.py`, as a function: every flag has a default
    that runs the embedded example on a CPU. A notebook passes a list of strings where a shell would pass
    arguments.
    '''),
    code('''
    args = bs.get_args([])
    for group, keys in [("what and from where", ["method", "model", "data", "forget_split"]),
                        ("optimisation", ["epochs", "batch_size", "grad_accum", "lr", "warmup_epochs", "weight_decay"]),
                        ("loss weights", ["gamma", "alpha", "retain_loss"]),
                        ("objectives", ["npo_beta", "bst_topk", "bst_lambda", "bst_temp", "bss_lambda", "bss_base",
                                        "bss_n", "bss_temp"])]:
        print(f"{group:>20}: " + ", ".join(f"{k}={getattr(args, k)}" for k in keys))
    other = bs.get_args(["--method", "ga", "--lr", "1e-4"])
    print(f"\\nthe same, asking for GA at a lower learning rate: method={other.method}, lr={other.lr}")
    '''),
    md('''
    ## 2. Data

    The embedded example generates TOFU-shaped data: 80 fictitious authors, 8 facts each (birthplace, birth
    year, genre, a book, the parents' jobs, an award, a home town). Every fact has a key entity (`fact`), three
    phrasings the model is trained on (`train_answers`; `answer` is the first and is trained twice as often as
    the others, so it is the model's favourite), one phrasing it never sees (`paraphrased_answer`), and three
    false versions (`perturbed_answer`) for the truth ratio. `split_toy` makes the forget set from the last
    10% of the authors, as TOFU's `forget10` does.
    '''),
    code('''
    rows = toy_world.make_toy_data()
    forget_rows, retain_rows = toy_world.split_toy(rows, "forget10")
    print(f"{len(rows)} rows: {len(forget_rows)} to forget (authors {forget_rows[0]['author']}-"
          f"{forget_rows[-1]['author']}), {len(retain_rows)} to retain; fields: {sorted(rows[0])}\\n")
    row = forget_rows[0]
    for k in ["question", "answer", "train_answers", "paraphrased_answer", "perturbed_answer", "fact", "field"]:
        print(f"{k:>19}: {row[k]}")
    '''),
    md('''
    ## 3. The model, the tokenizer, and one encoded example

    `toy_world.ensure_toy_models` builds two small Llama models once and caches them: **full**, trained on all 640
    facts (the model we unlearn from), and **retain90**, trained on the retain authors only (the model that
    never saw the forget set: what perfect unlearning should look like). The tokenizer is word-level, so every
    token below is a word or a punctuation mark.

    `bs.encode` joins prompt, answer and EOS, and sets the labels of the prompt to -100 so that only the answer
    is scored. `bs.collate` pads a batch on the right, builds the attention mask from the lengths (never from
    `ids != pad`, which would hide a real EOS in models that pad with EOS), and counts positions over real
    tokens only.
    '''),
    code('''
    e = bs.encode(tok, row["question"], row["answer"])
    print(f"prompt: {tok.decode(e['input_ids'][:e['prompt_len']])!r}")
    print("token  -> label (-100: not scored)")
    for i, l in zip(e["input_ids"], e["labels"]):
        print(f"   {tok.decode([i]):>10} -> {l if l == -100 else tok.decode([l])}")
    batch = bs.collate([e, bs.encode(tok, retain_rows[0]["question"], retain_rows[0]["answer"])], tok.pad_token_id)
    print({k: tuple(v.shape) for k, v in batch.items()}, "| attention mask row sums:",
          batch["attention_mask"].sum(-1).tolist())

    # sanity: the starting model has memorised its training answers
    targets = [bs.encode(tok, r["question"], r["answer"]) for r in rows]
    s = bs.score(base, tok, targets)
    acc = s["n_correct"].sum().item() / s["n_tokens"].sum().item()
    print(f"\\nanswer-token accuracy of the starting model on all 640 target answers: {acc:.1%} (expected: above 95%)")
    greedy = bs.generate(base, tok, [e["input_ids"][:e["prompt_len"]]], 32)[0][0]
    print(f"its greedy answer to {row['question']!r}: {tok.decode(greedy, skip_special_tokens=True)!r}")
    claim("the starting model answers over 95% of answer tokens right", acc > 0.95)
    '''),
    md('''
    ## 4. Log-probs: the one place that shifts and masks

    Every objective is written on sequence log-probabilities:

    $$\\log \\pi_\\theta(y \\mid x) = \\sum_i \\log \\pi_\\theta(y_i \\mid x, y_{<i}).$$

    `bs.token_logps(logits, labels)` shifts once (the logits at position $t$ predict the token at $t + 1$),
    takes the log-softmax in fp32, and leaves 0 wherever the label is -100; `bs.sequence_logps` sums over the
    answer. The check below recomputes the same number by hand, position by position.
    '''),
    code('''
    batch = bs.collate(targets[:4], tok.pad_token_id)
    with torch.no_grad():
        logits = bs.forward(base, batch).float().cpu()  # (B, T, V); on the CPU, next to the labels
    policy_logps = bs.sequence_logps(logits, batch["labels"])  # (B,)
    by_hand = torch.tensor([sum(logits[b, t].log_softmax(-1)[batch["labels"][b, t + 1]].item()
                                for t in range(logits.shape[1] - 1) if batch["labels"][b, t + 1] != -100)
                            for b in range(4)])
    print("bs.sequence_logps:", policy_logps.numpy().round(4))
    print("by hand:          ", by_hand.numpy().round(4))
    claim("sequence_logps matches the hand computation", torch.allclose(policy_logps, by_hand, atol=1e-4))
    '''),
    md('''
    ## 5. The objectives

    Each objective is a small pure function of tensors, and every one is **minimised**. A run adds a retain
    term: $L = \\gamma\\, L_{\\text{forget}} + \\alpha\\, L_{\\text{retain}}$, with $\\gamma = \\alpha = 1$ and
    $L_{\\text{retain}}$ the NLL of a retain batch. Below they are evaluated on 4 forget examples, at the
    starting model.

    ### 5.1 GA (Eq. 1)

    $$L_{\\text{GA}} = \\mathbb{E}\\left[\\log \\pi_\\theta(y_u \\mid x_u)\\right]$$

    Minimising the log-probability of the forget answers is gradient *ascent* on their likelihood. It has no
    floor: the loss can go to $-\\infty$, which is why GA runs tend to break the model.
    '''),
    code('''
    ga = bs.ga_loss(policy_logps)
    nll = bs.nll_loss(logits, batch["labels"])
    print(f"L_GA = {ga:.4f}   (the mean summed log-prob of the 4 answers; the NLL is {nll:.4f})")
    claim("GA's loss is the negative NLL", torch.isclose(ga, -nll))
    '''),
    md('''
    ### 5.2 NPO (Eq. 3)

    $$L_{\\text{NPO}} = \\frac{2}{\\beta}\\, \\mathbb{E}\\left[\\log\\left(1 + \\left(\\frac{\\pi_\\theta(y_u \\mid x_u)}
    {\\pi_o(y_u \\mid x_u)}\\right)^{\\beta}\\right)\\right]
    = -\\frac{2}{\\beta}\\, \\mathbb{E}\\left[\\log \\sigma\\big(-\\beta\\,(\\log \\pi_\\theta - \\log \\pi_o)\\big)\\right]$$

    $\\pi_o$ is the frozen starting model. Its log-probs never change, so `bs.attach_ref_logps` computes them
    once and stores them on the examples (`ref_logp`). At the start $\\pi_\\theta = \\pi_o$, so the loss is
    $(2/\\beta) \\ln 2$, which is 13.8629 for $\\beta = 0.1$. Unlike GA it is bounded below by 0, and its gradient
    is GA's times the weight $2\\sigma(\\beta \\Delta)$, $\\Delta = \\log \\pi_\\theta - \\log \\pi_o$: 1 at the
    start, fading as the answer is forgotten.
    '''),
    code('''
    examples = [bs.encode(tok, r["question"], r["answer"]) for r in forget_rows[:4]]  # 4 forget examples
    bs.attach_ref_logps(base, tok, examples)
    batch = bs.collate(examples, tok.pad_token_id)
    with torch.no_grad():
        policy_logps = bs.sequence_logps(bs.forward(base, batch).float().cpu(), batch["labels"])
    beta = args.npo_beta
    npo = bs.npo_loss(policy_logps, batch["ref_logps"], beta)
    print(f"L_NPO at the start = {npo:.4f}; expected (2/beta) ln 2 = {2 / beta * np.log(2):.4f}")
    claim("NPO starts at (2/beta) ln 2", abs(npo.item() - 2 / beta * np.log(2)) < 1e-4)
    for delta in [0.0, -5.0, -20.0, -50.0]:  # the policy's log-prob this far below the reference's
        lp = (batch["ref_logps"] + delta).requires_grad_(True)
        loss = bs.npo_loss(lp, batch["ref_logps"], beta)
        loss.backward()
        weight = lp.grad[0].item() * len(lp)  # d loss / d log-prob, relative to GA's (which is 1 per example)
        print(f"   log-ratio {delta:6.1f}: L_NPO = {loss.item():7.4f}   gradient weight vs GA {weight:.3f}"
              f"   (2 sigma(beta delta) = {2 * torch.sigmoid(torch.tensor(beta * delta)).item():.3f})")
    '''),
    md('''
    ### 5.3 BS-T (Eqs. 5-6): bootstrapping at the token level

    At every answer position $i$, teacher-forced on the target, take the model's own top-$k$ next-token
    distribution, renormalised over those $k$ tokens and detached: $q_i$. The soft target mixes it with the
    answer's token:

    $$t_i = \\lambda\\, q_i + (1 - \\lambda)\\, \\mathrm{onehot}(y_i), \\qquad
    L_{\\text{BS-T}} = \\mathbb{E}\\left[\\sum_i \\left\\langle t_i,\\, \\log \\pi_\\theta(\\cdot \\mid x_u, y_{<i}) \\right\\rangle\\right]$$

    so the loss pushes down the model's likely next tokens along with the answer's. Defaults $k = 20$,
    $\\lambda = 0.2$. `bs.bst_targets` returns $t_i$ sparsely (the $k$ token ids and the label, with their
    weights); `bs.bst_loss` is the loss. Two checks: the weights sum to 1 at every position, and with
    $\\lambda = 0$ the loss is exactly GA's. (Notebook 01, section 1, shows a consequence worth knowing: at
    temperature 1 its gradient on the logits is $(1 - \\lambda)$ times GA's.)
    '''),
    code('''
    with torch.no_grad():
        logits = bs.forward(base, batch).float().cpu()
    idx, w = bs.bst_targets(logits, batch["labels"], args.bst_topk, args.bst_lambda)  # (B, T-1, k+1) each
    answer = batch["labels"][:, 1:] != -100
    print("soft-target weights sum to 1 at every answer position:", torch.allclose(w.sum(-1)[answer], torch.tensor(1.0)))
    # the soft target where the model hesitates most: the answer position with the least mass on the label
    lab = batch["labels"][0, 1:]
    p_label = logits[0, :-1].softmax(-1).gather(-1, lab.clamp(min=0)[:, None])[:, 0]
    i = int(torch.where(answer[0], p_label, torch.tensor(2.0)).argmin())
    print(f"\\nBS-T's soft target for {forget_rows[0]['question']!r} after the answer's first words "
          f"'{tok.decode(batch['input_ids'][0, examples[0]['prompt_len']:i + 1])} ...' (the target continues with "
          f"'{tok.decode([lab[i]])}'):")
    merged = {}
    for j, wt in zip(idx[0, i].tolist(), w[0, i].tolist()):  # the label appears twice: in the top k and on its own
        merged[j] = merged.get(j, 0) + wt
    for j, wt in sorted(merged.items(), key=lambda kv: -kv[1])[:5]:
        print(f"   {tok.decode([j]):>10}: {wt:.3f}")
    bst0 = bs.bst_loss(logits, batch["labels"], args.bst_topk, lam=0.0)
    ga = bs.ga_loss(bs.sequence_logps(logits, batch["labels"]))
    print(f"\\nL_BS-T with lambda = 0: {bst0:.4f}; L_GA: {ga:.4f}")
    bst = bs.bst_loss(logits, batch["labels"], args.bst_topk, args.bst_lambda)
    print(f"L_BS-T with lambda = {args.bst_lambda}: {bst:.4f}")
    claim("BS-T with lambda = 0 is exactly GA", torch.isclose(bst0, ga, atol=1e-5))
    '''),
    md('''
    ### 5.4 BS-S (Eq. 7): bootstrapping at the sequence level

    For every forget prompt, sample $N$ answers from the model itself, its *beliefs* $\\hat y_j$, and train on
    both the targets and the beliefs:

    $$L_{\\text{BS-S}} = (1 - \\lambda)\\, L(D_u) + \\lambda\\, \\frac{1}{N} \\sum_j L(\\hat D_{u,j})$$

    with $L$ a base loss: BS-T by default (the paper's best), $N = 3$, $\\lambda = 0.5$, temperature 1, sampled
    once from the starting model. `bs.sample_beliefs` keeps the $N$ samples *per forget example* (the public
    code reused the first batch's samples for every batch). `bs.bss_loss` is the weighted sum; the training
    loop computes the same sum micro-batch by micro-batch, so memory does not grow with $N$.
    '''),
    code('''
    bss_args = bs.get_args(["--method", "bs_s"])
    forget_ex = [bs.encode(tok, r["question"], r["answer"]) for r in forget_rows]
    with quiet():
        beliefs = bs.sample_beliefs(base, tok, forget_ex, bss_args)
    for q in [0, 9, 18]:
        print(f"{forget_rows[q]['question']}\\n   target: {forget_rows[q]['answer']}")
        for b in beliefs[q]:
            print(f"   belief: {tok.decode(b['input_ids'][b['prompt_len']:], skip_special_tokens=True)}")
    base_loss = bs.FORGET_LOSSES[bss_args.bss_base]  # BS-S's base loss: BS-T
    t_batch = bs.collate(forget_ex[:4], tok.pad_token_id)
    b_batch = bs.collate([b for bb in beliefs[:4] for b in bb], tok.pad_token_id)
    with torch.no_grad():
        target_loss = base_loss(bs.forward(base, t_batch).float().cpu(), t_batch, bss_args)
        belief_loss = base_loss(bs.forward(base, b_batch).float().cpu(), b_batch, bss_args)
    print(f"\\nbase loss (BS-T) on the 4 targets {target_loss:.4f}, "
          f"on their {len(b_batch['input_ids'])} beliefs {belief_loss:.4f}")
    for lam in [0.0, 0.5, 1.0]:
        print(f"   L_BS-S with lambda = {lam}: {bs.bss_loss(target_loss, belief_loss, lam):.4f}")
    claim("BS-S with lambda 0.5 is the mean of the two terms",
          torch.isclose(bs.bss_loss(target_loss, belief_loss, 0.5), (target_loss + belief_loss) / 2))
    '''),
    md('''
    ### 5.5 The retain term

    The default is the NLL of a retain batch (`bs.nll_loss`). The alternative, `--retain_loss kl`, is
    $\\mathrm{KL}(\\pi_o \\,\\|\\, \\pi_\\theta)$ on the retain answers, masked to the answer tokens (the public code
    also counted prompt and padding). At the start it is 0, since the model is its own reference. The methods
    look up their forget term in one table, `bs.FORGET_LOSSES`.
    '''),
    code('''
    r_batch = bs.collate([bs.encode(tok, r["question"], r["answer"]) for r in retain_rows[:8]], tok.pad_token_id)
    with torch.no_grad():
        r_logits = bs.forward(base, r_batch).float().cpu()
    print(f"retain NLL on 8 retain answers: {bs.nll_loss(r_logits, r_batch['labels']):.4f} nats per answer")
    kl0 = bs.kl_retain_loss(r_logits, r_logits, r_batch["labels"])
    print(f"KL(pi_o || pi_theta) with pi_theta = pi_o: {kl0:.6f} (expected 0)")
    print("forget terms by method:", list(bs.FORGET_LOSSES), "(and bs_s, which reuses its base's entry)")
    claim("the KL retain term is 0 at the start", abs(kl0.item()) < 1e-6)
    '''),
    md('''
    ## 6. A short training run

    `bs.train(model, tok, forget_ex, retain_ex, args)` runs AdamW with a linear warmup and decay. Each step
    pairs a forget batch (for BS-S: the targets, then their beliefs in micro-batches) with a retain batch, and
    logs the two terms separately: one line per step on stdout, the same numbers as JSON lines in `log_path`.
    Once an epoch it prints the greedy answer to one forget and one retain question. Here is BS-S at the
    defaults: 10 epochs of 4 steps.
    '''),
    code('''
    import json, tempfile

    def unlearn(method, log_path=None, show=False):
        """A fresh copy of the starting model, unlearned with bs.train at the defaults."""
        model = copy.deepcopy(base)
        run_args = bs.get_args(["--method", method])
        f_ex = [dict(bs.encode(tok, r["question"], r["answer"]), question=r["question"]) for r in forget_rows]
        r_ex = [dict(bs.encode(tok, r["question"], r["answer"]), question=r["question"]) for r in retain_rows]
        if method == "npo":
            bs.attach_ref_logps(model, tok, f_ex)
        with contextlib.nullcontext() if show else quiet():
            bs.train(model, tok, f_ex, r_ex, run_args, log_path=log_path)
        return model

    log_path = os.path.join(tempfile.mkdtemp(), "log.jsonl")
    t0 = time.time()
    models = {"bs_s": unlearn("bs_s", log_path, show=True)}
    print(f"({time.time() - t0:.0f} s)")
    '''),
    code('''
    log = [json.loads(line) for line in open(log_path)]
    print("one line of log.jsonl:", log[-1])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    steps = [r["step"] for r in log]
    axes[0].plot(steps, [r["forget"] for r in log], color="tab:green", label="forget term (BS-S, base BS-T)")
    axes[0].set(xlabel="optimizer step", ylabel="loss (summed over answer tokens)",
                title="forget term: falls without a floor")
    axes[1].plot(steps, [r["retain"] for r in log], color="tab:blue", label="retain term (NLL)")
    axes[1].set(xlabel="optimizer step", ylabel="NLL per retain answer (nats)",
                title="retain term: pulled up by the forget term")
    axes[2].plot(steps, [r["lr"] for r in log], color="black", label="learning rate")
    axes[2].set(xlabel="optimizer step", ylabel="learning rate", title="schedule: 1 epoch of warmup, then linear decay")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle("BS-S's log.jsonl. Notice: the forget term keeps falling while the retain NLL drifts up and "
                 "becomes noisier: the cost of forgetting.", fontsize=11)
    fig.tight_layout()
    plt.show()
    '''),
    md('''
    ## 7. The evaluation table

    `eval.py` scores any in-memory model: `evaluate(model, tok, data, beliefs)`. Below, the same table that
    `python eval.py runs/ga runs/npo runs/bs_t runs/bs_s` prints, for the starting model, the retain-only model
    and the four methods at their defaults (the other three are trained quietly first, about half a minute).
    Forget quality (FQ) compares each model's forget-set truth ratios with the retain-only model's, so the
    summaries are made once that model has been scored, as `eval.main` does.
    '''),
    code('''
    t0 = time.time()
    for m in ["ga", "npo", "bs_t"]:
        models[m] = unlearn(m)
    models = {m: models[m] for m in ["ga", "npo", "bs_t", "bs_s"]}
    print(f"GA, NPO and BS-T trained in {time.time() - t0:.0f} s")

    data = ev.load_eval_data("toy", "forget10")
    # eval.py's defaults, but greedy answers of at most 64 tokens: the toy model has 128 positions
    eval_args = ev.get_args(["--max_new_tokens", "64"])
    retrained, _ = bs.load_model(retain_path, device, dtype="float32")
    t0 = time.time()
    with quiet():
        eval_beliefs = ev.draw_beliefs(base, tok, data["forget"], eval_args.n_beliefs, eval_args.belief_temp,
                                       eval_args.seed)
        results = {name: ev.evaluate(model, tok, data, eval_beliefs, eval_args, name)
                   for name, model in [("base", base), ("retain", retrained)] + list(models.items())}
    retain_R = results["retain"]["splits"]["forget"]["rows"]["R"]
    summaries = {name: ev.summarise(res, retain_R) for name, res in results.items()}
    print(f"6 models evaluated on {len(data['forget'])} forget and {len(data['retain'])} retain questions "
          f"in {time.time() - t0:.0f} s\\n")
    print(ev.format_table(summaries))
    print(ev.LEGEND)
    unlearned = ["ga", "npo", "bs_t", "bs_s"]
    claim("BS-S has the lowest fact leak of the four methods",
          all(summaries["bs_s"]["fact_leak"] < summaries[m]["fact_leak"] for m in ["ga", "npo", "bs_t"]))
    claim("every method's forget ROUGE-L is within 0.1 of the retain-only model's, while its leak is over 0.4 above",
          all(abs(summaries[m]["forget_rouge"] - summaries["retain"]["forget_rouge"]) < 0.1 and
              summaries[m]["fact_leak"] > summaries["retain"]["fact_leak"] + 0.4 for m in unlearned))
    claim("every method's model utility is below the starting model's",
          all(summaries[m]["mu"] < summaries["base"]["mu"] for m in unlearned))
    claim("BS-S lowers the likely beliefs (dHigh) the most and has the highest Agg of the four",
          all(summaries["bs_s"]["d_high"] < summaries[m]["d_high"] and summaries["bs_s"]["agg"] > summaries[m]["agg"]
              for m in ["ga", "npo", "bs_t"]))
    claim("BS-T's Agg is below GA's", summaries["bs_t"]["agg"] < summaries["ga"]["agg"])
    print(f"\\nthis notebook ran in {time.time() - t_start:.0f} s")
    '''),
    md('''
    **Reading the table.** The two reference rows frame everything: `base` still knows every fact (Leak 1.0),
    `retain` never learned them (Leak near 0) and is the target to aim for. All four methods bring the
    forget-set ROUGE-L down to about the retain-only model's level, yet their answers still name the fact
    far more often than it does: the squeezing effect, seen in the columns `fROUGE` and `Leak`. BS-S leaks the
    least, and its likely beliefs (`dHigh`) fall furthest. `MU` shows what each method cost on the retain set.
    On the paper's summary score, `Agg`, BS-S comes first of the four and BS-T last, below GA: with the default
    $\\lambda = 0.2$, BS-T is GA with a lighter forget term (notebook 01, section 1). FQ, TOFU's forget
    quality, is a p-value over only 64 questions, so it moves in large steps. These are single runs with one
    seed; notebook 01 follows the same runs from the inside, over three seeds, and shows how much they move.
    '''),
]


# -----------------------------------------------------------------------------------------------------
# Build

NOTEBOOKS = {"01_squeezing_effect.ipynb": NB01, "02_walkthrough.ipynb": NB02}


def build(name, cells, execute=True, png_dir=None, timeout=1200):
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}, "colab": {"provenance": []}}
    path = os.path.join(HERE, name)
    if execute:
        from nbclient import NotebookClient
        t0 = time.time()
        try:
            NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                           resources={"metadata": {"path": HERE}}).execute()
        except Exception:
            nbformat.write(nb, path)  # the outputs so far, to see what went wrong
            raise
        print(f"{name}: executed in {time.time() - t0:.0f} s")
    nbformat.write(nb, path)
    if png_dir:
        os.makedirs(png_dir, exist_ok=True)
        for i, cell in enumerate(nb.cells):
            for j, out in enumerate(cell.get("outputs", [])):
                if "image/png" in out.get("data", {}):
                    with open(os.path.join(png_dir, f"{name[:2]}_cell{i:02d}_{j}.png"), "wb") as f:
                        f.write(base64.b64decode(out["data"]["image/png"]))
    return nb


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("only", nargs="*", help="build only the notebooks whose file name contains one of these")
    p.add_argument("--no-execute", action="store_true", help="write the cells without running them")
    p.add_argument("--png_dir", default=None, help="also save every plot as a PNG here")
    args = p.parse_args(argv)
    for name, cells in NOTEBOOKS.items():
        if not args.only or any(o in name for o in args.only):
            build(name, cells, not args.no_execute, args.png_dir)


if __name__ == "__main__":
    sys.exit(main())
