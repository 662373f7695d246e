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
# # A walkthrough of `bs_unlearn.py`
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/bs-unlearn/bs-unlearn/blob/main/notebooks/02_walkthrough.ipynb)
#
# `bs_unlearn.py` is one file meant to be read top to bottom: config, data, the log-prob helper, the four
# objectives of *LLM Unlearning with LLM Beliefs* (Li et al., ICLR 2026,
# [arXiv 2510.19422](https://arxiv.org/abs/2510.19422)), belief sampling, and the training loop. This notebook
# follows the same order. Each equation is followed by the function that implements it and by a sanity
# check that prints the value you should expect. At the end, a short training run and the evaluation table
# of `eval.py`, on three seeds. It runs on a CPU in about a minute (plus about three minutes once, if
# notebook 01 has not built the toy models of seeds 1 and 2 yet); `01_squeezing_effect.ipynb` is the
# companion that looks at *why* the method exists.

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
# ## 1. Config
#
# `bs.get_args(argv)` is the command line of `python bs_unlearn.py`, as a function: every flag has a default
# that runs the embedded example on a CPU. A notebook passes a list of strings where a shell would pass
# arguments.

# %%
args = bs.get_args([])
for group, names in [("what and from where", ["method", "model", "data", "forget_split"]),
                     ("optimisation", ["epochs", "batch_size", "grad_accum", "lr", "warmup_epochs",
                                       "weight_decay"]),
                     ("loss weights", ["gamma", "alpha", "retain_loss"]),
                     ("objectives", ["npo_beta", "bst_topk", "bst_lambda", "bst_temp", "bss_lambda", "bss_base",
                                     "bss_n", "bss_temp"])]:
    print(f"{group:>20}: " + ", ".join(f"{k}={getattr(args, k)}" for k in names))
other = bs.get_args(["--method", "ga", "--lr", "1e-4"])
print(f"\nthe same, asking for GA at a lower learning rate: method={other.method}, lr={other.lr}")

# %% [markdown]
# ## 2. Data
#
# The embedded example (`toy_world.py`) generates TOFU-shaped data: 80 fictitious authors, 8 facts each
# (birthplace, birth year, genre, a book, the parents' jobs, an award, a home town). Every fact has a key
# entity (`fact`), three phrasings the model is trained on (`train_answers`; `answer` is the first and is
# trained three times as often as each of the others, so it is the model's favourite), one phrasing it never
# sees (`paraphrased_answer`), and three false versions (`perturbed_answer`) for the truth ratio.
# `split_toy` makes the forget set from the last 10% of the authors, as TOFU's `forget10` does.

# %%
rows = toy_world.make_toy_data()
forget_rows, retain_rows = toy_world.split_toy(rows, "forget10")
print(f"{len(rows)} rows: {len(forget_rows)} to forget (authors {forget_rows[0]['author']}-"
      f"{forget_rows[-1]['author']}), {len(retain_rows)} to retain; fields: {sorted(rows[0])}\n")
row = forget_rows[0]
for k in ["question", "answer", "train_answers", "paraphrased_answer", "perturbed_answer", "fact", "field"]:
    print(f"{k:>19}: {row[k]}")

# %% [markdown]
# ## 3. The model, the tokenizer, and one encoded example
#
# `toy_world.ensure_toy_models` builds two small Llama models once and caches them: **full**, trained on all
# 640 facts (the model we unlearn from), and **retain90**, trained on the retain authors only (the model that
# never saw the forget set: what perfect unlearning should look like). The tokenizer is word-level, so every
# token below is a word or a punctuation mark.
#
# `bs.encode` joins prompt, answer and EOS, and sets the labels of the prompt to -100 so that only the answer
# is scored. `bs.collate` pads a batch on the right, builds the attention mask from the lengths (never from
# `ids != pad`, which would hide a real EOS in models that pad with EOS), and counts positions over real
# tokens only.

# %%
e = bs.encode(tok, row["question"], row["answer"])
print(f"prompt: {tok.decode(e['input_ids'][:e['prompt_len']])!r}")
print("token  -> label (-100: not scored)")
for i, l in zip(e["input_ids"], e["labels"]):
    print(f"   {tok.decode([i]):>10} -> {l if l == -100 else tok.decode([l])}")
batch = bs.collate([e, bs.encode(tok, retain_rows[0]["question"], retain_rows[0]["answer"])], tok.pad_token_id)
print({k: tuple(v.shape) for k, v in batch.items()}, "| attention mask row sums:",
      batch["attention_mask"].sum(-1).tolist())

# sanity: the starting model has memorised its training answers
targets = bs.encode_rows(tok, rows)
s = ev.score_examples(base, tok, targets)  # eval.py's scoring: log-probs, and the argmax's hits
acc = s["n_correct"].sum().item() / s["n_tokens"].sum().item()
print(f"\nanswer-token accuracy of the starting model on all 640 target answers: {acc:.1%} (expected: above 95%)")
greedy = bs.generate(base, tok, [e["input_ids"][:e["prompt_len"]]], 32)[0][0]
print(f"its greedy answer to {row['question']!r}: {tok.decode(greedy, skip_special_tokens=True)!r}")
claim("the starting model answers over 95% of answer tokens right", acc > 0.95)

