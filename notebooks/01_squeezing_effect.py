# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The squeezing effect, seen on a small model
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/bs-unlearn/bs-unlearn/blob/main/notebooks/01_squeezing_effect.ipynb)
#
# *LLM Unlearning with LLM Beliefs* (Li et al., ICLR 2026, [arXiv 2510.19422](https://arxiv.org/abs/2510.19422))
# starts from one observation: when gradient ascent (GA) or NPO lowers the probability of an answer the model
# should forget, the probability does not vanish. It moves, mostly into the model's *own* other ways of saying
# the same thing. The answer's probability, its ROUGE score and its truth ratio all drop, and the model still
# states the fact, in other words. The paper calls this the **squeezing effect** and proposes bootstrapping
# (BS): push down the model's beliefs too, its top next tokens (**BS-T**) or its own sampled answers
# (**BS-S**).
#
# This notebook looks at the effect on the repository's embedded example: a 0.25M-parameter Llama that has
# memorised 640 facts about 80 fictitious authors, each fact trained in three phrasings, and is asked to
# forget the last 8 authors (64 questions). Every result is measured on three seeds: three starting models,
# built by the same recipe with seeds 0, 1 and 2, each unlearned with the same seed. It runs on a CPU in
# about a minute and a half, plus about three minutes once to build the toy models of seeds 1 and 2.
#
# 1. One softmax, one gradient step: the effect in its simplest form.
# 2. The toy model: where the probability of a forgotten answer goes, position by position.
# 3. The paper's Fig. 2 on the toy model: the target against the model's likely, middling and unlikely answers.
# 4. Why the usual metrics mislead: ROUGE-L and truth ratio against a direct fact-leak count.
# 5. The honest comparison: leak against retained utility along each run.
#
# All the code that trains and measures lives in `bs_unlearn.py` and `eval.py`; this notebook imports it.
# Every sentence below that rests on a number is checked by a `claim(...)` line in the cell that computes
# it, on all three seeds: it prints `claim holds` or `CLAIM FAILS`.

# %%
# Setup. In a clone of the repository (this notebook opened from notebooks/) it only finds the code.
# Anywhere else, Colab included, it fetches the repository and installs its requirements first.
import os, subprocess, sys

REPO_URL = "https://github.com/bs-unlearn/bs-unlearn"  # notebooks/build.py keeps this and the badge in step
if os.path.isfile(os.path.join("..", "bs_unlearn.py")):
    ROOT = os.path.abspath("..")
else:
    ROOT = os.path.abspath("bs-unlearn")
    if not os.path.isdir(ROOT):
        subprocess.run(["git", "clone", "--depth", "1", REPO_URL, ROOT], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", os.path.join(ROOT, "requirements.txt")],
                   check=True)
sys.path.insert(0, ROOT)

# %%
import copy, time
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import bs_unlearn as bs
import toy_world
import eval as ev  # the repository's eval.py (imported under another name: `eval` is also a builtin)
sys.path.insert(0, os.path.join(ROOT, "notebooks"))
from nb_common import COLORS, METHODS, NAMES, claim, show, toy_example  # shared by both notebooks

t_start = time.time()
CACHE = bs.get_args([]).cache_dir  # $BS_UNLEARN_CACHE, else ~/.cache/bs_unlearn
base, tok, forget_rows, retain_rows, device, full_path, retain_path = toy_example()


# %% [markdown]
# ## 1. One softmax, one gradient step
#
# Take one next-token distribution, $p = \mathrm{softmax}(z)$, and one token $y$. The whole effect is in one
# derivative:
#
# $$\frac{\partial \log p_y}{\partial z_j} = \mathbb{1}[j = y] - p_j .$$
#
# A **positive** step (fine-tuning on $y$, minimising $-\log p_y$) moves the logits along $+(e_y - p)$: $z_y$
# rises and every other logit falls by $\eta\, p_j$. A **negative** step (gradient ascent, minimising
# $\log p_y$: GA's Eq. 1, and NPO's direction too) moves them along $-(e_y - p)$: $z_y$ falls and every other
# logit *rises* by $\eta\, p_j$, **in proportion to the probability it already has**. The strongest
# competitor gains most; a token the model never considered gains almost nothing. Ren & Sutherland
# ("Learning Dynamics of LLM Finetuning", ICLR 2025, [arXiv 2407.10490](https://arxiv.org/abs/2407.10490))
# named this the squeezing effect of negative gradients.
#
# Below, a made-up but typical peaked distribution at a point where the toy model's phrasings part: after
# "Oona Falk ..." the target continues with *comes*, the model's other phrasings with *was* and *grew*, and
# there is a tail. One step of each kind, taken with the repository's own helpers on a one-token answer
# (`bs.sequence_logps` does the shift and the mask, exactly as in training).

# %%
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


def positive(logits, labels):
    """Fine-tuning: minimise -log p_y."""
    return bs.nll_loss(logits, labels)


def negative(logits, labels):
    """GA, Eq. 1: minimise log p_y."""
    return bs.ga_loss(bs.sequence_logps(logits, labels))


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

# %%
fig, axes = plt.subplots(2, 2, figsize=(10, 5.6), sharex=True)
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
            ax.set_xticks(x, [f"{w}\n(target)" if i == TARGET else w for i, w in enumerate(words)])
            ax.set_xlabel("next token")
gain = p_neg / p0
fig.suptitle("One gradient step on one softmax. Notice (right): ascent on 'comes' hands most of its mass to the "
             "runner-up\n'was'. The log scale shows why: the likelier a word was, the more it gains "
             f"(x{gain[BELIEF]:.1f} for 'was', x{gain[3:].min():.1f} to x{gain[3:].max():.1f} for the tail).",
             fontsize=11)
fig.tight_layout()
show(fig)

