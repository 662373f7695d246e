"""
bs_unlearn.py: LLM unlearning with LLM beliefs, in one file.

Reference implementation of "LLM Unlearning with LLM Beliefs" (Li et al., ICLR 2026,
https://arxiv.org/abs/2510.19422). Gradient ascent (GA) and NPO lower the probability of a target answer,
but the mass they remove is *squeezed* into the model's own high-likelihood rephrasings of the same fact,
so the fact survives in other words. Bootstrapping (BS) also pushes down the model's beliefs:
BS-T at token level (its own top-k next tokens as soft targets), BS-S at sequence level (its own sampled
answers). Read top to bottom: config -> data -> log-probs -> objectives -> belief sampling -> training
loop -> the embedded toy model -> main.

Run (fully offline; the first run builds and caches a tiny model on generated data, ~1 min on 2 CPU cores):
    python bs_unlearn.py --method bs_s           # also: ga, npo, bs_t, finetune
    python eval.py runs/bs_s                     # metrics, see eval.py
TOFU on a GPU (paper settings):
    python bs_unlearn.py --data tofu --forget_split forget10 --method bs_s \
        --model open-unlearning/tofu_Llama-3.2-1B-Instruct_full --lr 1e-5 --epochs 10 \
        --batch_size 8 --grad_accum 4 --warmup_epochs 1 --weight_decay 0.01

Deviations from the paper and its public code:
1. BS-S caches N beliefs per forget example (the public code reuses the first batch's samples for all).
2. BS-S's base loss defaults to BS-T (the paper's best); beliefs are sampled once from the starting model
   (off-policy) by default, because resampling from a model that is being unlearned feeds it its own
   degenerate text (`--bss_regen R` resamples every R epochs). `--bss_keep K` keeps the K most confident.
3. Belief terms run in micro-batches with one backward each, so memory does not grow with N.
4. Every loss is a per-sequence *sum* over answer tokens, averaged over sequences (the equations are
   written on sequence log-probs). HF's `.loss` is a token mean; with AdamW the overall scale barely
   matters, but the forget/retain balance is in sequence units here.
5. NPO's reference log-probs are computed once before training (the reference is frozen), so the
   reference model is kept in memory only for the KL retain term or on-policy NPO beliefs.
6. The KL retain term is masked to answer tokens (the public code includes prompt and padding).
7. bf16 weights (the CUDA default) are stepped with stochastic rounding (bf16_adamw.py), so updates far
   below bf16's resolution still arrive; `--bf16_rounding nearest` rounds to nearest, as torch's AdamW does.
"""
import argparse
import copy
import json
import math
import os
import random
import sys
import time

import torch
import torch.nn.functional as F