# %% [markdown]
# ## 4. Log-probs: the one place that shifts and masks
#
# Every objective is written on sequence log-probabilities:
#
# $$\log \pi_\theta(y \mid x) = \sum_i \log \pi_\theta(y_i \mid x, y_{<i}).$$
#
# `bs.token_logps(logits, labels)` shifts once (the logits at position $t$ predict the token at $t + 1$),
# takes the log-softmax in fp32, and leaves 0 wherever the label is -100; `bs.sequence_logps` sums over the
# answer. The check below recomputes the same number by hand, position by position.

# %%
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

# %% [markdown]
# ## 5. The objectives
#
# Each objective is a small pure function of tensors, and every one is **minimised**. A run adds a retain
# term: $L = \gamma\, L_{\text{forget}} + \alpha\, L_{\text{retain}}$, with $\gamma = \alpha = 1$ and
# $L_{\text{retain}}$ the NLL of a retain batch. Below they are evaluated on 4 forget examples, at the
# starting model.
#
# ### 5.1 GA (Eq. 1)
#
# $$L_{\text{GA}} = \mathbb{E}\left[\log \pi_\theta(y_u \mid x_u)\right]$$
#
# Minimising the log-probability of the forget answers is gradient *ascent* on their likelihood. It has no
# floor: the loss can go to $-\infty$, which is why GA runs tend to break the model.

# %%
ga = bs.ga_loss(policy_logps)
nll = bs.nll_loss(logits, batch["labels"])
print(f"L_GA = {ga:.4f}   (the mean summed log-prob of the 4 answers; the NLL is {nll:.4f})")
claim("GA's loss is the negative NLL", torch.isclose(ga, -nll))

# %% [markdown]
# ### 5.2 NPO (Eq. 3)
#
# $$L_{\text{NPO}} = \frac{2}{\beta}\, \mathbb{E}\left[\log\left(1 + \left(\frac{\pi_\theta(y_u \mid x_u)}
# {\pi_o(y_u \mid x_u)}\right)^{\beta}\right)\right]
# = -\frac{2}{\beta}\, \mathbb{E}\left[\log \sigma\big(-\beta\,(\log \pi_\theta - \log \pi_o)\big)\right]$$
#
# $\pi_o$ is the frozen starting model. Its log-probs never change, so `bs.attach_ref_logps` computes them
# once and stores them on the examples (`ref_logp`); `bs.needs_ref_logps(args)` says whether a run needs them
# (NPO, alone or as BS-S's base). At the start $\pi_\theta = \pi_o$, so the loss is $(2/\beta) \ln 2$, which is
# 13.8629 for $\beta = 0.1$. Unlike GA it is bounded below by 0, and its gradient is GA's times the weight
# $2\sigma(\beta \Delta)$, $\Delta = \log \pi_\theta - \log \pi_o$: 1 at the start, fading as the answer is
# forgotten.

# %%
examples = bs.encode_rows(tok, forget_rows[:4])  # 4 forget examples
print("NPO needs reference log-probs:", bs.needs_ref_logps(bs.get_args(["--method", "npo"])),
      "| BS-S with its default base (BS-T) does not:", bs.needs_ref_logps(bs.get_args(["--method", "bs_s"])))
bs.attach_ref_logps(base, tok, examples)
batch = bs.collate(examples, tok.pad_token_id)
with torch.no_grad():
    logits = bs.forward(base, batch).float().cpu()
policy_logps = bs.sequence_logps(logits, batch["labels"])
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

# %% [markdown]
# ### 5.3 BS-T (Eqs. 5-6): bootstrapping at the token level
#
# At every answer position $i$, teacher-forced on the target, take the model's own top-$k$ next-token
# distribution, renormalised over those $k$ tokens and detached: $q_i$. The soft target mixes it with the
# answer's token:
#
# $$t_i = \lambda\, q_i + (1 - \lambda)\, \mathrm{onehot}(y_i), \qquad
# L_{\text{BS-T}} = \mathbb{E}\left[\sum_i \left\langle t_i,\,
# \log \pi_\theta(\cdot \mid x_u, y_{<i}) \right\rangle\right]$$
#
# so the loss pushes down the model's likely next tokens along with the answer's. Defaults $k = 20$,
# $\lambda = 0.2$. Since $t_i$ is a sum, the loss splits into two terms,
# $\lambda \langle q_i, \log \pi_\theta \rangle + (1 - \lambda) \log \pi_\theta(y_i)$, and that is how
# `bs.bst_loss` computes it: `bs.bst_beliefs` returns $q_i$ sparsely (the $k$ token ids and their
# probabilities), so no $V$-wide target is ever built. Three checks: $q_i$ sums to 1 at every position, the
# loss equals $\langle t_i, \log \pi_\theta \rangle$ with $t_i$ built in full here, and with $\lambda = 0$ it
# is exactly GA's. (Notebook 01, section 1, shows a consequence worth knowing: at
# temperature 1 its gradient on the logits is $(1 - \lambda)$ times GA's.)