# %% [markdown]
# ### The same calculus for BS-T and BS-S
#
# Any forget loss of the form $\sum_j t_j \log p_j$ with a fixed soft target $t$ (summing to 1) has gradient
# $t - p$ on the logits, so one step changes $z_j$ by $\eta\,(p_j - t_j)$. A tail token has
# $p_j \approx t_j \approx 0$ and barely moves, so **a token gains on the tail whenever the target gives it
# less weight than the model does** ($p_j > t_j$).
#
# * GA: $t = e_y$. Every competitor gains, in proportion to $p_j$.
# * BS-T (Eqs. 5-6): $t = \lambda q + (1 - \lambda) e_y$, with $q$ the model's own top-$k$ distribution,
#   renormalised and detached. At temperature 1, $q_j = p_j / P_k$ with $P_k$ the top-$k$ mass, so when the top
#   $k$ hold nearly all the mass, $t - p = (1 - \lambda)(e_y - p)$: **BS-T's step at a position is GA's step
#   times $(1 - \lambda)$**. The cell below checks this with `bs.bst_loss`, on this softmax and on the real
#   answer positions of the three starting models (their toy models are built here on first use).
# * BS-S (Eq. 7) adds sampled answers. Where a sample leaves the target's path, it puts weight
#   $\lambda_{\text{bss}} \times$ (its share of the samples) on its token, and samples drawn from the model
#   have shares close to $p_j$, so there $t \approx (1 - \lambda_{\text{bss}})\,e_y + \lambda_{\text{bss}}\,p$
#   and $t - p \approx (1 - \lambda_{\text{bss}})(e_y - p)$: on average BS-S's step where the phrasings part
#   is GA's too, only shorter. What BS-S adds is *reach*: each sample goes on down its own phrasing
#   ("... was born in Leipzig") and the loss lowers that whole answer, which GA never touches directly.
#
# So on paper, no method reverses the squeeze where the phrasings part; BS-S should differ along the other
# phrasings. Section 2 measures both the place where the phrasings part and the fact itself.

# %%
SEEDS = [0, 1, 2]
starts = {0: (base, retain_path)}
for seed in SEEDS[1:]:  # built once each, on first use: about a minute per seed on a CPU
    full, retain = toy_world.ensure_toy_models(CACHE, "forget10", seed)
    starts[seed] = (bs.load_model(full, device, dtype="float32")[0], retain)

lam = 0.2  # BS-T's default --bst_lambda


def bst_small(logits, labels):
    """BS-T on the toy softmax, with k = V."""
    return bs.bst_loss(logits, labels, k=len(words), lam=lam)


def bst_default(logits, labels):
    """BS-T at the repository's defaults (k = 20)."""
    return bs.bst_loss(logits, labels, k=20, lam=lam)


print("toy softmax, k = V: BS-T gradient / GA gradient, logit by logit:",
      (grad_on_logits(bst_small) / grad_on_logits(negative)).numpy().round(4))

# the same on the toy models' real answer positions (V = 252 words, the default k = 20)
batch = bs.collate(bs.encode_rows(tok, forget_rows), tok.pad_token_id)
answer_pos = batch["labels"][:, 1:] != -100  # (B, T-1): the positions whose logits predict an answer token


def answer_grads(logits, loss_fn):
    """d loss / d logits at every answer position: (answer positions, V)."""
    logits = logits.clone().requires_grad_(True)
    loss_fn(logits, batch["labels"]).backward()
    return logits.grad[:, :-1][answer_pos]


ratios = {}
for seed, (model, _) in starts.items():
    with torch.no_grad():
        logits = bs.forward(model, batch).float().cpu()  # (B, T, V)
    topk_mass = F.softmax(logits[:, :-1], -1).topk(20, -1).values.sum(-1)[answer_pos]
    g_ga, g_bst = answer_grads(logits, negative), answer_grads(logits, bst_default)
    ratio = ((g_bst * g_ga).sum() / (g_ga ** 2).sum()).item()
    resid = ((g_bst - ratio * g_ga).norm() / g_bst.norm()).item()
    ratios[seed] = ratio, resid
    print(f"seed {seed}'s starting model, {int(answer_pos.sum())} answer positions: the top 20 of 252 words hold "
          f"at least {topk_mass.min():.3f} of the mass; BS-T gradient = {ratio:.4f} x GA's "
          f"(left over: {resid:.1e})")
claim("BS-T's gradient on the logits is (1 - lambda) = 0.8 times GA's, on all 3 starting models",
      all(abs(r - 0.8) < 0.01 and e < 0.01 for r, e in ratios.values()))

# %% [markdown]
# ## 2. The toy model: where the probability of a forgotten answer goes
#
# Now the real thing. We unlearn the 64 forget questions with each method at the repository's defaults
# (`bs.get_args`: lr 3e-4, 10 epochs of 4 steps, batch 16, a retain NLL term with weight 1), from fresh copies
# of each seed's starting model, with `--seed` set to the same seed (it orders the batches and draws BS-S's
# samples). To watch a run from the inside without changing `bs.train`, we register a PyTorch *optimizer
# step hook*: a function called after every optimizer step, which measures the model and puts it back in
# training mode. It draws no random numbers, so the runs are the ones `bs.train` makes on its own.
#
# We watch three places in every forget answer. The model learned three phrasings per fact, with the target
# phrasing seen three times as often as each of the others, so it hesitates exactly where the phrasings part: the
# **branch**. The other two places are the fact's key word, on the target's path and on the path of the
# model's favourite other phrasing (its **top belief**). At each place we also follow the starting model's
# three most likely *other* tokens there, its rivals.

# %%
def fact_position(example, fact):
    """Index of the logits that predict the fact's key word in an encoded answer (teacher-forced).
    The key word is the fact's first word after a leading article ('The Hollow Lantern' -> 'Hollow')."""
    words = tok(fact, add_special_tokens=False)["input_ids"]
    ids, start = example["input_ids"], example["prompt_len"]
    s = next(s for s in range(start, len(ids)) if ids[s:s + len(words)] == words)
    return s - 1 + (tok.decode(words[:1]).lower() == "the")


@torch.no_grad()
def next_token_probs(model, example):
    """The model's next-token distribution at every position of one encoded example: (T, V)."""
    return F.softmax(bs.forward(model, bs.collate([example], tok.pad_token_id))[0].float(), -1).cpu()


def key_positions(model, row):
    """The three places we watch, as (encoded answer, logits index, the token that answer has there):
    the branch (where the starting model most doubts the target's next word), the fact on the target,
    and the fact on the model's top belief (the other trained phrasing it finds most likely)."""
    target = bs.encode(tok, row["question"], row["answer"])
    others = [bs.encode(tok, row["question"], a) for a in row["train_answers"][1:]]
    belief = others[int(bs.score(model, tok, others)["logp"].argmax())]
    p, ids = next_token_probs(model, target), target["input_ids"]
    branch = max(range(target["prompt_len"] - 1, len(ids) - 1), key=lambda t: 1 - p[t, ids[t + 1]].item())
    places = [(target, branch), (target, fact_position(target, row["fact"])),
              (belief, fact_position(belief, row["fact"]))]
    return [(e, t, e["input_ids"][t + 1]) for e, t in places]


def top_rivals(model, places):
    """The model's 3 most likely *other* tokens at every place: the 'beliefs' at that position."""
    out = []
    for e, t, y in places:
        p = next_token_probs(model, e)[t]
        p[y] = 0
        out.append(p.topk(3).indices.tolist())
    return out