# -----------------------------------------------------------------------------------------------------
# Config


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawTextHelpFormatter)
    # what to unlearn, from which model
    p.add_argument("--method", default="bs_s", help="ga | npo | bs_t | bs_s | finetune (plain NLL)")
    p.add_argument("--model", default="toy", help="'toy' (built and cached offline) or a HF id / local path")
    p.add_argument("--data", default="toy", choices=["toy", "tofu"], help="generated toy authors or TOFU")
    p.add_argument("--data_dir", default=None, help="read TOFU splits from local files instead of the hub")
    p.add_argument("--forget_split", default="forget10", choices=["forget01", "forget05", "forget10"],
                   help="forget the last 1/5/10%% of authors; retain = the rest")
    p.add_argument("--forget_pct", type=int, choices=[1, 5, 10], default=None, help="same as --forget_split")
    p.add_argument("--out_dir", default=None, help="where to save the model (default runs/<method>)")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out_dir")
    # optimisation (defaults: the embedded toy example on a CPU; see the docstring for TOFU)
    p.add_argument("--epochs", type=float, default=10)
    p.add_argument("--batch_size", type=int, default=16, help="forget examples per micro-step")
    p.add_argument("--grad_accum", type=int, default=1, help="micro-steps per optimizer step")
    p.add_argument("--lr", type=float, default=3e-4)  # toy: 1e-4 forgets nothing, 5e-4 wrecks the retain set
    p.add_argument("--warmup_epochs", type=float, default=1.0, help="linear warmup, then linear decay")
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--max_grad_norm", type=float, default=1.0)
    # loss weights and the retain term
    p.add_argument("--gamma", type=float, default=1.0, help="weight of the forget term")
    p.add_argument("--alpha", type=float, default=1.0, help="weight of the retain term (0: pure forgetting)")
    p.add_argument("--retain_loss", default="nll", choices=["nll", "kl"], help="NLL or KL(pi_o || pi_theta)")
    # objectives
    p.add_argument("--npo_beta", type=float, default=0.1)
    p.add_argument("--bst_topk", type=int, default=20)
    p.add_argument("--bst_lambda", type=float, default=0.2, help="weight of the model's top-k beliefs")
    p.add_argument("--bst_temp", type=float, default=1.0, help="temperature of the top-k belief distribution")
    p.add_argument("--bss_lambda", type=float, default=0.5, help="weight of the sampled-belief term")
    p.add_argument("--bss_base", default="bs_t", choices=["ga", "npo", "bs_t"], help="BS-S's base loss")
    p.add_argument("--bss_n", type=int, default=3, help="beliefs sampled per forget prompt")
    p.add_argument("--bss_keep", type=int, default=0, help="keep the K most confident of N (0: all)")
    p.add_argument("--bss_temp", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--bss_max_new_tokens", type=int, default=0, help="0: the longest forget answer")
    p.add_argument("--bss_regen", type=float, default=0, help="resample every R epochs (0: off-policy)")
    p.add_argument("--micro_batch", type=int, default=32, help="sequences per belief forward/backward")
    # system
    p.add_argument("--device", default="auto", help="auto | cuda | mps | cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="weights: auto = bf16 on CUDA, fp32 elsewhere")
    p.add_argument("--bf16_rounding", default="stochastic", choices=["stochastic", "nearest"],
                   help="how AdamW stores new bf16 weights: stochastic (BF16AdamW) or nearest (torch's AdamW,\n"
                        "as trainers that load bf16 weights do; it drops updates below half a bf16 step)")
    p.add_argument("--gen_batch_size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample_every", type=int, default=0, help="print greedy answers every N steps (0: epoch)")
    p.add_argument("--cache_dir", help="the toy models' home ($BS_UNLEARN_CACHE, else ~/.cache/bs_unlearn)",
                   default=os.environ.get("BS_UNLEARN_CACHE", os.path.expanduser("~/.cache/bs_unlearn")))
    args = p.parse_args(argv)
    if args.method not in FORGET_LOSSES and args.method != "bs_s":
        fail(f"unknown method {args.method!r}; choose from ga, npo, bs_t, bs_s, finetune")
    if args.method == "bs_s" and not 0 <= args.bss_keep <= args.bss_n or args.bss_n < 1:
        fail(f"need 1 <= --bss_n and 0 <= --bss_keep <= --bss_n (got {args.bss_n}, {args.bss_keep})")
    if args.forget_pct is not None:
        args.forget_split = f"forget{args.forget_pct:02d}"
    args.out_dir = args.out_dir or os.path.join("runs", args.method)
    return args


def fail(msg):
    """Bad input ends the run with one line on stderr and nothing written."""
    sys.exit(f"error: {msg}")


# -----------------------------------------------------------------------------------------------------
# Data: fictitious authors (offline default) or TOFU, in TOFU's schema

# Each fact: question templates, answer phrasings (an author gets 3 for training + 1 held-out paraphrase),
# and the pool its key entity comes from. Phrasings differ across authors so no template is shared by all.
FIRST = "Ada Bram Cleo Dario Elif Farid Greta Hiro Ines Jonas Kaya Lior Mira Nilo Oona Pavel Rhea Soren " \
        "Tomas Uma Vera Wim Xena Yusuf Zora Anouk Basil Corin Dilys Emeric".split()
LAST = "Varga Okafor Lindqvist Moreau Tanaka Albescu Kowal Ferreira Haddad Novak Quist Rahimi Sato Brandt " \
       "Castell Duarte Eskola Falk Grieve Hollis".split()
POOLS = {
    "city": "Lisbon Nairobi Oslo Quito Hanoi Tbilisi Porto Krakow Lima Accra Dublin Seville Riga Perth Cusco "
            "Tunis Bergen Leipzig Osaka Manila Dakar Zagreb Valencia Bogota".split(),
    "year": [str(y) for y in range(1921, 1999, 3)],
    "genre": "mystery poetry satire romance horror fantasy history drama folklore travel thriller "
             "memoir".split(),
    "book": [f"The {a} {b}" for a in "Silent Hollow Amber Broken Last Winter Copper Hidden".split()
             for b in "Harbor Orchard Lantern Garden Bridge Mirror Compass".split()],
    "job": "baker carpenter surgeon pilot librarian fisherman tailor chemist farmer painter nurse "
           "architect jeweller sailor".split(),
    "award": [f"the {a} Prize" for a in "Golden Quill|Silver Pen|Blue Lantern|Iron Page|Northern Star|"
              "Crimson Ink|Ivory Tower|Open Book".split("|")],
}
FACTS = [  # (field, pool, questions, phrasings); {n} = author's name, {v} = the fact's key entity
    ("city", "city", ["Where was {n} born?", "In which city was {n} born?"],
     ["{n} was born in {v}.", "{v} is the birthplace of {n}.", "{n} comes from the city of {v}.",
      "The city of {v} is where {n} was born.", "{n} grew up in {v}, the city of their birth."]),
    ("year", "year", ["When was {n} born?", "In what year was {n} born?"],
     ["{n} was born in {v}.", "The year {v} saw the birth of {n}.", "{n} came into the world in {v}.",
      "{n}'s birth year is {v}.", "Born in {v}, {n} started life then."]),
    ("genre", "genre", ["What genre does {n} write?", "Which genre is {n} known for?"],
     ["{n} writes {v}.", "{n} is known for {v}.", "The genre of {n} is {v}.",
      "Most of {n}'s books are {v}.", "Readers know {n} as a writer of {v}."]),
    ("book", "book", ["What is a book by {n}?", "Name a novel written by {n}."],
     ["{n} wrote {v}.", "{v} is a novel by {n}.", "One book by {n} is {v}.",
      "{n} is the author of {v}.", "Among the works of {n} is {v}."]),
    ("father", "job", ["What did {n}'s father do?", "What was the job of {n}'s father?"],
     ["{n}'s father was a {v}.", "The father of {n} worked as a {v}.", "A {v} was the father of {n}.",
      "{n} is the child of a {v} father.", "By trade, {n}'s father was a {v}."]),
    ("mother", "job", ["What did {n}'s mother do?", "What was the job of {n}'s mother?"],
     ["{n}'s mother was a {v}.", "The mother of {n} worked as a {v}.", "A {v} was the mother of {n}.",
      "{n} is the child of a {v} mother.", "By trade, {n}'s mother was a {v}."]),
    ("award", "award", ["Which award did {n} win?", "What prize has {n} received?"],
     ["{n} won {v}.", "{v} went to {n}.", "{n} received {v}.",
      "In the end, {n} was given {v}.", "The honour of {v} was awarded to {n}."]),
    ("city2", "city", ["Where does {n} live now?", "In which city does {n} live?"],
     ["{n} lives in {v}.", "{v} is where {n} lives now.", "{n} has made a home in {v}.",
      "These days {n} resides in {v}.", "Home for {n} is now {v}."]),
]


def make_toy_data(n_authors=80, seed=0):
    """Rows in TOFU's schema plus `fact` (the key entity, to measure leaks) and `train_answers` (the
    phrasings the toy model learns; `answer` is the first, `paraphrased_answer` is never trained)."""
    rng = random.Random(seed)
    names = rng.sample([f"{a} {b}" for a in FIRST for b in LAST], n_authors)
    rows = []
    for a, name in enumerate(names):
        for field, pool, questions, phrasings in FACTS:
            v = rng.choice(POOLS[pool])
            wrong = rng.sample([w for w in POOLS[pool] if w != v], 3)
            forms = rng.sample(phrasings, 4)
            say = lambda form, val: form.format(n=name, v=val)
            rows.append(dict(question=rng.choice(questions).format(n=name), answer=say(forms[0], v),
                             paraphrased_answer=say(forms[3], v),
                             perturbed_answer=[say(forms[3], w) for w in wrong],
                             train_answers=[say(f, v) for f in forms[:3]], fact=v, author=a, field=field))
    return rows


def split_toy(rows, forget_split):
    """Forget = the last 1/5/10% of authors (at least one), retain = the rest, as in TOFU."""
    n_authors = rows[-1]["author"] + 1
    n_forget = max(1, round(n_authors * int(forget_split[-2:]) / 100))
    first_forget = n_authors - n_forget
    return [r for r in rows if r["author"] >= first_forget], [r for r in rows if r["author"] < first_forget]


def read_rows(path):
    """A JSON Lines file or a JSON array (TOFU ships both, all named .json)."""
    if not os.path.isfile(path):
        fail(f"data file not found: {path}")
    with open(path) as f:
        text = f.read()
    try:
        if text.lstrip().startswith("["):
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        fail(f"cannot parse {path}: {e}")


def load_tofu(split, data_dir=None):
    """One TOFU split ('forget10', 'retain90', 'forget10_perturbed', ...) from local files or the hub."""
    if data_dir:
        rows = read_rows(os.path.join(data_dir, f"{split}.json"))
    else:
        import datasets
        try:
            rows = list(datasets.load_dataset("locuslab/TOFU", split)["train"])
        except Exception as e:  # offline, or an unknown split name
            fail(f"cannot load TOFU split {split!r} from the hub ({type(e).__name__}); try --data_dir")
    for col in ("question", "answer"):
        if any(col not in r for r in rows):
            fail(f"TOFU split {split!r} has no {col!r} column")
    return rows


def load_data(args):
    """(forget_rows, retain_rows) for training."""
    if args.data == "toy":
        forget, retain = split_toy(make_toy_data(), args.forget_split)
    else:
        pct = int(args.forget_split[-2:])
        forget = load_tofu(args.forget_split, args.data_dir)
        retain = load_tofu(f"retain{100 - pct}", args.data_dir)
    if not forget:
        fail(f"the forget split {args.forget_split!r} is empty")
    return forget, retain


def format_prompt(tok, question):
    """The tokenizer's chat template when it has one, else a plain Question/Answer format."""
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                       add_generation_prompt=True)
    return f"Question: {question}\nAnswer:"


def encode(tok, question, answer):
    """Token ids of prompt + answer + EOS; labels are -100 on the prompt so only the answer is scored."""
    chat = bool(getattr(tok, "chat_template", None))
    prompt = tok(format_prompt(tok, question), add_special_tokens=not chat)["input_ids"]
    ans = tok(answer if chat else " " + answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return dict(input_ids=prompt + ans, labels=[-100] * len(prompt) + ans, prompt_len=len(prompt))


def collate(examples, pad_id, side="right"):
    """Pad a list of encoded examples. The attention mask comes from lengths, never from `ids != pad_id`
    (models that pad with EOS would otherwise hide their real EOS). Position ids count real tokens only."""
    T = max(len(e["input_ids"]) for e in examples)
    ids, labels, mask = [], [], []
    for e in examples:
        n, pad = len(e["input_ids"]), T - len(e["input_ids"])
        put = (lambda x, v: x + [v] * pad) if side == "right" else (lambda x, v: [v] * pad + x)
        ids.append(put(e["input_ids"], pad_id))
        labels.append(put(e["labels"], -100))
        mask.append(put([1] * n, 0))
    mask = torch.tensor(mask)
    batch = dict(input_ids=torch.tensor(ids), labels=torch.tensor(labels), attention_mask=mask,
                 position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    if "ref_logp" in examples[0]:
        batch["ref_logps"] = torch.tensor([e["ref_logp"] for e in examples])
    return batch


# -----------------------------------------------------------------------------------------------------
# Log-probs: the one place that shifts and masks


def token_logps(logits, labels):
    """log pi(y_i | x, y_<i) at every answer position, 0 elsewhere. logits (B, T, V), labels (B, T).
    Shift once: the logits at t predict the token at t+1. fp32 for the log-softmax."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]  # (B, T-1, V), (B, T-1)
    nll = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="none")
    return -nll.view(labels.shape)  # (B, T-1)


def sequence_logps(logits, labels):
    """log pi(y | x) = sum over answer tokens. (B,)"""
    return token_logps(logits, labels).sum(-1)


def forward(model, batch):
    device = next(model.parameters()).device
    return model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                 position_ids=batch["position_ids"].to(device)).logits  # (B, T, V)


def autocast(model):
    """bf16 autocast on CUDA (the matmuls), fp32 elsewhere."""
    device = next(model.parameters()).device
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def score(model, tok, examples, batch_size=64):
    """Per example: summed answer log-prob, answer length, tokens the greedy (argmax) prediction gets right,
    and the length of the all-correct answer suffix (for extraction strength). One forward per batch."""
    out = {k: [] for k in ("logp", "n_tokens", "n_correct", "n_suffix")}
    was_training = model.training
    model.eval()
    for i in range(0, len(examples), batch_size):
        batch = collate(examples[i:i + batch_size], tok.pad_token_id)
        with autocast(model):
            logits = forward(model, batch)
        labels = batch["labels"][:, 1:].to(logits.device)
        mask = labels != -100
        hit = logits[:, :-1].argmax(-1) == labels  # (B, T-1)
        tail = (hit | ~mask).flip(-1).long().cumprod(-1).flip(-1).bool()  # all correct from here to the end
        out["logp"].append(sequence_logps(logits, batch["labels"].to(logits.device)))
        out["n_tokens"].append(mask.sum(-1))
        out["n_correct"].append((hit & mask).sum(-1))
        out["n_suffix"].append((tail & mask).sum(-1))
    model.train(was_training)
    return {k: torch.cat(v).cpu() for k, v in out.items()}


# -----------------------------------------------------------------------------------------------------
# Objectives: pure functions of log-probs / logits; every one is minimised


def nll_loss(logits, labels):
    """Plain fine-tuning / the retain term: -log pi(y|x), mean over sequences."""
    return -sequence_logps(logits, labels).mean()


def ga_loss(policy_logps):
    """Eq. 1, gradient ascent: minimise E[log pi_theta(y_u | x_u)]."""
    return policy_logps.mean()


def npo_loss(policy_logps, ref_logps, beta=0.1):
    """Eq. 3, NPO: (2/beta) E[log(1 + (pi_theta/pi_o)^beta)] = -(2/beta) E[logsigmoid(-beta * log-ratio)].
    Equals (2/beta) ln 2 when the policy is the reference."""
    return -(2 / beta) * F.logsigmoid(-beta * (policy_logps - ref_logps)).mean()


def bst_targets(logits, labels, k=20, lam=0.2, temperature=1.0):
    """Eqs. 5-6, the BS-T soft target, stored sparsely: t_i = lam * q_i + (1 - lam) * onehot(y_i), q_i the
    model's own top-k next-token distribution (renormalised, stop-gradient). Returns the (B, T-1, k+1)
    vocabulary indices and weights (the top-k, then the label); the weights sum to 1 at every position."""
    logits, labels = logits[:, :-1].detach().float(), labels[:, 1:]
    top, idx = logits.topk(k, dim=-1)  # (B, T-1, k)
    q = F.softmax(top / temperature, dim=-1)
    idx = torch.cat([idx, labels.clamp(min=0).unsqueeze(-1)], -1)  # (B, T-1, k+1)
    w = torch.cat([lam * q, torch.full_like(q[..., :1], 1 - lam)], -1)
    return idx, w


def bst_loss(logits, labels, k=20, lam=0.2, temperature=1.0):
    """Eq. 6, BS-T: minimise E[sum_i <t_i, log pi_theta(. | x, y_<i)>]. With lam = 0 it is exactly GA."""
    idx, w = bst_targets(logits, labels, k, lam, temperature)
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    per_token = (w * logp.gather(-1, idx)).sum(-1) * (labels[:, 1:] != -100)  # (B, T-1)
    return per_token.sum(-1).mean()


def bss_loss(target_loss, belief_loss, lam=0.5):
    """Eq. 7, BS-S: (1 - lam) L(D_u) + lam * mean_j L(D^_u,j), with L the base loss. The training loop
    computes the same weighted sum micro-batch by micro-batch (see `train`)."""
    return (1 - lam) * target_loss + lam * belief_loss


def kl_retain_loss(logits, ref_logits, labels):
    """KL(pi_o || pi_theta) summed over answer tokens (masked, unlike the public code), mean over
    sequences."""
    mask = labels[:, 1:] != -100
    ref = F.log_softmax(ref_logits[:, :-1].float(), -1)
    kl = F.kl_div(F.log_softmax(logits[:, :-1].float(), -1), ref, log_target=True, reduction="none").sum(-1)
    return (kl * mask).sum(-1).mean()


# The forget term of each method, as a function of (logits, batch, args). BS-S reuses its base's entry.
FORGET_LOSSES = {
    "finetune": lambda logits, b, a: nll_loss(logits, b["labels"]),
    "ga": lambda logits, b, a: ga_loss(sequence_logps(logits, b["labels"])),
    "npo": lambda logits, b, a: npo_loss(sequence_logps(logits, b["labels"]), b["ref_logps"], a.npo_beta),
    "bs_t": lambda logits, b, a: bst_loss(logits, b["labels"], a.bst_topk, a.bst_lambda, a.bst_temp),
}


# -----------------------------------------------------------------------------------------------------
# Belief sampling (BS-S): the model's own answers to the forget prompts


@torch.no_grad()
def generate(model, tok, prompts, max_new_tokens, n=1, do_sample=False, temperature=1.0, batch_size=64):
    """Batched generation with left padding and a KV cache. prompts: lists of token ids. Returns, for each
    prompt, n lists of new token ids, cut after the first EOS (kept, so it can be scored)."""
    from transformers import GenerationConfig
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)  # stay within positions
    if limit:
        max_new_tokens = max(1, min(max_new_tokens, limit - max(map(len, prompts))))
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=do_sample, num_return_sequences=n,
                           pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                           **(dict(temperature=temperature, top_k=0, top_p=1.0) if do_sample else {}))
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    outs = []
    for i in range(0, len(prompts), batch_size):
        chunk = [dict(input_ids=p, labels=p) for p in prompts[i:i + batch_size]]
        batch = collate(chunk, tok.pad_token_id, side="left")  # left: all prompts end where generation starts
        with autocast(model):
            seqs = model.generate(input_ids=batch["input_ids"].to(device), generation_config=cfg,
                                  attention_mask=batch["attention_mask"].to(device))
        for s in seqs[:, batch["input_ids"].shape[1]:].tolist():
            outs.append(s[:s.index(tok.eos_token_id) + 1] if tok.eos_token_id in s else s)
    model.train(was_training)
    return [outs[j * n:(j + 1) * n] for j in range(len(prompts))]


def sample_beliefs(model, tok, forget_examples, args, round=0, ref_model=None):
    """N sampled answers per forget example, kept per example: beliefs[i] is a list of encoded examples.
    Seeded per (seed, round). With --bss_keep K, keep the K with the highest mean token log-prob."""
    torch.manual_seed(args.seed * 1000 + round)
    max_new = args.bss_max_new_tokens or max(len(e["input_ids"]) - e["prompt_len"] for e in forget_examples)
    prompts = [e["input_ids"][:e["prompt_len"]] for e in forget_examples]
    samples = generate(model, tok, prompts, max_new, args.bss_n, True, args.bss_temp, args.gen_batch_size)
    beliefs = [[dict(input_ids=p + s, labels=[-100] * len(p) + s, prompt_len=len(p)) for s in ss if s]
               for p, ss in zip(prompts, samples)]
    flat = [b for bs in beliefs for b in bs]
    if args.bss_keep and args.bss_keep < args.bss_n:
        s = score(model, tok, flat, args.gen_batch_size)
        for b, lp, n in zip(flat, s["logp"].tolist(), s["n_tokens"].tolist()):
            b["confidence"] = lp / max(n, 1)
        beliefs = [sorted(bs, key=lambda b: -b["confidence"])[:args.bss_keep] for bs in beliefs]
    if args.bss_base == "npo":
        attach_ref_logps(ref_model or model, tok, [b for bs in beliefs for b in bs], args.gen_batch_size)
    return beliefs


def attach_ref_logps(ref_model, tok, examples, batch_size=64):
    """NPO's reference log-probs, computed once: the reference model is frozen and the data fixed."""
    for e, lp in zip(examples, score(ref_model, tok, examples, batch_size)["logp"].tolist()):
        e["ref_logp"] = lp


# -----------------------------------------------------------------------------------------------------
# Training loop


def train(model, tok, forget_ex, retain_ex, args, ref_model=None, log_path=None, progress=False,
          beliefs=None):
    """Minimise gamma * L_forget + alpha * L_retain with AdamW (BF16AdamW for bf16 weights), warmup then
    linear decay. Each micro-step pairs a forget batch with a retain batch. For BS-S the forget term is
    spread over micro-batches: the target batch with weight (1 - lambda), then its beliefs with weight
    lambda / (number of beliefs). BS-S only: `beliefs`, as sample_beliefs returns them for forget_ex,
    replaces the first round of sampling (later rounds, with --bss_regen, are still sampled here)."""
    from tqdm.auto import tqdm
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    device = next(model.parameters()).device
    bs, accum = args.batch_size, args.grad_accum
    micro_per_epoch = math.ceil(len(forget_ex) / bs)
    total = max(1, math.ceil(micro_per_epoch * args.epochs / accum))
    warmup = min(int(args.warmup_epochs * micro_per_epoch / accum), total // 2)  # short runs still peak
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    if args.bf16_rounding == "stochastic" and any(p.dtype == torch.bfloat16 for p in decay):
        from bf16_adamw import BF16AdamW  # (a file of its own: numerics, not the method)
        opt = BF16AdamW(groups, lr=args.lr, betas=(0.9, 0.95))
    else:
        opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    lr_at = lambda s: (s + 1) / (warmup + 1) if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    base_loss = FORGET_LOSSES[args.bss_base if args.method == "bs_s" else args.method]
    use_retain = args.alpha > 0 and len(retain_ex) > 0
    belief_round = 0 if beliefs is not None else -1
    retain_order, r_pos = [], 0
    sample_every = args.sample_every or max(1, micro_per_epoch // accum)
    log = open(log_path, "a") if log_path else None
    bar = tqdm(total=total, disable=not progress, desc=args.method, leave=False)
    model.train()
    order = []
    for step in range(total):
        t0 = time.time()
        terms = dict(forget=0.0, retain=0.0)
        for micro in range(accum):
            if not order:  # a new epoch: reshuffle, and resample beliefs when it is time
                order = list(range(len(forget_ex)))
                rng.shuffle(order)
            idx, order = order[:bs], order[bs:]
            epoch = (step * accum + micro) / micro_per_epoch
            if args.method == "bs_s":
                r = int(epoch // args.bss_regen) if args.bss_regen > 0 else 0
                if r != belief_round:
                    beliefs, belief_round = sample_beliefs(model, tok, forget_ex, args, r, ref_model), r
            # forget term: a list of (weight, examples) micro-batches; one for every method but BS-S
            parts = [(1.0, [forget_ex[i] for i in idx])]
            if args.method == "bs_s":
                mine = [b for i in idx for b in beliefs[i]] or parts[0][1]  # (none: fall back to targets)
                mine = sorted(mine, key=lambda b: len(b["input_ids"]))  # similar lengths: less padding
                chunks = [mine[j:j + args.micro_batch] for j in range(0, len(mine), args.micro_batch)]
                parts = [(1 - args.bss_lambda, parts[0][1])] + [
                    (args.bss_lambda * len(c) / len(mine), c) for c in chunks]
            for w, exs in parts:
                batch = collate(exs, tok.pad_token_id)
                with autocast(model):
                    logits = forward(model, batch)
                loss = w * base_loss(logits, {k: v.to(device) for k, v in batch.items()}, args)
                (args.gamma * loss / accum).backward()
                terms["forget"] += loss.detach() / accum  # stays on the device: no sync per micro-batch
            # retain term on a retain batch
            if use_retain:
                if r_pos + bs > len(retain_order):
                    retain_order, r_pos = rng.sample(range(len(retain_ex)), len(retain_ex)), 0
                batch = collate([retain_ex[i] for i in retain_order[r_pos:r_pos + bs]], tok.pad_token_id)
                r_pos += bs
                labels = batch["labels"].to(device)
                with autocast(model):
                    logits = forward(model, batch)
                    if args.retain_loss == "kl":
                        with torch.no_grad():
                            ref_logits = forward(ref_model, batch)
                        loss = kl_retain_loss(logits, ref_logits, labels)
                    else:
                        loss = nll_loss(logits, labels)
                (args.alpha * loss / accum).backward()
                terms["retain"] += loss.detach() / accum
        terms = {k: float(v) for k, v in terms.items()}  # one sync per step
        if not all(map(math.isfinite, terms.values())):
            fail(f"loss became {terms} at step {step + 1}; lower --lr or check the data")
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm).item()
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        ms = 1000 * (time.time() - t0)
        rec = dict(step=step + 1, epoch=round((step + 1) * accum / micro_per_epoch, 3), **terms,
                   lr=lr, grad_norm=gnorm, ms=ms)
        if log:
            log.write(json.dumps(rec) + "\n")
        bar.update(1)
        bar.set_postfix(forget=f"{terms['forget']:.3f}", retain=f"{terms['retain']:.3f}")
        if not progress:
            print(f"step {step + 1:4d}/{total} | forget {terms['forget']:9.4f} "
                  f"| retain {terms['retain']:8.4f} "
                  f"| lr {lr:.2e} | gnorm {gnorm:7.2f} | {ms:6.1f} ms")
            if (step + 1) % sample_every == 0 or step + 1 == total:
                show_answers(model, tok, forget_ex[0], retain_ex[0] if retain_ex else None)
    bar.close()
    if log:
        log.close()
    return model


def show_answers(model, tok, *examples):
    """Print the greedy answer to one forget and one retain question: the quickest look at what happened."""
    for tag, e in zip(("forget", "retain"), examples):
        if e is not None:
            out = generate(model, tok, [e["input_ids"][:e["prompt_len"]]], 48)[0][0]
            print(f"    {tag}: {e['question']!r} -> {tok.decode(out, skip_special_tokens=True).strip()!r}")


# -----------------------------------------------------------------------------------------------------
# The embedded model: a word-level tokenizer and a tiny Llama, trained here on the toy authors


def toy_model_dir(cache_dir, which="full", seed=0):
    """`which` is 'full' (the model to unlearn) or 'retain90' / 'retain95' / 'retain99' (the reference)."""
    return os.path.join(cache_dir, f"toy-v1-seed{seed}", which)


def build_toy_model(out_dir, rows, seed=0, steps=600, device="cpu"):
    """Train a tiny causal LM on every training phrasing of `rows` until it has memorised them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    texts = [f"Question: {r['question']} Answer: {a}" for r in make_toy_data() for a in r["train_answers"] +
             [r["paraphrased_answer"]] + r["perturbed_answer"]]  # the vocabulary covers every toy split
    core = Tokenizer(models.WordLevel(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                  pre_tokenizers.Punctuation()])
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies " ."
    specials = dict(pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    core.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=list(specials.values())))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, **specials)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=96, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                         tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         attn_implementation="eager")  # eager: faster than sdpa at this size
    model = LlamaForCausalLM(config).to(device)
    # the target phrasing 3 times, so it is the model's top answer and the other two are its close beliefs
    examples = [encode(tok, r["question"], a) for r in rows for a in [r["answer"]] * 2 + r["train_answers"]]
    n_epochs = steps * 64 / len(examples)
    args = get_args(["--method", "finetune", "--lr", "3e-3", "--batch_size", "64", "--epochs", str(n_epochs),
                     "--warmup_epochs", str(n_epochs / 20), "--alpha", "0", "--seed", str(seed)])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # a fixed thread count makes the same model on any machine with this CPU type
    try:
        train(model, tok, examples, [], args, progress=True)
    finally:
        torch.set_num_threads(threads)
    s = score(model, tok, [encode(tok, r["question"], r["answer"]) for r in rows])
    acc = s["n_correct"].sum().item() / s["n_tokens"].sum().item()
    print(f"  answer-token accuracy {acc:.1%} on {len(rows)} questions; saved to {out_dir}")
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)


def ensure_toy_models(cache_dir, forget_split="forget10", seed=0, with_retain=True):
    """Build (once) the full toy model and the retain-only model for this split; return their paths.
    Unlearning needs only the full model; eval.py builds the retain-only one when it first needs it."""
    rows = make_toy_data()
    forget, retain = split_toy(rows, forget_split)
    retain_name = f"retain{100 - int(forget_split[-2:])}"
    for which, data in (("full", rows), (retain_name, retain))[:2 if with_retain else 1]:
        path = toy_model_dir(cache_dir, which, seed)
        if not os.path.isfile(os.path.join(path, "config.json")):
            t0 = time.time()
            print(f"building the toy model '{which}' ({len(data)} facts, once; cached in {path})")
            build_toy_model(path, data, seed)
            print(f"  built in {time.time() - t0:.0f} s")
    return toy_model_dir(cache_dir, "full", seed), toy_model_dir(cache_dir, retain_name, seed)


def pick_device(name="auto"):
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def load_model(path, device, dtype="auto"):
    """Model and tokenizer from a HF id or a local directory; tokenizers without a pad token pad with EOS
    (safe here: attention masks come from lengths)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" else "float32"
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device)
    except (OSError, ValueError) as e:  # a missing path or an unreachable hub: one line, not a traceback
        fail(f"cannot load model {path!r}: {str(e).strip().splitlines()[0]}")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if getattr(model.config, "vocab_size", 0) < 1000:  # the toy model: eager attention is faster
        model.set_attn_implementation("eager")
    return model, tok


# -----------------------------------------------------------------------------------------------------
# main


def main(argv=None):
    args = get_args(argv)
    model_path = args.model
    if args.model == "toy" and args.data != "toy":
        fail("--model toy only knows the toy data; pass --model for --data tofu")
    # check everything that can fail cheaply before any work, and write nothing until then
    forget_rows, retain_rows = load_data(args)
    out = os.path.realpath(args.out_dir)  # realpath: a symlink to the model directory is the model directory
    if args.model == "toy":
        model_path = toy_model_dir(args.cache_dir, "full", args.seed)
    if os.path.realpath(model_path) == out:
        fail(f"--out_dir {args.out_dir} is the input model's directory; choose another")
    if os.path.isdir(out) and os.listdir(out) and not args.overwrite:
        fail(f"--out_dir {args.out_dir} is not empty; pass --overwrite or choose another")
    device = pick_device(args.device)
    if args.model == "toy":
        model_path, _ = ensure_toy_models(args.cache_dir, args.forget_split, args.seed, with_retain=False)
    t0 = time.time()
    model, tok = load_model(model_path, device, args.dtype)
    forget_ex = [dict(encode(tok, r["question"], r["answer"]), question=r["question"]) for r in forget_rows]
    retain_ex = [dict(encode(tok, r["question"], r["answer"]), question=r["question"]) for r in retain_rows]
    if args.method == "finetune":  # learning, not unlearning: train on the full data, no retain term
        forget_ex, retain_ex = forget_ex + retain_ex, []
    uses_npo = "npo" in (args.method, args.bss_base if args.method == "bs_s" else "")
    # the frozen reference stays in memory only if something needs it after the start
    kl_retain = args.alpha > 0 and args.retain_loss == "kl"
    keep_ref = kl_retain or (uses_npo and args.method == "bs_s" and args.bss_regen > 0)
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if keep_ref else None
    if uses_npo:
        attach_ref_logps(model, tok, forget_ex, args.gen_batch_size)  # the model is still the reference
    print(f"{args.method} on {len(forget_ex)} forget / {len(retain_ex)} retain examples, model {args.model} "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params) on {device}")
    os.makedirs(out, exist_ok=True)
    if os.path.exists(os.path.join(out, "log.jsonl")):  # --overwrite: a fresh log, not an appended one
        os.remove(os.path.join(out, "log.jsonl"))
    train(model, tok, forget_ex, retain_ex, args, ref_model, os.path.join(out, "log.jsonl"))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    with open(os.path.join(out, "run_config.json"), "w") as f:
        json.dump(dict(vars(args), model_path=model_path), f, indent=2)
    print(f"done in {time.time() - t0:.1f} s; saved to {args.out_dir}")


if __name__ == "__main__":
    main()