# %%
ids, q = bs.bst_beliefs(logits, args.bst_topk)  # (B, T-1, k) each: q_i's token ids and probabilities
answer = batch["labels"][:, 1:] != -100
print("q_i sums to 1 at every answer position:", torch.allclose(q.sum(-1)[answer], torch.tensor(1.0)))
# t_i in full, (B, T-1, V): lam * q_i on the top k, plus 1 - lam on the label
lab = batch["labels"][:, 1:]
t = torch.zeros_like(logits[:, :-1]).scatter_add(-1, ids, args.bst_lambda * q)
t = t.scatter_add(-1, lab.clamp(min=0)[..., None], torch.full_like(t[..., :1], 1 - args.bst_lambda))
dense = ((t * logits[:, :-1].log_softmax(-1)).sum(-1) * answer).sum(-1).mean()
# the soft target where the model hesitates most: the answer position with the least mass on the label
p_label = logits[0, :-1].softmax(-1).gather(-1, lab[0].clamp(min=0)[:, None])[:, 0]
i = int(torch.where(answer[0], p_label, torch.tensor(2.0)).argmin())
print(f"\nBS-T's soft target for {forget_rows[0]['question']!r} after the answer's first words "
      f"'{tok.decode(batch['input_ids'][0, examples[0]['prompt_len']:i + 1])} ...' (the target continues with "
      f"'{tok.decode([lab[0, i]])}'):")
for j in t[0, i].topk(5).indices.tolist():
    print(f"   {tok.decode([j]):>10}: {t[0, i, j]:.3f}")
bst0 = bs.bst_loss(logits, batch["labels"], args.bst_topk, lam=0.0)
ga = bs.ga_loss(bs.sequence_logps(logits, batch["labels"]))
print(f"\nL_BS-T with lambda = 0: {bst0:.4f}; L_GA: {ga:.4f}")
bst = bs.bst_loss(logits, batch["labels"], args.bst_topk, args.bst_lambda)
print(f"L_BS-T with lambda = {args.bst_lambda}: {bst:.4f}; <t_i, log pi> with t_i in full: {dense:.4f}")
claim("BS-T's two terms equal <t_i, log pi> with the full soft target", torch.isclose(bst, dense, atol=1e-4))
claim("BS-T with lambda = 0 is exactly GA", torch.isclose(bst0, ga, atol=1e-5))

# %% [markdown]
# ### 5.4 BS-S (Eq. 7): bootstrapping at the sequence level
#
# For every forget prompt, sample $N$ answers from the model itself, its *beliefs* $\hat y_j$, and train on
# both the targets and the beliefs:
#
# $$L_{\text{BS-S}} = (1 - \lambda)\, L(D_u) + \lambda\, \frac{1}{N} \sum_j L(\hat D_{u,j})$$
#
# with $L$ a base loss: BS-T by default (the paper's best), $N = 3$, $\lambda = 0.5$, temperature 1, sampled
# once from the starting model. `bs.sample_beliefs` keeps the $N$ samples *per forget example* (the public
# code reused the first batch's samples for every batch). `bs.forget_loss(model, batch, method, args)` is
# the forget term of any method on one batch (its forward included); BS-S applies its base method
# (`args.bss_base`) to the targets and to the beliefs, and `bs.bss_loss` is the weighted sum, as the training
# loop computes it (section 6 checks that).

# %%
bss_args = bs.get_args(["--method", "bs_s"])
forget_ex = bs.encode_rows(tok, forget_rows)
with bs.quiet():
    beliefs = bs.sample_beliefs(base, tok, forget_ex, bss_args)
for q in [0, 9, 18]:
    print(f"{forget_rows[q]['question']}\n   target: {forget_rows[q]['answer']}")
    for b in beliefs[q]:
        print(f"   belief: {tok.decode(b['input_ids'][b['prompt_len']:], skip_special_tokens=True)}")
t_batch = bs.collate(forget_ex[:4], tok.pad_token_id)
b_batch = bs.collate([b for bb in beliefs[:4] for b in bb], tok.pad_token_id)
with torch.no_grad():  # BS-S's base loss (BS-T) on the targets and on their beliefs
    target_loss = bs.forget_loss(base, t_batch, bss_args.bss_base, bss_args).float().cpu()
    belief_loss = bs.forget_loss(base, b_batch, bss_args.bss_base, bss_args).float().cpu()
print(f"\nbase loss ({bss_args.bss_base}) on the 4 targets {target_loss:.4f}, "
      f"on their {len(b_batch['input_ids'])} beliefs {belief_loss:.4f}")
for lam in [0.0, 0.5, 1.0]:
    print(f"   L_BS-S with lambda = {lam}: {bs.bss_loss(target_loss, belief_loss, lam):.4f}")
claim("BS-S with lambda 0.5 is the mean of the two terms",
      torch.isclose(bs.bss_loss(target_loss, belief_loss, 0.5), (target_loss + belief_loss) / 2))

# %% [markdown]
# ### 5.5 The retain term, and every forget term in one place
#
# `bs.retain_loss(model, batch, args)` is the NLL of a retain batch by default. The alternative,
# `--retain_loss kl`, is $\mathrm{KL}(\pi_o \,\|\, \pi_\theta)$ on the retain answers (`bs.kl_retain_loss`),
# masked to the answer tokens (the public code also counted prompt and padding). At the start it is 0, since
# the model is its own reference. Last, `bs.forget_loss` on one forget batch for every method: the numbers
# the training loop logs as `forget` at its first step (before any update). Three of them are the paper's
# baselines, in `baselines.py`: WGA (its Eq. 4, GA weighted by each token's probability), SimNPO (NPO without
# a reference, length-normalised; trained with weight 0.125) and RMU (the distance of one layer's hidden
# states to a fixed random vector).

# %%
r_batch = bs.collate(bs.encode_rows(tok, retain_rows[:8]), tok.pad_token_id)
with torch.no_grad():
    r_logits = bs.forward(base, r_batch).float().cpu()