def prefix(e, t):
    """The answer's words up to the place t ('(its first word)' when the place is the answer's start)."""
    return tok.decode(e["input_ids"][e["prompt_len"]:t + 1]) or "(its first word)"


PLACES = ["branch: where the phrasings part", "the fact, on the target's path",
          "the fact, on the top belief's path"]
keys = {s: [key_positions(starts[s][0], r) for r in forget_rows] for s in SEEDS}  # 64 questions x 3 places
rivals = {s: [top_rivals(starts[s][0], places) for places in keys[s]] for s in SEEDS}
row = forget_rows[0]
print(f"for example, the first forget question: {row['question']}\ntarget:   {row['answer']}\n"
      f"the other two trained phrasings: {row['train_answers'][1:]}\n"
      f"never trained (held-out paraphrase): {row['paraphrased_answer']}\n\nits three places, seed 0:")
for (e, t, y), r, name in zip(keys[0][0], rivals[0][0], PLACES):
    print(f"   {name:<36} '{prefix(e, t)} ___'   token: '{tok.decode([y])}'   "
          f"the starting model's other top tokens: {[tok.decode([i]) for i in r]}")

# %% [markdown]
# The probe below runs after every second optimizer step: one forward pass over the 64 target answers and
# the 64 top beliefs, reading the probability of the token at each of the three places, of its three
# rivals, and of everything else. Every fourth step (once an epoch) it also runs `eval.evaluate` on the
# forget set and on 64 retain questions, which gives every metric used in sections 3 to 5. Twelve runs:
# four methods on three seeds, about a minute in all on 2 CPU cores.

# %%
from torch.optim.optimizer import register_optimizer_step_post_hook


def make_probe(keys, rivals):
    """A function of a model: (64 questions, 3 places, 5) = p(the answer's token), p(each of its 3 rivals),
    p(everything else), read in one forward pass over the 64 target answers and the 64 top beliefs."""
    n_q = len(keys)
    batch = bs.collate([places[0][0] for places in keys] + [places[2][0] for places in keys], tok.pad_token_id)
    idx_row = torch.tensor([[q, q, n_q + q] for q in range(n_q)])  # which sequence holds each place: (64, 3)
    idx_t = torch.tensor([[t for _, t, _ in places] for places in keys])  # (64, 3)
    idx_tok = torch.tensor([[[y] + r for (_, _, y), r in zip(places, rs)]
                            for places, rs in zip(keys, rivals)])  # (64, 3, 4): the token, then its 3 rivals

    @torch.no_grad()
    def probe(model):
        p = F.softmax(bs.forward(model, batch).float(), -1).cpu()  # (128, T, V)
        picked = p[idx_row, idx_t].gather(-1, idx_tok)  # (64, 3, 4)
        return torch.cat([picked, 1 - picked.sum(-1, keepdim=True)], -1)
    return probe


eval_data = dict(forget=forget_rows, retain=retain_rows[::9])  # every 9th retain question: 64, all 8 kinds of fact
# eval.py's defaults (geometric-mean truth ratio, 10 beliefs per question), but greedy answers of at most 64
# tokens: the toy model has 128 positions, and its answers are under 20 tokens when it still stops at all
eval_args = ev.get_args(["--max_new_tokens", "64"])


def evaluate(model, beliefs=None):
    """eval.py's numbers for one model ('summary'), plus its greedy forget answers and their ROUGE-L."""
    with bs.quiet():
        res = ev.evaluate(model, tok, eval_data, beliefs, eval_args)
    f = res["splits"]["forget"]["rows"]
    return dict(res["summary"], answers=f["answer"], rouge_rows=f["rouge"])


worlds = {}  # per seed: the starting model, its probe, its beliefs, and the two reference evaluations
for seed in SEEDS:
    model, retain = starts[seed]
    with bs.quiet():
        beliefs = ev.draw_beliefs(model, tok, forget_rows, eval_args.n_beliefs, eval_args.belief_temp, seed=seed)
    probe = make_probe(keys[seed], rivals[seed])
    worlds[seed] = dict(base=model, probe=probe, beliefs=beliefs, start_probe=probe(model),
                        start_eval=evaluate(model, beliefs),
                        ref=evaluate(bs.load_model(retain, device, dtype="float32")[0]))  # the retain-only model


def unlearn(method, seed, probe_every=2, eval_every=4):
    """Unlearn the forget set from a fresh copy of seed's starting model with bs.train at its defaults (and
    --seed seed), measuring it after every `probe_every` / `eval_every` optimizer steps."""
    w = worlds[seed]
    model = copy.deepcopy(w["base"])
    args = bs.get_args(["--method", method, "--seed", str(seed)])
    forget_ex, retain_ex = bs.encode_rows(tok, forget_rows), bs.encode_rows(tok, retain_rows)
    rec = dict(probe={0: w["start_probe"]}, evals={0: w["start_eval"]}, steps=0)

    def after_step(optimizer, *_):
        rec["steps"] += 1
        s = rec["steps"]
        if s % probe_every == 0:
            rec["probe"][s] = w["probe"](model)
        if s % eval_every == 0:
            rec["evals"][s] = evaluate(model, w["beliefs"])
        model.train()

    hook = register_optimizer_step_post_hook(after_step)
    try:
        with bs.quiet():
            bs.train(model, tok, forget_ex, retain_ex, args)
    finally:
        hook.remove()
    return rec


runs = {}
for seed in SEEDS:
    t0 = time.time()
    for m in METHODS:
        runs[m, seed] = unlearn(m, seed)
    print(f"seed {seed}: 4 runs in {time.time() - t0:.0f} s | fact leak at step 40: " + ", ".join(
        f"{NAMES[m]} {runs[m, seed]['evals'][40]['fact_leak']:.2f}" for m in METHODS))


def per_seed(fn):
    """fn(seed) for every seed, as an array."""
    return np.array([fn(s) for s in SEEDS], dtype=float)


def spread(v, fmt=".2f"):
    """'0.47, 0.62, 0.33 (mean 0.47 +- 0.12)': the values per seed, then their mean and standard deviation."""
    return ", ".join(f"{x:{fmt}}" for x in v) + f" (mean {v.mean():{fmt}} +- {v.std():{fmt.lstrip('+')}})"


# %% [markdown]
# The first figure follows one question. Questions differ, so we take a typical one: the question on which
# GA (seed 0) moves the median amount of probability off the target's word at the branch. Each panel stacks
# the next-token probability at one place over the 40 steps: the answer's own token at the bottom, then its
# three rivals, then everything else (grey).