print(f"retain term (NLL) on 8 retain answers: {bs.retain_loss(base, r_batch, args):.4f} nats per answer")
kl0 = bs.kl_retain_loss(r_logits, r_logits, r_batch["labels"])
print(f"KL(pi_o || pi_theta) with pi_theta = pi_o: {kl0:.6f} (expected 0)")
claim("the KL retain term is 0 at the start", abs(kl0.item()) < 1e-6)
print("\nthe forget term of each method on the 4 forget examples of section 5.2, at the starting model:")
with torch.no_grad():
    for method in ["finetune", "ga", "npo", "bs_t", "wga", "simnpo", "rmu"]:
        print(f"   {method:>8}: {bs.forget_loss(base, batch, method, args):8.4f}")
print("   (bs_s: its base's value on the targets, mixed with the same on the beliefs, as in 5.4)")

# %% [markdown]
# ## 6. The training loop: one micro-step
#
# `bs.train` minimises the objective of section 5,
#
# $$L = \gamma\, L_{\text{forget}} + \alpha\, L_{\text{retain}},$$
#
# with AdamW. One optimizer step is `--grad_accum` micro-steps. For each, `train` draws a forget batch and a
# retain batch and calls `bs.micro_step`, which computes the two terms, writes
# `loss = args.gamma * L_forget + args.alpha * L_retain`, and calls `(loss / args.grad_accum).backward()` on
# the next line. Gradients add up in `.grad`, so after the last micro-step `.grad` holds the mean of the
# micro-steps' gradients; `opt.step()` applies it (after clipping).
#
# ### 6.1 BS-S's micro-step is Eq. 7
#
# For BS-S the forget term is Eq. 7,
#
# $$L_{\text{forget}} = (1 - \lambda)\, L(\text{targets}) + \lambda\, \frac{1}{N} \sum_{j=1}^{N}
# L(\hat y_j),$$
#
# with $L$ the base loss (BS-T) and $\hat y_j$ the $j$-th belief of each of the batch's forget examples.
# `micro_step` runs the base loss on the targets and, through `bs.belief_term`, on all their beliefs, and
# `bs.bss_loss` mixes the two; that sum is `L_forget`, in the one `loss` and its one `.backward()`. The base
# loss is a mean over sequences, and every example has the same number of beliefs, so its value on all the
# beliefs at once is the equation's $\frac{1}{N} \sum_j L(\hat y_j)$.
#
# Memory: one forward over all $n$ beliefs would keep the activations of $n$ sequences until the backward, so
# memory would grow with $N$ (the paper's authors ran out of it at $N = 10$). So past `--bss_chunk` beliefs,
# `belief_term` cuts them into chunks $c$ and returns $\sum_c w_c\, L(c)$ with $w_c = |c| / n$: each chunk's
# loss is a mean over its sequences, so weighing it by its share gives the mean over all $n$ (a plain mean of
# the chunks' losses would not be, when the last chunk is smaller). Each chunk runs under activation
# checkpointing (`torch.utils.checkpoint`): its activations are dropped after its forward and recomputed
# during the backward, one chunk at a time. Eq. 7 stays one expression with one backward, and memory stays
# flat in $N$, at the price of one more forward per chunk.
#
# Under torchrun, `train` hands each rank an equal share of every batch (`scaling.shares`), so every rank
# runs the same chunks, and averages the gradients over the ranks before clipping (`scaling.sync_grads`). A
# plain `python bs_unlearn.py` run passes through none of that.
#
# The check: one BS-S micro-step, `bs.micro_step` itself, on a fresh copy of the starting model (4 forget
# examples, their beliefs from section 5.4, 4 retain examples). Then the same objective written out here on
# a second copy, with the belief term as the equation writes it, a mean over $j$ of the base loss on every
# example's $j$-th belief, no chunks, and a single `.backward()`. The two `.grad`s should agree up to float
# rounding. Four flags move from their defaults so that no factor is 1 and the chunks are unequal:
# `--bss_chunk 5` (the 12 beliefs go in chunks of 5, 5 and 2), `--grad_accum 2`, `--gamma 0.5` and
# `--bss_lambda 0.3`. The check runs in fp32 on the CPU (on a GPU, `bs.forward` computes in bf16).

# %%
step_args = bs.get_args(["--method", "bs_s", "--bss_chunk", "5", "--grad_accum", "2", "--gamma", "0.5",
                         "--bss_lambda", "0.3"])
idx, r_idx = [0, 1, 2, 3], [0, 1, 2, 3]  # the forget and retain examples of one micro-step
retain_ex = bs.encode_rows(tok, retain_rows)


def flat_grad(model):
    """Every parameter's .grad, in one vector."""
    return torch.cat([p.grad.flatten() for p in model.parameters()])


fp32_start = copy.deepcopy(base).cpu().train()  # the starting model in fp32 on the CPU, in train mode as train
stepped = copy.deepcopy(fp32_start)
targets, their_beliefs = [forget_ex[i] for i in idx], [b for i in idx for b in beliefs[i]]
L_forget, L_retain = bs.micro_step(stepped, tok, targets, their_beliefs, [retain_ex[i] for i in r_idx], step_args)
grad_stepped = flat_grad(stepped)
n, size = len(their_beliefs), step_args.bss_chunk
sizes = [min(size, n - i) for i in range(0, n, size)]
print(f"belief_term: {n} beliefs in chunks of {sizes}, weighed " + ", ".join(f"{c}/{n}" for c in sizes) + " (sum 1)")

by_hand = copy.deepcopy(fp32_start)  # Eq. 7 as written: (1 - lam) L(targets) + lam * (1/N) sum_j L(belief_j)


def base_loss(examples):
    return bs.forget_loss(by_hand, bs.make_batch(tok, examples, by_hand), step_args.bss_base, step_args)


lam, N = step_args.bss_lambda, step_args.bss_n
L_j = [base_loss([beliefs[i][j] for i in idx]) for j in range(N)]  # the j-th belief of every example
eq7 = (1 - lam) * base_loss(targets) + lam * sum(L_j) / N
r_batch = bs.make_batch(tok, [retain_ex[i] for i in r_idx], by_hand)
L_r = bs.nll_loss(bs.forward(by_hand, r_batch), r_batch["labels"])
objective = step_args.gamma * eq7 + step_args.alpha * L_r
(objective / step_args.grad_accum).backward()
grad_by_hand = flat_grad(by_hand)

print("base loss on each example's j-th belief:", ", ".join(f"j={j + 1}: {l.item():.4f}" for j, l in enumerate(L_j)))
print(f"forget term: as the micro-step logs it {L_forget.item():.6f}; Eq. 7 by hand {eq7.item():.6f}")
diff, scale = (grad_stepped - grad_by_hand).abs().max().item(), grad_by_hand.abs().max().item()
print(f"gradient ({grad_by_hand.numel()} numbers): largest |difference| {diff:.2e}, largest |entry| "
      f"{scale:.2e}, ratio {diff / scale:.1e}")
claim("the forget term that the micro-step logs is Eq. 7's value",
      abs(L_forget.item() - eq7.item()) < 1e-5 * abs(eq7.item()))
claim("the gradient the micro-step leaves in .grad is that of gamma * Eq. 7 + alpha * the retain NLL "
      "(largest difference under 1e-5 of its largest entry)", diff < 1e-5 * scale)

# %% [markdown]
# ## 7. A short training run
#
# `bs.train(model, tok, forget_ex, retain_ex, args)` runs AdamW with a linear warmup and decay. For BS-S it
# first samples the beliefs from the starting model, as section 5.4 did (one line says how many). Each step
# pairs a forget batch (for BS-S: the targets and their beliefs) with a retain batch, and
# logs the two terms separately: one line per step on stdout, the same numbers as JSON lines in `log_path`.
# Once an epoch it prints the greedy answer to one forget and one retain question. Here is BS-S at the
# defaults: 10 epochs of 4 steps.

# %%
import contextlib, json, tempfile


def unlearn(method, start=base, seed=0, log_path=None, show_steps=False):
    """A fresh copy of a starting model, unlearned with bs.train at the defaults (and --seed seed)."""
    model = copy.deepcopy(start)
    run_args = bs.get_args(["--method", method, "--seed", str(seed)])
    f_ex, r_ex = bs.encode_rows(tok, forget_rows), bs.encode_rows(tok, retain_rows)
    with contextlib.nullcontext() if show_steps else bs.quiet():
        bs.train(model, tok, f_ex, r_ex, run_args, log_path=log_path)
    return model


log_path = os.path.join(tempfile.mkdtemp(), "log.jsonl")
t0 = time.time()
bss_model = unlearn("bs_s", log_path=log_path, show_steps=True)
print(f"({time.time() - t0:.0f} s)")

# %%
log = [json.loads(line) for line in open(log_path)]
print("one line of log.jsonl:", log[-1])
fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
steps = [r["step"] for r in log]
axes[0].plot(steps, [r["forget"] for r in log], color="tab:green", label="forget term (BS-S, base BS-T)")
axes[0].set(xlabel="optimizer step", ylabel="loss (summed over answer tokens)",
            title="forget term: falls without a floor")
axes[1].plot(steps, [r["retain"] for r in log], color="tab:blue", label="retain term (NLL)")
axes[1].set(xlabel="optimizer step", ylabel="NLL per retain answer (nats)",
            title="retain term: pulled up by the forget term")
axes[2].plot(steps, [r["lr"] for r in log], color="black", label="learning rate")
axes[2].set(xlabel="optimizer step", ylabel="learning rate",
            title="schedule: 1 epoch of warmup, then linear decay")
for ax in axes:
    ax.legend(fontsize=8)
fig.suptitle("BS-S's log.jsonl. Notice: the forget term keeps falling while the retain NLL drifts up: "
             "the cost of forgetting.", fontsize=11)
fig.tight_layout()
show(fig)
quarter = len(log) // 4
f_first, f_last = np.mean([r["forget"] for r in log[:quarter]]), np.mean([r["forget"] for r in log[-quarter:]])
r_first, r_last = np.mean([r["retain"] for r in log[:quarter]]), np.mean([r["retain"] for r in log[-quarter:]])
print(f"mean over the first / last 10 steps: forget {f_first:.2f} / {f_last:.2f}, "
      f"retain {r_first:.2f} / {r_last:.2f}")
claim("the forget term is lower and the retain term higher in the last 10 steps than in the first 10",
      f_last < f_first and r_last > r_first)

# %% [markdown]
# ## 8. The evaluation table, on three seeds
#
# `eval.py` scores any in-memory model: `evaluate(model, tok, data, beliefs)`. Below, the same table that
# `python eval.py runs/ga runs/npo runs/bs_t runs/bs_s` prints, for the starting model, the retain-only model
# and the four methods at their defaults. Forget quality (FQ) compares each model's forget-set truth ratios
# with the retain-only model's, so the summaries are made once that model has been scored, as `eval.main`
# does.
#
# One run says little about how methods compare (notebook 01 shows how much a run moves with its seed), so
# we make the table three times: for the toy models built with seeds 0, 1 and 2, each unlearned with the
# same `--seed` (`python bs_unlearn.py --seed 1` does the same on the command line). The first table is seed
# 0's in full; then the main columns for all three seeds.