# %%
drop = {s: (worlds[s]["start_probe"][:, 0, 0] - runs["ga", s]["probe"][40][:, 0, 0]).numpy() for s in SEEDS}
Q = int(np.argsort(drop[0])[len(drop[0]) // 2])  # the median question
row = forget_rows[Q]
print(f"the question we follow: {row['question']}\ntarget: {row['answer']}\n"
      f"the other two trained phrasings: {row['train_answers'][1:]}")
for (e, t, y), r, name in zip(keys[0][Q], rivals[0][Q], PLACES):
    print(f"   {name:<36} '{prefix(e, t)} ___'   token: '{tok.decode([y])}'   rivals: "
          f"{[tok.decode([i]) for i in r]}")
falls = per_seed(lambda s: (drop[s] > 0).mean())
print(f"share of the 64 questions on which GA lowers the target's word at the branch, per seed: {spread(falls)}")
claim("under GA the target's word at the branch loses probability on at least 70% of the questions, in every "
      "seed", falls.min() >= 0.7)

SHADES = [["#08306b", "#6baed6", "#9ecae1", "#c6dbef"], ["#67000d", "#fb6a4a", "#fc9272", "#fcbba1"],
          ["#00441b", "#74c476", "#a1d99b", "#c7e9c0"]]


def trajectory(method, q=None):
    """Probe steps and values, (3 places, 5 parts, steps): one question's in seed 0's run, or the mean over
    the 64 questions and the 3 seeds."""
    steps = sorted(runs[method, 0]["probe"])
    values = torch.stack([torch.stack([runs[method, s]["probe"][t] for t in steps], -1) for s in SEEDS])
    return steps, (values[0, q] if q is not None else values.mean((0, 1))).numpy()  # from (3, 64, 3, 5, S)


def mass_grid(q, title):
    """3 rows (places) x 4 columns (methods) of stacked next-token probability over the optimizer steps."""
    fig = plt.figure(figsize=(13, 8.4), layout="constrained")
    for r, sub in enumerate(fig.subfigures(3, 1)):
        axes = sub.subplots(1, 4, sharey=True)
        if q is not None:  # one question: the words themselves
            e, t, y = keys[0][q][r]
            sub.suptitle(f"{r + 1}. {PLACES[r]}: '{prefix(e, t)} ...'", fontsize=11, x=0.01, ha="left")
            labels = ([f"\u201c{tok.decode([y])}\u201d (the answer's token)"]
                      + [f"\u201c{tok.decode([i])}\u201d" for i in rivals[0][q][r]] + ["anything else"])
            colors = SHADES[r] + ["#d9d9d9"]
        else:  # the mean over questions: the rivals in one band
            sub.suptitle(f"{r + 1}. {PLACES[r]} (mean over 64 questions x 3 seeds)", fontsize=11, x=0.01,
                         ha="left")
            labels = ["the target's word" if r == 0 else "the fact",
                      "3 rival words (mostly other phrasings)" if r == 0 else "the 3 likeliest wrong facts",
                      "anything else"]
            colors = [SHADES[r][0], SHADES[r][2], "#d9d9d9"]
        for ax, m in zip(axes, METHODS):
            steps, v = trajectory(m, q)
            parts = v[r] if q is not None else [v[r, 0], v[r, 1:4].sum(0), v[r, 4]]
            ax.stackplot(steps, *parts, colors=colors, labels=labels)
            ax.set(xlim=(0, steps[-1]), ylim=(0, 1), title=NAMES[m], xlabel="optimizer step")
        axes[0].set_ylabel("next-token probability")
        axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=9)
    fig.suptitle(title, fontsize=11.5)
    show(fig)


mass_grid(Q, f"'{row['question']}' (seed 0): where the answer's probability goes, place by place.\nNotice row "
             "1, GA: the target's word loses its mass to its rivals, the other phrasings, not to 'anything else'.")
q_end, q_start = runs["ga", 0]["probe"][40][Q, 0].numpy(), worlds[0]["start_probe"][Q, 0].numpy()
claim("on this question, under GA, the rivals at the branch gain more than anything else does",
      q_end[1:4].sum() - q_start[1:4].sum() > q_end[4] - q_start[4])

# %% [markdown]
# Not every question looks like this: on some, the target's word at the branch even *gains* (the first
# forget question, about Oona Falk's birthplace, is one of them: in seed 0 under every method), because the
# model's weights are shared and unlearning the other 63 answers moves this one too. Hence the average
# below, after a look at what BS-S trains against. BS-S samples 3 answers per question from the starting
# model, and a model that gives its target phrasing about half the probability at the branch often samples
# the target itself; then the "belief" term is just more gradient ascent on the target.

# %%
first = [(runs[m, 0]["probe"][40][0, 0, 0] - worlds[0]["start_probe"][0, 0, 0]).item() for m in METHODS]
print("seed 0, the first forget question: change of the target's word at the branch by step 40: "
      + ", ".join(f"{NAMES[m]} {d:+.2f}" for m, d in zip(METHODS, first)))
claim("on the first forget question (seed 0), every method raises the target's word at the branch",
      min(first) > 0)
samples = {}
for seed in SEEDS:  # the same seed as the runs above, so the same samples as they trained on
    with bs.quiet():
        samples[seed] = bs.sample_beliefs(worlds[seed]["base"], tok, bs.encode_rows(tok, forget_rows),
                                          bs.get_args(["--method", "bs_s", "--seed", str(seed)]))
print(f"BS-S's 3 samples for '{row['question']}' (seed 0):")
for b in samples[0][Q]:
    print("   ", tok.decode(b["input_ids"][b["prompt_len"]:], skip_special_tokens=True))
targets = bs.encode_rows(tok, forget_rows)
copies = per_seed(lambda s: np.mean([b["input_ids"] == e["input_ids"] for e, bb in zip(targets, samples[s])
                                     for b in bb]))
print(f"share of the 192 samples that are the target answer itself, per seed: {spread(copies)}")
claim("between a fifth and a half of BS-S's samples are the target itself, in every seed",
      all(0.2 < c < 0.5 for c in copies))

# %% [markdown]
# The same picture averaged over all 64 forget questions and the three seeds (each question with its own
# three places and rivals; the rivals are summed into one band). At the branch the rivals are the other
# phrasings of the *same* fact, so mass moving there is the squeeze; at the fact, the rivals are *wrong*
# facts, so mass moving there is real forgetting.

# %%
mass_grid(None, "All 64 forget questions, 3 seeds. Notice row 1: every method moves the target word's mass "
                "into the other phrasings,\nBS-S least. Rows 2-3: the fact loses mass to wrong facts, under "
                "every method alike.")
end = {(m, s): runs[m, s]["probe"][40].mean(0).numpy() for m in METHODS for s in SEEDS}  # (3 places, 5)
start = {s: worlds[s]["start_probe"].mean(0).numpy() for s in SEEDS}
print("step 40, mean over the 64 questions, per seed (seeds 0, 1, 2):")
print(f"{'':>5} {'target word at branch':>22} {'rival phrasings there':>22} {'fact, target path':>18} "
      f"{'fact, belief path':>18}")
for name, v in [("start", [start[s] for s in SEEDS])] + [(NAMES[m], [end[m, s] for s in SEEDS]) for m in METHODS]:
    cols = [[a[0, 0] for a in v], [a[0, 1:4].sum() for a in v], [a[1, 0] for a in v], [a[2, 0] for a in v]]
    print(f"{name:>5} " + " ".join(f"{', '.join(f'{x:.2f}' for x in c):>{w}}"
                                   for c, w in zip(cols, [22, 22, 18, 18])))
claim("the starting models give the target's word about half the probability at the branch (0.35 to 0.65)",
      all(0.35 < start[s][0, 0] < 0.65 for s in SEEDS))
gain = {(m, s): (end[m, s][0, 1:4].sum() - start[s][0, 1:4].sum(), end[m, s][0, 4] - start[s][0, 4])
        for m in METHODS for s in SEEDS}
mean_gain = {m: np.mean([gain[m, s] for s in SEEDS], 0) for m in METHODS}  # (rivals, anything else)
print("mean gain over the seeds at the branch, rivals / anything else: "
      + ", ".join(f"{NAMES[m]} {g[0]:+.2f} / {g[1]:+.2f}" for m, g in mean_gain.items()))
claim("at the branch, under GA, NPO and BS-T the rival phrasings gain over twice as much as anything else, "
      "on average over the seeds", all(mean_gain[m][0] > 2 * mean_gain[m][1] for m in ["ga", "npo", "bs_t"]))
claim("under every method the rival phrasings end above their start (by over 0.03), in every seed",
      all(g_rivals > 0.03 for g_rivals, _ in gain.values()))
rivals_end = {m: np.mean([end[m, s][0, 1:4].sum() for s in SEEDS]) for m in METHODS}
claim("on average over the seeds, BS-S's rival phrasings end at least 0.05 below GA's, NPO's and BS-T's",
      all(rivals_end["bs_s"] < rivals_end[m] - 0.05 for m in ["ga", "npo", "bs_t"]))
claim("BS-S leaves the most mass on the target word at the branch, in every seed",
      all(end["bs_s", s][0, 0] > end[m, s][0, 0] for m in ["ga", "npo", "bs_t"] for s in SEEDS))
kept = {(m, s): end[m, s][1:, 0] / start[s][1:, 0] for m in METHODS for s in SEEDS}  # the fact, both paths
print("share of the fact's probability left at step 40 (lowest to highest, over the seeds and both paths): "
      + ", ".join(f"{NAMES[m]} {min(kept[m, s].min() for s in SEEDS):.2f}-"
                  f"{max(kept[m, s].max() for s in SEEDS):.2f}" for m in METHODS))
claim("every method leaves the fact between a quarter and 85% of its probability, on both paths, in every seed",
      all(0.25 < k.min() and k.max() < 0.85 for k in kept.values()))
fact_diff = {p: per_seed(lambda s: end["bs_s", s][p, 0] - end["ga", s][p, 0]) for p in (1, 2)}
print("BS-S minus GA, the fact's probability at step 40: "
      + "; ".join(f"{PLACES[p]}: {spread(d, '+.2f')}" for p, d in fact_diff.items()))
claim("at the fact, BS-S's mean over the seeds is within 0.1 of GA's, on both paths",
      all(abs(d.mean()) < 0.1 for d in fact_diff.values()))

# %% [markdown]
# **What this shows.** Where the phrasings part, GA, NPO and BS-T do what section 1 predicts: the target
# word's probability flows mostly into the model's other phrasings (on average over the seeds they gain over
# twice as much as "anything else"; a single seed can be less clear-cut). BS-T tracks GA (its gradient there
# is GA's times 0.8). NPO tracks GA too: its gradient is GA's times $2\sigma(\beta\,\Delta)$, with $\Delta$
# the drop in the target's log-probability, which is 1 at the start and still about 0.75 when the target has
# lost 5 nats ($\beta = 0.1$), and Adam rescales the update anyway. BS-S squeezes least at the branch: it
# leaves the most on the target's word, and since part of its loss lowers the other phrasings themselves,
# they gain less than under the other three (on average over the seeds). But under no method do the other
# phrasings lose ground at the branch: they all end above where they started.
#
# At the fact, the story is different: there the mass goes to wrong facts, so this part is real forgetting,
# and every method takes a good part of the fact's probability (between 15% and 75% of it, in every seed, on
# the target's path and on the top belief's). BS-S's reach down the other phrasings does not show here: at
# the fact it ends close to GA on average (within 0.1); whether a little above or a little below it changes
# with the seed, and with the machine.
#
# ## 3. The paper's Fig. 2 on the toy model
#
# The paper's Fig. 2 samples answers from the starting model, ranks them by likelihood into a **high** (top
# 20%), **mid** (20-60%) and **low** (60-100%) band, and plots the change in log-probability of each band
# and of the target over training. `eval.draw_beliefs` does the same with 10 samples per question (sampled
# rather than beam-searched; duplicates and the target itself dropped), and `eval.evaluate` reports each
# band's mean change in summed log-probability against the starting model (`d_high`, `d_mid`, `d_low`,
# `d_target`).

# %%
beliefs0 = worlds[0]["beliefs"]
n_band = {b: sum(s["band"] == b for s in beliefs0["samples"]) for b in ("high", "mid", "low")}
print(f"seed 0: {len(beliefs0['samples'])} distinct beliefs for 64 questions (high {n_band['high']}, mid "
      f"{n_band['mid']}, low {n_band['low']}); for example, for '{row['question']}':")
for s in sorted([s for s in beliefs0["samples"] if s["row"] == Q], key=lambda s: -s["base_logp"]):
    print(f"   {s['band']:>4}  log-prob {s['base_logp']:6.2f}  {s['text']}")

CKPTS = sorted(runs["ga", 0]["evals"])  # every 4 steps, 0 to 40


def curve(m, key, last=40):
    """Checkpoints up to `last`, and key's values there: (seeds, checkpoints)."""
    steps = [t for t in CKPTS if t <= last]
    return steps, np.array([[runs[m, s]["evals"][t][key] for t in steps] for s in SEEDS], dtype=float)


fig, axes = plt.subplots(2, 4, figsize=(13, 6.2), sharey="row")
series = [("d_target", "target answer", "black", "-"), ("d_high", "high band (top 20%)", "tab:red", "-"),
          ("d_mid", "mid band (20-60%)", "tab:purple", "--"), ("d_low", "low band (60-100%)", "tab:gray", ":")]
for col, m in enumerate(METHODS):
    for r, last in enumerate([40, 16]):  # the whole run, then its first 4 epochs up close
        ax = axes[r, col]
        for key, label, color, ls in series:
            steps, v = curve(m, key, last)
            if key in ("d_target", "d_high"):  # the range over the seeds, for the two curves that matter most
                ax.fill_between(steps, v.min(0), v.max(0), color=color, alpha=0.15, lw=0)
            ax.plot(steps, v.mean(0), ls, color=color, label=label, marker=".")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title(NAMES[m] + ("" if r == 0 else ": the first 16 steps"), fontsize=11)
        ax.set_xlabel("optimizer step")
    axes[1, col].set_ylim(-1.5, 0.3)
axes[0, 0].set_ylabel("change in summed log-prob\nvs the starting model (nats)")
axes[1, 0].set_ylabel("the same, zoomed in (nats)")
axes[0, -1].legend(loc="lower left", fontsize=8)
fig.suptitle("The paper's Fig. 2 on the toy model (lines: mean of 3 seeds; shading: their range). Notice: "
             "early on the likely answers\nrise a little while the target falls (GA, NPO, BS-T; zoom below); then "
             "everything falls. Under BS-S the bands follow the target closely.", fontsize=11)
fig.tight_layout()
show(fig)

early = {m: per_seed(lambda s: max(runs[m, s]["evals"][t]["d_high"] for t in CKPTS if t <= 8)) for m in METHODS}
gap = {m: per_seed(lambda s: runs[m, s]["evals"][40]["d_high"] - runs[m, s]["evals"][40]["d_target"])
       for m in METHODS}
for m in METHODS:
    e40 = {k: per_seed(lambda s: runs[m, s]["evals"][40][k]) for k in ("d_target", "d_high")}
    print(f"{NAMES[m]:>4}: high band's highest point in the first 8 steps {spread(early[m], '+.2f')}\n"
          f"      step 40: target {spread(e40['d_target'], '.1f')}, high band {spread(e40['d_high'], '.1f')};\n"
          f"      the target fell {spread(gap[m], '.1f')} nats more than the high band")
claim("under GA, NPO and BS-T the high band rises above its start in the first 8 steps, by under a nat, in "
      "every seed", all(early[m].min() > 0.01 and early[m].max() < 1 for m in ["ga", "npo", "bs_t"]))
claim("BS-S's high band rises less than GA's early on, in every seed", (early["bs_s"] < early["ga"]).all())
claim("by step 20 every band is below its start, under every method and seed",
      all(runs[m, s]["evals"][20][k] < 0 for m in METHODS for s in SEEDS for k in ("d_high", "d_mid", "d_low")))
claim("at step 40 the target has fallen more than its likely answers, by over half a nat, under every method "
      "and seed", all(g.min() > 0.5 for g in gap.values()))
claim("under BS-S that gap is less than 3/4 of GA's and of NPO's, in every seed",
      all((gap["bs_s"] < 3 / 4 * gap[m]).all() for m in ["ga", "npo"]))

# %% [markdown]
# **What this shows.** The paper's picture (the high band *rising* while GA and NPO push the target down)
# appears here only early and only a little: over the first two epochs the likely answers gain a fraction
# of a nat while the target falls. Then they fall too, and by step 20 every band is below where it started:
# everything the model says about these authors degrades. What remains of the squeeze is relative: under
# GA, NPO and BS-T the target ends well over half a nat further down than its likely rephrasings (the gaps
# are printed above). BS-S's likely answers barely rise, and then follow the target closely: its gap is
# under three quarters of GA's and NPO's in every seed. That is the paper's point made on the toy model, since
# answers like these are what BS-S trains against. Section 5 asks whether it also makes the fact go away.
#
# ## 4. Why the usual metrics mislead
#
# TOFU scores forgetting on the target answer: ROUGE-L recall of the greedy answer against the target, and
# the truth ratio ($\min(R, 1/R)$ with $R = p_{\text{perturbed}} / p_{\text{paraphrase}}$; 1 means the model
# can no longer tell the true answer from false ones). The toy data lets us count what actually matters
# directly: the **fact leak**, the share of forget questions whose greedy answer still contains the fact's key
# entity. All three come from the same `eval.evaluate` calls as above. The yardstick is the retain-only
# model, trained without the forget authors: it shares their names and sentence frames, so it scores about
# 0.4 ROUGE-L on the forget set without knowing a single fact.

# %%
fig, axes = plt.subplots(1, 4, figsize=(13, 3.9), sharey=True)
series = [("fact_leak", "fact leak (answers that still name the fact)", "black", "-", 2.2),
          ("forget_rouge", "ROUGE-L recall vs the target", "tab:blue", "--", 1.5),
          ("forget_tr", "truth ratio min(R, 1/R) (1 = can't tell)", "tab:purple", ":", 1.5)]
for ax, m in zip(axes, METHODS):
    for key, label, color, ls, lw in series:
        steps, v = curve(m, key)
        ax.fill_between(steps, v.min(0), v.max(0), color=color, alpha=0.12, lw=0)
        ax.plot(steps, v.mean(0), ls, color=color, lw=lw, label=label, marker=".")
        ax.axhline(np.mean([worlds[s]["ref"][key] for s in SEEDS]), color=color, lw=4, alpha=0.2)
    ax.set_title(NAMES[m], fontsize=12)
    ax.set_xlabel("optimizer step")
    ax.set_ylim(0, 1.05)
axes[0].plot([], [], color="gray", lw=4, alpha=0.3, label="pale bands: the retain-only model's level")
axes[0].set_ylabel("score on the 64 forget questions")
axes[0].legend(loc="lower left", fontsize=7.5)
fig.suptitle("ROUGE-L against the fact leak (mean of 3 seeds, shading their range). Notice: ROUGE-L drops to "
             "near the level of a model that\nnever saw these authors (pale blue band), while many answers "
             "still state the fact (black, far above its pale band).", fontsize=11)
fig.tight_layout()
show(fig)


def share_of_the_way(m, s, key):
    """How far step 40 has gone from the starting model (0) to the retain-only model (1) on `key`."""
    first, last, ref = runs[m, s]["evals"][0][key], runs[m, s]["evals"][40][key], worlds[s]["ref"][key]
    return (first - last) / (first - ref)


share = {(m, k): per_seed(lambda s: share_of_the_way(m, s, k)) for m in METHODS
         for k in ("forget_rouge", "fact_leak", "forget_tr")}
print("how far step 40 has gone from the starting model (0) to the retain-only model (1), per seed:")
for m in METHODS:
    print(f"   {NAMES[m]:>4}: ROUGE-L {spread(share[m, 'forget_rouge'])}\n"
          f"         fact leak {spread(share[m, 'fact_leak'])}\n"
          f"         truth ratio {spread(share[m, 'forget_tr'])}")
print("\nanswers at step 40 with ROUGE-L recall below 0.5 (the metric calls them mostly forgotten), "
      "over the 3 seeds:")
named_share = {}
for m in METHODS:
    low = named = 0
    for s in SEEDS:
        e = runs[m, s]["evals"][40]
        mine = [i for i, r in enumerate(e["rouge_rows"]) if r < 0.5]
        low += len(mine)
        named += sum(forget_rows[i]["fact"].lower() in e["answers"][i].lower() for i in mine)
    named_share[m] = named / low
    print(f"   {NAMES[m]:>4}: {low:3d} of 192, and {named:2d} of those ({named / low:.0%}) still state the fact")
e = runs["ga", 0]["evals"][40]
print("\nfor example, GA's answers at step 40, seed 0 (ROUGE-L recall | answer):")
shown = [i for i, r in enumerate(e["rouge_rows"])
         if r < 0.5 and forget_rows[i]["fact"].lower() in e["answers"][i].lower()]
for i in shown[:4]:
    print(f"   {e['rouge_rows'][i]:.2f} | {forget_rows[i]['question']} -> {e['answers'][i]}\n"
          f"          target: {forget_rows[i]['answer']}")
ref_rouge = per_seed(lambda s: worlds[s]["ref"]["forget_rouge"])
print(f"\nthe retain-only model's forget ROUGE-L, per seed: {spread(ref_rouge)}")
claim("the retain-only model scores about 0.4 ROUGE-L on the forget set (0.3 to 0.5), in every seed",
      ((0.3 < ref_rouge) & (ref_rouge < 0.5)).all())
claim("ROUGE-L goes most of the way to the retain-only model (over 60%), for every method and seed",
      all(share[m, "forget_rouge"].min() > 0.6 for m in METHODS))
claim("for every method and seed, ROUGE-L has gone further towards the retain-only model than the leak has",
      all((share[m, "forget_rouge"] > share[m, "fact_leak"]).all() for m in METHODS))
claim("for every method, over a fifth of the answers that ROUGE-L scores below 0.5 still state the fact",
      all(v > 0.2 for v in named_share.values()))
claim("the truth ratio goes between 20% and 80% of the way, for every method and seed",
      all(0.2 < share[m, "forget_tr"].min() and share[m, "forget_tr"].max() < 0.8 for m in METHODS))
tr_range = per_seed(lambda s: np.ptp([runs[m, s]["evals"][40]["forget_tr"] for m in METHODS]))
claim("within a seed, the four methods' truth ratios at step 40 differ by less than 0.08", tr_range.max() < 0.08)

# %% [markdown]
# **What this shows.** The greedy answers above are the squeezing effect in text: the model answers in one
# of its *other* phrasings, so ROUGE-L against the target phrasing is low, and the fact is still there.
# ROUGE-L goes most of the way to the retain-only model's score, while the fact leak, in every run,
# has gone a smaller share of the way. The truth ratio is not fooled in the same way: it moves only part of
# the way towards the retain-only model's level, which is the honest answer, but the four methods end so
# close on it that it barely tells them apart. Any score that reads the target's wording will over-report
# forgetting whenever the model knows other ways to say the same thing.
#
# ## 5. The honest comparison: a trade-off curve per method and seed
#
# End-of-run numbers are one point on a path, and a method that forgets more usually also damages more. So
# we plot the **fact leak** against the **retained utility** (`mu`, TOFU's model utility: the harmonic mean
# of Prob, ROUGE-L and truth ratio on the 64 retain questions) at every checkpoint of each run, one panel per
# seed, with the two reference points: the starting model, and the model trained on the retain authors only
# (what perfect unlearning would look like).

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 4.4), sharex=True, sharey=True)
for ax, s in zip(axes, SEEDS):
    for m in METHODS:
        ev_m = runs[m, s]["evals"]
        mu, leak = [ev_m[t]["mu"] for t in CKPTS], [ev_m[t]["fact_leak"] for t in CKPTS]
        ax.plot(mu, leak, "-o", color=COLORS[m], lw=1.6, ms=3, label=NAMES[m])
        ax.annotate("40", (mu[-1], leak[-1]), textcoords="offset points", xytext=(-4, -11), fontsize=8,
                    color=COLORS[m])
    w = worlds[s]
    ax.plot(w["start_eval"]["mu"], w["start_eval"]["fact_leak"], "k*", ms=12, label="starting model (step 0)")
    ax.plot(w["ref"]["mu"], w["ref"]["fact_leak"], "P", color="tab:purple", ms=10,
            label="retain-only model (the ideal)")
    ax.set_title(f"seed {s} (a dot every 4 steps)")
    ax.set_xlabel("retained utility (higher is better)")
axes[0].set_ylabel("fact leak on the 64 forget questions\n(lower is better)")
axes[0].legend(fontsize=8, loc="lower left")
fig.suptitle("Leak against utility along each run. Notice: within a seed the four methods follow similar "
             "paths, and end far\nfrom the retain-only model; the seed moves GA, NPO and BS-T more than the "
             "choice among them does.", fontsize=11)
fig.tight_layout()
show(fig)

final = {(m, k): per_seed(lambda s: runs[m, s]["evals"][40][k]) for m in METHODS for k in ("fact_leak", "mu")}
print(f"{'':>11} {'fact leak at step 40':>36} {'utility (mu) at step 40':>38}")
for m in METHODS:
    print(f"{NAMES[m]:>11} {spread(final[m, 'fact_leak']):>36} {spread(final[m, 'mu'], '.3f'):>38}")
for name, key in [("start", "start_eval"), ("retain-only", "ref")]:
    print(f"{name:>11} {spread(per_seed(lambda s: worlds[s][key]['fact_leak'])):>36} "
          f"{spread(per_seed(lambda s: worlds[s][key]['mu']), '.3f'):>38}")
diff = {m: final[m, "fact_leak"] - final["ga", "fact_leak"] for m in METHODS}
print("(seeds 0, 1, 2, then mean +- sd)\n\nleak minus GA's, seed by seed:")
for m in METHODS[1:]:
    print(f"   {NAMES[m]:>4} {spread(diff[m], '+.2f')}")