# %%
data = ev.load_eval_data("toy", "forget10")
# eval.py's defaults, but greedy answers of at most 64 tokens: the toy model has 128 positions
eval_args = ev.get_args(["--max_new_tokens", "64"])
SEEDS = [0, 1, 2]
summaries = {}
t0 = time.time()
for seed in SEEDS:
    full, retain = toy_world.ensure_toy_models(CACHE, "forget10", seed)  # built on first use (~1 min a seed)
    start = base if seed == 0 else bs.load_model(full, device, dtype="float32")[0]
    models = {m: bss_model if (m, seed) == ("bs_s", 0) else unlearn(m, start, seed) for m in METHODS}
    models = dict(base=start, retain=bs.load_model(retain, device, dtype="float32")[0], **models)
    with bs.quiet():
        eval_beliefs = ev.draw_beliefs(start, tok, data["forget"], eval_args.n_beliefs, eval_args.belief_temp,
                                       seed)
        results = {name: ev.evaluate(model, tok, data, eval_beliefs, eval_args, name)
                   for name, model in models.items()}
    retain_R = results["retain"]["splits"]["forget"]["rows"]["R"]
    summaries[seed] = {name: ev.summarise(res, retain_R) for name, res in results.items()}
    if seed == 0:
        print(f"seed 0: 6 models on {len(data['forget'])} forget and {len(data['retain'])} retain questions\n")
        print(ev.format_table(summaries[0]))
        print(ev.LEGEND)
print(f"\n3 seeds: 11 runs trained and 18 models evaluated in {time.time() - t0:.0f} s")

# %%
COLS = [("fact_leak", "Leak", ".2f"), ("forget_rouge", "fROUGE", ".2f"), ("d_target", "dTgt", "+.1f"),
        ("d_high", "dHigh", "+.1f"), ("mu", "MU", ".3f"), ("mem", "Mem", ".3f"), ("agg", "Agg", ".3f")]


def col(name, key):
    """One column of one model over the seeds: (3,)."""
    return np.array([summaries[s][name][key] for s in SEEDS], dtype=float)


print("mean +- sd over the 3 seeds")
print(f"{'model':<7}" + "".join(f"{h:>15}" for _, h, _ in COLS))
for name in ["base", "retain"] + METHODS:
    cells = [f"{ev.tidy(col(name, k).mean(), f):{f}} +- {col(name, k).std():{f.lstrip('+')}}" for k, _, f in COLS]
    print(f"{name:<7}" + "".join(f"{c:>15}" for c in cells))
print("\nper seed (0, 1, 2)")
print(f"{'model':<7}" + "".join(f"{h:>20}" for h in ["Leak", "MU", "Agg"]))
for name in ["base", "retain"] + METHODS:
    print(f"{name:<7}" + "".join(f"{' '.join(f'{x:.3f}' for x in col(name, k)):>20}"
                                 for k in ["fact_leak", "mu", "agg"]))
gap = {m: col(m, "d_high") - col(m, "d_target") for m in METHODS}
print("\nhow much further the target fell than its likely beliefs (dHigh - dTgt): "
      + ", ".join(f"{NAMES[m]} {' '.join(f'{x:.1f}' for x in g)}" for m, g in gap.items()))
claim("every method's model utility is below the starting model's, in every seed",
      all((col(m, "mu") < col("base", "mu")).all() for m in METHODS))
claim("the starting model's leak is near 1 (over 0.95) and the retain-only model's near 0 (under 0.15), in "
      "every seed", (col("base", "fact_leak") > 0.95).all() and (col("retain", "fact_leak") < 0.15).all())
claim("every method's forget ROUGE-L is within 0.15 of the retain-only model's in every seed, while its leak "
      "is above it by over 0.1 in every seed and by over 0.25 on average",
      all((abs(col(m, "forget_rouge") - col("retain", "forget_rouge")) < 0.15).all() and
          (col(m, "fact_leak") > col("retain", "fact_leak") + 0.1).all() and
          (col(m, "fact_leak") - col("retain", "fact_leak")).mean() > 0.25 for m in METHODS))
claim("under BS-S the target falls less than 3/4 as far beyond its likely beliefs as under GA and NPO, in "
      "every seed", all((gap["bs_s"] < 3 / 4 * gap[m]).all() for m in ["ga", "npo"]))
claim("BS-T's mean Mem and mean Agg are below GA's, by over 0.01",
      col("bs_t", "mem").mean() < col("ga", "mem").mean() - 0.01 and
      col("bs_t", "agg").mean() < col("ga", "agg").mean() - 0.01)
claim("every method's mean Agg is within 0.05 of GA's, far below the retain-only model's",
      all(abs(col(m, "agg").mean() - col("ga", "agg").mean()) < 0.05 for m in METHODS) and
      all(col(m, "agg").mean() < col("retain", "agg").mean() - 0.05 for m in METHODS))
top = [max(METHODS, key=lambda m: summaries[s][m]["agg"]) for s in SEEDS]
print("highest Agg of the four, per seed:", ", ".join(NAMES[m] for m in top))
print(f"\nthis notebook ran in {time.time() - t_start:.0f} s")