within = per_seed(lambda s: np.ptp([runs[m, s]["evals"][40]["fact_leak"] for m in METHODS]))
between = {m: np.ptp(final[m, "fact_leak"]) for m in METHODS}
print(f"largest gap between two methods within a seed: {within.max():.2f}; the smallest range of one method "
      f"over the seeds: {min(between.values()):.2f}")
GRADIENT_ASCENT_FAMILY = ["ga", "npo", "bs_t"]  # BS-S aside: its gap to them is what changes most with the seed
within_family = per_seed(lambda s: np.ptp([runs[m, s]["evals"][40]["fact_leak"] for m in GRADIENT_ASCENT_FAMILY]))
print(f"GA, NPO and BS-T alone: largest gap within a seed {within_family.max():.2f}; smallest range over the "
      f"seeds {min(between[m] for m in GRADIENT_ASCENT_FAMILY):.2f}")
rebound = {m: max(max(runs[m, s]["evals"][t]["mu"] for t in CKPTS[i:]) - runs[m, s]["evals"][CKPTS[i - 1]]["mu"]
                  for s in SEEDS for i in range(1, len(CKPTS))) for m in METHODS}
print("largest recovery of utility after a checkpoint, over all seeds: "
      + ", ".join(f"{NAMES[m]} {v:+.3f}" for m, v in rebound.items()))