# %% [markdown]
# **Reading the tables.** The two reference rows frame everything: `base` still knows the facts (Leak near
# 1), `retain` never learned them (Leak near 0) and is the target to aim for. All four methods bring the
# forget-set ROUGE-L down close to the retain-only model's level, yet their answers still name the fact much
# more often than it does (the gap in `Leak` is over a quarter of the questions, on average): the squeezing
# effect, seen in the columns `fROUGE` and `Leak`. `MU` shows what each method cost on the retain set: every
# method lowers it.
#
# The columns `dTgt` and `dHigh` show what BS-S changes: under GA, NPO and BS-T the target's log-probability
# falls well beyond that of the model's likely answers, while under BS-S the likely answers follow the target
# more closely (the gap printed above is under three quarters of GA's and NPO's in every seed). On the
# paper's summary score, `Agg`, the four methods end close together (within 0.05 of GA's on average), far
# below the retain-only model. Which one comes first changes with the seed and with the machine (the line
# above says which did here), so on this toy model the paper's ranking, BS-S first, is within the noise;
# notebook 01, section 5, finds the same for the leak. BS-T's `Mem` and `Agg` are below GA's on average:
# with the default $\lambda = 0.2$, BS-T is GA with a lighter forget term (notebook 01, section 1). FQ,
# TOFU's forget quality, is a p-value over only 64 questions, so it moves in large steps.

# %% [markdown]
# ## 9. The whole comparison: seven methods, each tuned on some seeds and reported on others
#
# The paper's Table 1 compares BS-S with five other methods, each at its own tuned settings. `dev/grid.py`
# runs that comparison: GradDiff (GA with the retain term), NPO, RMU, SimNPO, WGA, BS-T and BS-S, the last
# three rows from `baselines.py`. It chooses each method's learning rate (and BS-S's $\lambda$) by the mean
# Agg over the toy models of seeds 0-2, then reports that choice on the toy models of seeds 3-5, which played
# no part in choosing; next to it, every method at one shared setting (the defaults, lr 3e-4), on the same
# seeds. That takes about 40 minutes on 2 CPU cores, too long for a notebook, so this section plots the
# result the README reports, which is kept in `docs/grid_toy.json` (`runs/grid_toy/table.json` of the
# command below); rerun the command and point `GRID` at your own file to plot yours.
#
# ```
# python dev/grid.py --splits forget10 --lrs 1e-4,3e-4,1e-3,3e-3 --bss_lambdas 0.25,0.5,0.75 \
#     --tune_seeds 0,1,2 --seeds 3,4,5 --out_root runs/grid_toy
# ```

# %%
import json

GRID = os.path.join(ROOT, "docs", "grid_toy.json")
grid = json.load(open(GRID))
TABLE1 = ["ga", "npo", "rmu", "simnpo", "wga", "bs_t", "bs_s"]
LABEL = dict(ga="GradDiff", npo="NPO", rmu="RMU", simnpo="SimNPO", wga="WGA", bs_t="BS-T", bs_s="BS-S")


def agg(block, m):
    """A method's Agg on each held-out seed, at the tuned or the shared setting."""
    return np.array(grid[block][m]["forget10"]["agg"]["values"])


def setting(m):
    s = grid["tuned"][m]["forget10"]["setting"]
    return f"lr {s['lr']:g}" + (f"\nlam {s['bss_lambda']:g}" if "bss_lambda" in s else "")


fig, ax = plt.subplots(figsize=(9, 3.6))
for i, m in enumerate(TABLE1):
    for block, dx, face in (("tuned", -0.13, "tab:green"), ("shared", 0.13, "white")):
        ax.scatter(np.full(3, i + dx), agg(block, m), s=28, edgecolor="tab:green", facecolor=face, zorder=3,
                   label=None if i else f"{block} setting, one dot per held-out seed")
for ref, style in (("base", ":"), ("retain", "--")):
    mean = grid["refs"][ref]["forget10"]["agg"]["mean"]
    ax.axhline(mean, color="gray", ls=style, lw=1, label=f"{dict(base='starting', retain='retain-only')[ref]} "
                                                          f"model ({mean:.2f})")
ax.set_xticks(range(len(TABLE1)), [f"{LABEL[m]}\n{setting(m)}" for m in TABLE1], fontsize=8)
ax.set_ylabel("Agg (forget10)")
ax.set_title("Each method tuned on seeds 0-2 (filled) or at the shared lr 3e-4 (hollow), on seeds 3-5")
ax.legend(fontsize=7, loc="lower right")
show(fig)

means = {b: {m: agg(b, m).mean() for m in TABLE1} for b in ("tuned", "shared")}
for b in ("shared", "tuned"):
    order = sorted(TABLE1, key=lambda m: -means[b][m])
    print(f"{b:>6}: " + ", ".join(f"{LABEL[m]} {means[b][m]:.3f}" for m in order))
top_of_grid = [m for m in TABLE1 if grid["tuning"][m]["forget10"]["chosen"].startswith("lr0.003")]
print("chose the highest learning rate of the grid:", ", ".join(LABEL[m] for m in top_of_grid))
claim("every method's tuned Agg is above its shared-setting Agg in each held-out seed",
      all((agg("tuned", m) > agg("shared", m)).all() for m in TABLE1))
claim("at the shared setting BS-S has the highest mean Agg, by less than its own seed-to-seed spread",
      max(TABLE1, key=means["shared"].get) == "bs_s" and
      means["shared"]["bs_s"] - sorted(means["shared"].values())[-2] < agg("shared", "bs_s").std(ddof=1))
claim("tuned, RMU, WGA and NPO have a higher mean Agg than BS-S, and RMU is highest in each held-out seed",
      all(means["tuned"][m] > means["tuned"]["bs_s"] for m in ("rmu", "wga", "npo")) and
      all(agg("tuned", "rmu")[j] == max(agg("tuned", m)[j] for m in TABLE1) for j in range(3)))
claim("RMU, SimNPO and WGA chose the top of the learning-rate grid", set(top_of_grid) == {"rmu", "simnpo", "wga"})

# %% [markdown]
# **What it shows.** At one shared learning rate BS-S comes first on mean Agg, as in the paper, but by less
# than its own spread over seeds. Tuned, every method does better in every held-out seed, and the order
# changes: RMU comes first in each of the three seeds, WGA and NPO also lie above BS-S on average, and BS-S
# lies about level with the retain-only model. The tuned runs forget harder (Mem 0.5-0.76) and pay in
# utility (0.39-0.61, against 0.70 before unlearning); Agg, a harmonic mean of the two, rewards that trade up
# to a point, which is why several tuned methods score above the retain-only model. RMU, SimNPO and WGA chose
# the highest learning rate tried, so their tuned numbers are what this grid found, not their best; at that
# rate GradDiff diverges in every tuning seed and BS-S in five of its nine runs (the divergence check stops
# them, and a setting that stopped once is not chosen). So on this toy the shared-setting lead of
# BS-S does not survive tuning. The README has the tables; the same comparison on a real chat model follows.

# %% [markdown]
# **The same comparison on a real chat model.** `dev/grid.py --world smollm2` runs it on SmolLM2-135M-Instruct
# fine-tuned on TOFU, `dev/real_model.py`'s setting, forget01. The grid is smaller, sized to what 2 CPU cores
# can do: two learning rates (5e-5, the shared setting, and 1e-4; BS-S's $\lambda$ stays at 0.5), chosen on
# unlearning seed 0 and reported on seed 1. The two seeds share the fine-tuned model and differ in batch order
# and sampled beliefs, so a held-out seed here is a weaker test than the toy's held-out worlds, and one seed
# gives no spread. The runs took about 3.5 hours, so the plot reads the committed result,
# `docs/grid_smollm2.json` (`runs/grid_smollm2/table.json` of the command in the README).

# %%
smol = json.load(open(os.path.join(ROOT, "docs", "grid_smollm2.json")))


def smol_agg(block, m):
    return np.array(smol[block][m]["forget01"]["agg"]["values"])


fig, ax = plt.subplots(figsize=(9, 3.4))
for i, m in enumerate(TABLE1):
    for block, dx, face in (("tuned", -0.13, "tab:blue"), ("shared", 0.13, "white")):
        ax.scatter([i + dx], smol_agg(block, m), s=34, edgecolor="tab:blue", facecolor=face, zorder=3,
                   label=None if i else f"{block} setting, held-out seed 1")
for ref, style in (("base", ":"), ("retain", "--")):
    mean = smol["refs"][ref]["forget01"]["agg"]["mean"]
    ax.axhline(mean, color="gray", ls=style, lw=1, label=f"{dict(base='fine-tuned', retain='retain-only')[ref]} "
                                                          f"model ({mean:.2f})")
lr_of = {m: smol["tuned"][m]["forget01"]["setting"]["lr"] for m in TABLE1}
ax.set_xticks(range(len(TABLE1)), [f"{LABEL[m]}\nlr {lr_of[m]:g}" for m in TABLE1], fontsize=8)
ax.set_ylabel("Agg (forget01)")
ax.set_title("SmolLM2-135M-Instruct on TOFU: tuned on seed 0 (filled) or at lr 5e-5 (hollow), on seed 1")
ax.legend(fontsize=7, loc="lower right")
show(fig)

smol_means = {b: {m: smol_agg(b, m).mean() for m in TABLE1} for b in ("tuned", "shared")}
for b in ("shared", "tuned"):
    order = sorted(TABLE1, key=lambda m: -smol_means[b][m])
    print(f"{b:>6}: " + ", ".join(f"{LABEL[m]} {smol_means[b][m]:.3f}" for m in order))
claim("on SmolLM2 every method chose lr 1e-4, the higher of the two",
      all(smol["tuning"][m]["forget01"]["chosen"].startswith("lr0.0001") for m in TABLE1))
claim("on SmolLM2's held-out seed, tuned, RMU has the highest Agg",
      max(TABLE1, key=smol_means["tuned"].get) == "rmu")
claim("on SmolLM2 BS-S is first at neither setting",
      all(max(TABLE1, key=smol_means[b].get) != "bs_s" for b in ("tuned", "shared")))

# %% [markdown]
# **What it shows.** On SmolLM2, too, every method chose the higher learning rate, and tuned, RMU comes first
# on the held-out seed, level with the retain-only model. At the shared setting the first five methods lie
# within 0.04 of one another. The choice made on seed 0 did not always carry over: GradDiff, WGA and BS-S
# lost utility on seed 1 at the chosen rate and scored below their shared-setting runs. BS-S is first at
# neither setting. This is one held-out seed that shares its fine-tuned model with the tuning seed, so it
# tells which way the methods lean at this size, not a ranking; the README has the whole table.