start_mu, ref_leak = (per_seed(lambda s: worlds[s]["start_eval"]["mu"]),
                      per_seed(lambda s: worlds[s]["ref"]["fact_leak"]))
claim("every method ends below its starting utility, in every seed, with a leak above the retain-only "
      "model's by over 0.1 in every seed and by over 0.25 on average",
      all((final[m, "mu"] < start_mu).all() and (final[m, "fact_leak"] > ref_leak + 0.1).all() and
          (final[m, "fact_leak"] - ref_leak).mean() > 0.25 for m in METHODS))
claim("the seed moves GA, NPO and BS-T more than the choice among them: each of the three varies more over "
      "the seeds than any two of them differ within a seed",
      min(between[m] for m in GRADIENT_ASCENT_FAMILY) > within_family.max())
claim("every method's leak varies by over 0.1 across the seeds", min(between.values()) > 0.1)
claim("NPO ends within 0.1 of GA's leak and 0.03 of its utility, in every seed",
      (abs(diff["npo"]) < 0.1).all() and (abs(final["npo", "mu"] - final["ga", "mu"]) < 0.03).all())
claim("BS-T ends with a higher mean leak than GA (by over 0.03) and a higher mean utility (by over 0.005)",
      diff["bs_t"].mean() > 0.03 and (final["bs_t", "mu"] - final["ga", "mu"]).mean() > 0.005)
claim("BS-S's mean leak is within 0.1 of GA's: no clear winner", abs(diff["bs_s"].mean()) < 0.1)
claim("BS-S ends within 0.02 of GA's utility, in every seed",
      (abs(final["bs_s", "mu"] - final["ga", "mu"]) < 0.02).all())
claim("the retain-only model leaks under 0.15, at a higher utility than the starting model, in every seed",
      (ref_leak < 0.15).all() and (per_seed(lambda s: worlds[s]["ref"]["mu"]) > start_mu).all())
claim("utility falls almost monotonically: no run recovers more than 0.02", max(rebound.values()) < 0.02)
print(f"\nthis notebook ran in {time.time() - t_start:.0f} s")

# %% [markdown]
# **What the embedded example shows, plainly.**
#
# * The squeeze is real, and it is where section 1 says it is: where the phrasings part, every method hands
#   the target word's probability to the model's other phrasings, and ROUGE-L, which reads the target's
#   wording, reports more forgetting than the fact-leak count does.
# * The forgetting is real too, just slower: at the fact the probability goes to wrong facts, and the leak
#   falls as the run goes on. After 40 steps, though, every method still leaks much more than the
#   retain-only model (by over a quarter of the questions, on average), which leaks almost nothing at a
#   *higher* utility than the starting model, while every method has lost utility.
# * BS-S does what it is built to do at the level it works on: its likely answers fall nearly as fast as the
#   target (Fig. 2's gap shrinks to under three quarters of GA's), and it squeezes least at the branch. On this
#   model that does not clearly make the fact go away faster: its leak at the end is close to GA's on average
#   (within 0.1), at about the same utility, and whether it is a little lower or a little higher changes
#   with the seed and with the machine.
# * BS-T trails GA along the same path (on average a little more leak, a little more utility), and section
#   1 says why: with the default $\lambda = 0.2$ and temperature 1 its gradient at each position is GA's
#   scaled by 0.8, so it acts as GA with a lighter forget term. NPO is nearly GA (section 2 says why).
# * The seed (which starting model, which batch order, which samples) moves the leak a lot: every method's
#   leak ranges over more than 0.1 across the three seeds, and GA's, NPO's and BS-T's vary more over the
#   seeds than they differ from each other within one. Where BS-S lands among them changes with the seed,
#   and with the CPU. A single-seed table of these four methods, on this model, says little about their
#   ranking.
#
# That BS-S does not clearly win here is not at odds with the paper, whose margins are modest even at 1B
# parameters (TOFU forget10, Llama-3.2-1B: Agg 0.61 for BS-S against 0.58 for NPO). An earlier version of
# this notebook found BS-S leaking least: that was one starting model (an older build of the toy model, on
# an Intel CPU) and three training seeds. Float results of the toy model differ between CPU types, and the
# starting models with them, so your numbers will differ from the ones printed here. While writing this
# version we also ran it with PyTorch's AVX2 and plain (unvectorised) kernels on the same CPU, which build
# different toy models: on one, BS-S ended a little below GA in every seed; on the other, level with it on
# average. The sentences above are the ones that held on all three, each checked on three seeds with a
# margin.
#
# Caveats: one tiny model family on templated data, one learning rate (the repository's default, 3e-4),
# 40 steps, three seeds, and a fact-leak count that only works because the facts are single entities. This
# is a microscope for the mechanism, not a benchmark.
#
# Next: `02_walkthrough.ipynb` goes through `bs_unlearn.py` section by section.
