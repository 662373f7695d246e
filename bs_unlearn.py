"""
bs_unlearn.py: LLM unlearning with LLM beliefs, in one file.

Reference implementation of "LLM Unlearning with LLM Beliefs" (Li et al., ICLR 2026,
https://arxiv.org/abs/2510.19422). Gradient ascent (GA) and NPO lower the probability of a target answer,
but the mass they remove is *squeezed* into the model's own high-likelihood rephrasings of the same fact,
so the fact survives in other words. Bootstrapping (BS) also pushes down the model's beliefs:
BS-T at token level (its own top-k next tokens as soft targets), BS-S at sequence level (its own sampled
answers). Read top to bottom: config -> data -> log-probs -> objectives -> belief sampling -> training
loop -> main. Two files hold what is not the method: toy_world.py, the embedded example (fictitious
authors and a tiny model that memorises them, built offline), plumbing.py (errors, files, models) and
scaling.py (many processes through torchrun, LoRA adapters through peft).

Run (fully offline; the first run builds and caches a tiny model on generated data, ~1 min on 2 CPU cores):
    python bs_unlearn.py --method bs_s           # also: ga, npo, bs_t, finetune
    python eval.py runs/bs_s                     # metrics, see eval.py
TOFU on a GPU (paper settings):
    python bs_unlearn.py --data tofu --forget_split forget10 --method bs_s \
        --model open-unlearning/tofu_Llama-3.2-1B-Instruct_full --lr 1e-5 --epochs 10 \
        --batch_size 8 --grad_accum 4 --warmup_epochs 1 --weight_decay 0.01
On K GPUs (data-parallel; --fsdp also shards weights, grads and AdamW state), --batch_size is per GPU:
    torchrun --standalone --nproc_per_node=4 bs_unlearn.py ... --batch_size 2 --grad_accum 4 [--fsdp]
LoRA adapters, merged into the saved model (--save_adapter keeps them alone too): ... --lora_r 16 --lr 1e-4

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
8. On K ranks a global batch that K does not divide is padded with repeats (as DistributedSampler does), and
   each rank samples beliefs for its own share of the forget set, so they differ from a 1-process run's.
"""
import argparse
import contextlib
import copy
import functools
import json
import math
import os
import random
import time

import torch
import torch.nn.functional as F

# not the method: one-line errors (also for bad flags: Parser, number), row files, loading and saving models,
# writing folders whole (bs.quiet and bs.load_tokenizer are for eval.py and the notebooks)
from plumbing import (Parser, atomic_dir, check_writable, fail, load_model, load_tokenizer,  # noqa: F401
                      number, pick_device, quiet, read_rows, save_model)
import scaling  # torchrun's ranks and FSDP2, LoRA: a few calls below, each a no-op in a plain run

# -----------------------------------------------------------------------------------------------------
# Config

METHODS = ["ga", "npo", "bs_t", "bs_s", "finetune"]


def get_args(argv=None):
    p = Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    count, positive, share = number(int, 1), number(float, 0, above=True), number(float, 0, 1)
    # what to unlearn, from which model
    p.add_argument("--method", default="bs_s", choices=METHODS, help="finetune: plain NLL on all the data")
    p.add_argument("--model", default="toy",
                   help="'toy' (built and cached offline), a HF id, a local folder\n"
                        "or a .gguf file (dequantized; the output is a normal HF folder)")
    p.add_argument("--data", default="toy", choices=["toy", "tofu"], help="generated toy authors or TOFU")
    p.add_argument("--data_dir", default=None, help="read TOFU splits from local files instead of the hub")
    p.add_argument("--forget_split", default="forget10", choices=["forget01", "forget05", "forget10"],
                   help="forget the last 1/5/10%% of authors; retain = the rest")
    p.add_argument("--forget_pct", type=int, choices=[1, 5, 10], default=None, help="same as --forget_split")
    # the prompt: open-unlearning's TOFU models were trained with "You are a helpful assistant." and, for
    # Llama-3 templates (which otherwise write today's date into every prompt), the date "10 Apr 2025"
    p.add_argument("--system_prompt", default=None, help="a system turn before each question (default: none)")
    p.add_argument("--date_string", default=None, help="the date for chat templates that print one")
    p.add_argument("--out_dir", default=None, help="where to save the model (default runs/<method>)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out_dir at the end")
    # optimisation (defaults: the embedded toy example on a CPU; see the docstring for TOFU)
    p.add_argument("--epochs", type=positive, default=10)
    p.add_argument("--batch_size", type=count, default=16, help="forget examples per micro-step (per rank)")
    p.add_argument("--grad_accum", type=count, default=1, help="micro-steps per optimizer step")
    p.add_argument("--lr", type=positive, default=3e-4)  # toy: 1e-4 forgets nothing, 5e-4 wrecks retain
    p.add_argument("--warmup_epochs", type=number(float, 0), default=1.0, help="linear warmup, then decay")
    p.add_argument("--weight_decay", type=number(float, 0), default=0.01)
    p.add_argument("--max_grad_norm", type=positive, default=1.0)
    # loss weights and the retain term
    p.add_argument("--gamma", type=number(float, 0), default=1.0, help="weight of the forget term")
    p.add_argument("--alpha", type=number(float, 0), default=1.0, help="weight of the retain term (0: none)")
    p.add_argument("--retain_loss", default="nll", choices=["nll", "kl"], help="NLL or KL(pi_o || pi_theta)")
    # objectives
    p.add_argument("--npo_beta", type=positive, default=0.1)
    p.add_argument("--bst_topk", type=count, default=20)
    p.add_argument("--bst_lambda", type=share, default=0.2, help="weight of the model's top-k beliefs")
    p.add_argument("--bst_temp", type=positive, default=1.0, help="temperature of the top-k beliefs")
    p.add_argument("--bss_lambda", type=share, default=0.5, help="weight of the sampled-belief term")
    p.add_argument("--bss_base", default="bs_t", choices=["ga", "npo", "bs_t"], help="BS-S's base loss")
    p.add_argument("--bss_n", type=count, default=3, help="beliefs sampled per forget prompt")
    p.add_argument("--bss_keep", type=number(int, 0), default=0, help="keep the K most confident (0: all)")
    p.add_argument("--bss_temp", type=positive, default=1.0, help="sampling temperature")
    p.add_argument("--bss_max_new_tokens", type=number(int, 0), default=0, help="0: the longest target")
    p.add_argument("--bss_regen", type=number(float, 0), default=0, help="resample every R epochs (0: never)")
    p.add_argument("--micro_batch", type=count, default=32, help="sequences per belief forward/backward")
    # system
    p.add_argument("--device", default="auto", help="auto | cuda | mps | cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="weights: auto = bf16 on CUDA, fp32 elsewhere")
    p.add_argument("--bf16_rounding", default="stochastic", choices=["stochastic", "nearest"],
                   help="how AdamW stores new bf16 weights: stochastic (BF16AdamW) or nearest (torch's\n"
                        "AdamW, as bf16 trainers do; it drops updates under half a bf16 step)")
    p.add_argument("--gen_batch_size", type=count, default=64)
    # bigger models: run under torchrun for data parallel; LoRA trains adapters on a frozen model
    p.add_argument("--fsdp", action="store_true", help="under torchrun: shard weights, grads, AdamW (FSDP2)")
    p.add_argument("--lora_r", type=number(int, 0), default=0, help="LoRA rank (0: train all weights)")
    p.add_argument("--lora_alpha", type=positive, default=None, help="LoRA scale alpha / r (default 2 r)")
    p.add_argument("--lora_targets", default=scaling.LORA_TARGETS, help="comma-separated module names")
    p.add_argument("--save_adapter", action="store_true", help="also save the adapters, in <out_dir>/adapter")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample_every", type=number(int, 0), default=0,
                   help="print greedy answers every N steps (0: once an epoch)")
    p.add_argument("--cache_dir", help="the toy models' home ($BS_UNLEARN_CACHE, else ~/.cache/bs_unlearn)",
                   default=os.environ.get("BS_UNLEARN_CACHE", os.path.expanduser("~/.cache/bs_unlearn")))
    args = p.parse_args(argv)
    if args.bss_keep > args.bss_n:
        fail(f"--bss_keep {args.bss_keep} is more than --bss_n {args.bss_n}")
    if args.fsdp and args.lora_r:
        fail("--fsdp with --lora_r is not supported; LoRA's adapters and their AdamW state are small anyway")
    if args.save_adapter and not args.lora_r:
        fail("--save_adapter needs --lora_r")
    args.lora_alpha = args.lora_alpha or 2 * args.lora_r
    if args.forget_pct is not None:
        args.forget_split = f"forget{args.forget_pct:02d}"
    args.out_dir = args.out_dir or os.path.join("runs", args.method)
    return args


# -----------------------------------------------------------------------------------------------------
# Data: TOFU (or the embedded toy authors of toy_world.py), encoded for a causal LM

def load_tofu(split, data_dir=None):
    """One TOFU split ('forget10', 'retain90', 'forget10_perturbed', ...) from local files or the hub."""
    if data_dir:
        return read_rows(os.path.join(data_dir, f"{split}.json"))
    import datasets
    try:
        rows = list(datasets.load_dataset("locuslab/TOFU", split)["train"])
    except Exception as e:  # offline, or an unknown split name
        fail(f"cannot load TOFU split {split!r} from the hub ({type(e).__name__}); try --data_dir")
    for col in ("question", "answer"):
        if rows and col not in rows[0]:
            fail(f"TOFU split {split!r} has no {col!r} column")
    return rows


def load_data(args):
    """(forget_rows, retain_rows) for training."""
    if args.data == "toy":  # the embedded example (toy_world.py)
        import toy_world
        forget, retain = toy_world.split_toy(toy_world.make_toy_data(), args.forget_split)
    else:
        pct = int(args.forget_split[-2:])
        forget = load_tofu(args.forget_split, args.data_dir)
        retain = load_tofu(f"retain{100 - pct}", args.data_dir)
    if not forget:
        fail(f"the forget split {args.forget_split!r} is empty")
    return forget, retain


def format_prompt(tok, question):
    """The tokenizer's chat template when it has one, else a plain Question/Answer format. The system prompt
    and the date come from the tokenizer (`load_model` puts them there), so training and evaluation of a
    run always format prompts alike."""
    system, date = getattr(tok, "system_prompt", None), getattr(tok, "date_string", None)
    if not getattr(tok, "chat_template", None):
        return (f"{system}\n" if system else "") + f"Question: {question}\nAnswer:"
    turns = [{"role": "system", "content": system}] if system else []
    turns.append({"role": "user", "content": question})
    extra = dict(date_string=date) if date and "date_string" in str(tok.chat_template) else {}  # if used
    return tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True, **extra)


def encode(tok, question, answer):
    """Token ids of prompt + answer + EOS; labels are -100 on the prompt so only the answer is scored. The
    answer is tokenized apart from the prompt (no token spans the boundary) and ends with one EOS, the
    tokenizer's own (<|eot_id|> for Llama-3 instruct, <|im_end|> for ChatML models). A chat template writes
    its own BOS, so the prompt gets no second one."""
    chat = bool(getattr(tok, "chat_template", None))
    prompt = tok(format_prompt(tok, question), add_special_tokens=not chat)["input_ids"]
    ans = tok(answer if chat else " " + answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return dict(input_ids=prompt + ans, labels=[-100] * len(prompt) + ans, prompt_len=len(prompt))


def encode_rows(tok, rows):
    """Encode each row's question and answer, keeping the question for the printed samples."""
    return [dict(encode(tok, r["question"], r["answer"]), question=r["question"]) for r in rows]


def collate(examples, pad_id, side="right"):
    """Pad a list of encoded examples. The attention mask comes from lengths, never from `ids != pad_id`
    (models that pad with EOS would otherwise hide their real EOS). Position ids count real tokens only."""
    T = max(len(e["input_ids"]) for e in examples)
    ids, labels, mask = [], [], []
    for e in examples:
        n, pad = len(e["input_ids"]), T - len(e["input_ids"])
        if side == "right":
            ids.append(e["input_ids"] + [pad_id] * pad)
            labels.append(e["labels"] + [-100] * pad)
            mask.append([1] * n + [0] * pad)
        else:
            ids.append([pad_id] * pad + e["input_ids"])
            labels.append([-100] * pad + e["labels"])
            mask.append([0] * pad + [1] * n)
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


def autocast(model):
    """bf16 autocast on CUDA (the matmuls), fp32 elsewhere."""
    device = next(model.parameters()).device
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def forward(model, batch):
    device = next(model.parameters()).device
    with autocast(model):
        return model(input_ids=batch["input_ids"].to(device), position_ids=batch["position_ids"].to(device),
                     attention_mask=batch["attention_mask"].to(device)).logits  # (B, T, V)


@torch.no_grad()
def score(model, tok, examples, batch_size=64):
    """Per example: summed answer log-prob, answer length, tokens the greedy (argmax) prediction gets right,
    and the length of the all-correct answer suffix (for extraction strength). One forward per batch."""
    out = {k: [] for k in ("logp", "n_tokens", "n_correct", "n_suffix")}
    was_training, starts = model.training, list(range(0, len(examples), batch_size))
    n = len(starts)
    if scaling.is_sharded(model):  # FSDP: as many forwards as the busiest rank (each is a collective)
        starts += [0] * (max(scaling.counts(n)) - n)
    model.eval()
    for i in starts:
        batch = collate(examples[i:i + batch_size], tok.pad_token_id)
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
    scaling.reshard(model)
    return {k: torch.cat(v[:n]).cpu() for k, v in out.items()}  # (the extra forwards' results dropped)


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
    top, idx = logits.topk(min(k, logits.shape[-1]), dim=-1)  # (B, T-1, k)
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
    """Eq. 7, BS-S: (1 - lam) L(D_u) + lam * mean_j L(D^_u,j), with L the base loss (BS-T by default)."""
    return (1 - lam) * target_loss + lam * belief_loss


def kl_retain_loss(logits, ref_logits, labels):
    """KL(pi_o || pi_theta) summed over answer tokens (masked, unlike the public code), mean over
    sequences."""
    mask = labels[:, 1:] != -100
    ref = F.log_softmax(ref_logits[:, :-1].float(), -1)
    kl = F.kl_div(F.log_softmax(logits[:, :-1].float(), -1), ref, log_target=True, reduction="none").sum(-1)
    return (kl * mask).sum(-1).mean()


def forget_loss(logits, batch, method, args):
    """The forget term of `method` on one batch (BS-S applies its base method to targets and beliefs)."""
    if method == "finetune":
        return nll_loss(logits, batch["labels"])
    if method == "bs_t":
        return bst_loss(logits, batch["labels"], args.bst_topk, args.bst_lambda, args.bst_temp)
    policy_logps = sequence_logps(logits, batch["labels"])  # (B,)
    if method == "npo":
        return npo_loss(policy_logps, batch["ref_logps"], args.npo_beta)
    return ga_loss(policy_logps)


def retain_loss(logits, batch, args, ref_model=None):
    """The retain term: NLL of the retain answers, or KL to the frozen starting model (--retain_loss kl)."""
    if args.retain_loss == "kl":
        with torch.no_grad():
            ref_logits = forward(ref_model, batch)
        return kl_retain_loss(logits, ref_logits, batch["labels"])
    return nll_loss(logits, batch["labels"])


def needs_ref_logps(args):
    """NPO (alone or as BS-S's base) compares with the starting model's log-probs."""
    return args.method == "npo" or (args.method == "bs_s" and args.bss_base == "npo")


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
    sampling = dict(temperature=temperature, top_k=0, top_p=1.0) if do_sample else {}  # plain sampling
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=do_sample, num_return_sequences=n,
                           pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **sampling)
    was_training, device = model.training, next(model.parameters()).device
    synced = dict(synced_gpus=True) if scaling.is_sharded(model) else {}  # FSDP: step until every rank ends
    model.eval()
    outs = []
    for i in range(0, len(prompts), batch_size):
        chunk = [dict(input_ids=p, labels=p) for p in prompts[i:i + batch_size]]
        batch = collate(chunk, tok.pad_token_id, side="left")  # left: all prompts end where generation starts
        with autocast(model):
            seqs = model.generate(input_ids=batch["input_ids"].to(device), generation_config=cfg,
                                  attention_mask=batch["attention_mask"].to(device), **synced)
        for s in seqs[:, batch["input_ids"].shape[1]:].tolist():
            outs.append(s[:s.index(tok.eos_token_id) + 1] if tok.eos_token_id in s else s)
    model.train(was_training)
    scaling.reshard(model)
    return [outs[j * n:(j + 1) * n] for j in range(len(prompts))]


def sample_beliefs(model, tok, forget_examples, args, round=0, ref_model=None):
    """N sampled answers per forget example, kept per example: beliefs[i] is a list of encoded examples.
    Seeded per (seed, round, rank). With --bss_keep K, keep the K with the highest mean token log-prob."""
    torch.manual_seed(args.seed * 1000 + round + 1_000_003 * scaling.rank())
    max_new = args.bss_max_new_tokens or max(len(e["input_ids"]) - e["prompt_len"] for e in forget_examples)
    prompts = [e["input_ids"][:e["prompt_len"]] for e in forget_examples]
    samples = generate(model, tok, prompts, max_new, n=args.bss_n, do_sample=True,
                       temperature=args.bss_temp, batch_size=args.gen_batch_size)
    beliefs = [[dict(input_ids=p + s, labels=[-100] * len(p) + s, prompt_len=len(p)) for s in ss if s]
               for p, ss in zip(prompts, samples)]
    flat = [b for bs in beliefs for b in bs]
    if args.bss_keep and args.bss_keep < args.bss_n:
        s = score(model, tok, flat, args.gen_batch_size)
        for b, lp, n in zip(flat, s["logp"].tolist(), s["n_tokens"].tolist()):
            b["confidence"] = lp / max(n, 1)
        beliefs = [sorted(bs, key=lambda b: -b["confidence"])[:args.bss_keep] for bs in beliefs]
    if needs_ref_logps(args):
        attach_ref_logps(ref_model or model, tok, [b for bs in beliefs for b in bs], args.gen_batch_size)
    return beliefs


def attach_ref_logps(ref_model, tok, examples, batch_size=64, split=False):
    """NPO's reference log-probs, computed once: the reference model is frozen and the data fixed. With
    split=True each of torchrun's ranks scores its share, and all get every example's."""
    def ref_logps(part):
        return score(ref_model, tok, part, batch_size)["logp"].tolist()
    logps = scaling.gather(ref_logps, examples) if split else ref_logps(examples)
    for e, lp in zip(examples, logps):
        e["ref_logp"] = lp


# -----------------------------------------------------------------------------------------------------
# Training loop


def get_lr(step, total, warmup, lr):
    """Linear warmup over `warmup` steps, then linear decay to 0 at step `total`."""
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    return lr * max(0.0, (total - step) / max(1, total - warmup))


def batches(n, batch_size, rng):
    """Index batches over n examples, epoch after epoch, reshuffled each epoch (whose last may be short)."""
    while True:
        order = rng.sample(range(n), n)
        yield from (order[i:i + batch_size] for i in range(0, n, batch_size))


def make_optimizer(model, args):
    """AdamW, with weight decay on matrices only; bf16 weights get stochastic rounding (deviation 7)."""
    params = [p for p in model.parameters() if p.requires_grad]  # with LoRA: the adapters only
    decay = [p for p in params if p.dim() >= 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    if args.bf16_rounding == "stochastic" and any(p.dtype == torch.bfloat16 for p in decay):
        from bf16_adamw import BF16AdamW  # (a file of its own: numerics, not the method)
        return BF16AdamW(groups, lr=args.lr, betas=(0.9, 0.95))
    fused = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), fused=fused)


def forward_backward(model, tok, examples, loss_fn, weight):
    """One micro-batch: forward, loss, and backward of weight * loss at once (its activations are freed).
    Returns the unweighted loss, detached; it stays on the device, so nothing waits for it."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in collate(examples, tok.pad_token_id).items()}
    loss = loss_fn(forward(model, batch), batch)
    (weight * loss).backward()
    return loss.detach()


def forget_step(model, tok, targets, beliefs, args, weight):
    """The forget term on a batch of targets, backpropagated with `weight`; returns its value."""
    base = args.bss_base if args.method == "bs_s" else args.method
    loss_fn = functools.partial(forget_loss, method=base, args=args)
    if args.method != "bs_s":
        return forward_backward(model, tok, targets, loss_fn, weight)
    # Eq. 7, (1 - lam) L(targets) + lam * mean_j L(belief_j), one micro-batch at a time so memory stays flat
    # in N: the beliefs go in chunks of --micro_batch sequences, chunk c weighted by its share len(c) / n.
    lam = args.bss_lambda
    beliefs = sorted(beliefs, key=lambda b: len(b["input_ids"]))  # similar lengths in a chunk: less padding
    if not beliefs:  # every sample of this batch was empty (EOS first): the targets stand in for them
        beliefs = targets
    # On K ranks the mean is over all K ranks' beliefs (n in all): chunk c weighs K * len(c) / n, as the
    # gradients are averaged over the ranks. Under FSDP each rank runs as many chunks as the busiest one.
    chunks = [beliefs[i:i + args.micro_batch] for i in range(0, len(beliefs), args.micro_batch)]
    sizes = scaling.counts(len(beliefs))  # [len(beliefs)] in one process
    K, n = len(sizes), sum(sizes)
    target_loss = forward_backward(model, tok, targets, loss_fn, weight * (1 - lam))
    belief_loss = sum(forward_backward(model, tok, c, loss_fn, weight * lam * len(c) * K / n)
                      * len(c) * K / n for c in chunks)
    if scaling.is_sharded(model):  # weightless extra chunks keep FSDP's collectives in step across ranks
        for _ in range(max(math.ceil(s / args.micro_batch) for s in sizes) - len(chunks)):
            forward_backward(model, tok, chunks[0], loss_fn, 0.0)
    return bss_loss(target_loss, belief_loss, lam)


def train(model, tok, forget_ex, retain_ex, args, ref_model=None, log_path=None, progress=False,
          beliefs=None):
    """Minimise gamma * L_forget + alpha * L_retain with AdamW, warmup then linear decay. Each micro-step
    pairs a forget batch with a retain batch. BS-S only: `beliefs`, as sample_beliefs returns them for
    forget_ex, replaces the first round of sampling (later rounds, with --bss_regen, are sampled here).
    One line per step (or a progress bar with progress=True), and the same numbers as JSON in log_path.
    Under torchrun every rank draws the same global batches of K * batch_size and trains on its share."""
    from tqdm.auto import tqdm
    torch.manual_seed(args.seed)
    K, main_rank = scaling.world(), scaling.is_main()
    micro_per_epoch = math.ceil(len(forget_ex) / (args.batch_size * K))
    total = math.ceil(micro_per_epoch * args.epochs / args.grad_accum)
    warmup = min(int(args.warmup_epochs * micro_per_epoch / args.grad_accum), total // 2)  # short runs peak
    opt = make_optimizer(model, args)
    forget_batches = batches(len(forget_ex), args.batch_size * K, random.Random(args.seed))
    use_retain = args.alpha > 0 and len(retain_ex) > 0
    retain_batches = batches(len(retain_ex), args.batch_size * K, random.Random(args.seed + 1))
    retain_fn = functools.partial(retain_loss, args=args, ref_model=ref_model)
    belief_round = 0  # which round of beliefs `beliefs` holds (None: none yet)
    if args.method == "bs_s" and beliefs is None:
        belief_round = None
    sample_every = args.sample_every or max(1, micro_per_epoch // args.grad_accum)
    log = open(log_path, "a") if log_path else None
    bar = tqdm(total=total, disable=not (progress and main_rank), desc=args.method, leave=False)
    model.train()
    for step in range(total):
        t0 = time.time()
        lr = get_lr(step, total, warmup, args.lr)
        for group in opt.param_groups:
            group["lr"] = lr
        forget = retain = 0.0
        for micro in range(args.grad_accum):
            idx = scaling.share(next(forget_batches))  # this rank's share of the global batch
            if args.method == "bs_s":  # resample beliefs every --bss_regen epochs (0: sampled once)
                epoch = (step * args.grad_accum + micro) / micro_per_epoch
                r = int(epoch // args.bss_regen) if args.bss_regen else 0
                if r != belief_round:  # (each rank samples for its share of forget_ex, and all get all)
                    sample = functools.partial(sample_beliefs, model, tok, args=args, round=r,
                                               ref_model=ref_model)
                    beliefs, belief_round = scaling.gather(sample, forget_ex), r
            mine = [b for i in idx for b in beliefs[i]] if args.method == "bs_s" else None
            w = 1 / args.grad_accum
            forget += forget_step(model, tok, [forget_ex[i] for i in idx], mine, args, args.gamma * w) * w
            if use_retain:
                retain_batch = [retain_ex[i] for i in scaling.share(next(retain_batches))]
                retain += forward_backward(model, tok, retain_batch, retain_fn, args.alpha * w) * w
        scaling.sync_grads(model)  # K ranks: average the gradients (FSDP did it in backward)
        gnorm = scaling.full_tensor(torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm))
        forget, retain, gnorm = scaling.average(forget, retain, gnorm)  # one sync per step; K ranks: the mean
        if not all(map(math.isfinite, (forget, retain, gnorm))):  # caught before the step is applied
            fail(f"at step {step + 1} the forget loss is {forget}, the retain loss {retain} and the gradient "
                 f"norm {gnorm}; lower --lr or check the data")
        opt.step()
        opt.zero_grad(set_to_none=True)
        if next(model.parameters()).device.type == "cuda":
            torch.cuda.synchronize()  # so ms counts the whole step
        rec = dict(step=step + 1, epoch=round((step + 1) * args.grad_accum / micro_per_epoch, 3),
                   forget=forget, retain=retain, lr=lr, grad_norm=gnorm, ms=1000 * (time.time() - t0))
        if log:
            log.write(json.dumps(rec) + "\n")
        bar.update(1)
        if not progress:
            if main_rank:
                print(f"step {rec['step']:4d}/{total} | forget {forget:9.4f} | retain {retain:8.4f} "
                      f"| lr {lr:.2e} | gnorm {gnorm:7.2f} | {rec['ms']:6.1f} ms")
            if rec["step"] % sample_every == 0 or rec["step"] == total:
                show_answers(model, tok, forget_ex[0], retain_ex[0] if retain_ex else None)
    bar.close()
    if log:
        log.close()
    return model


def show_answers(model, tok, *examples):
    """Print the greedy answer to one forget and one retain question: the quickest look at what happened."""
    for tag, e in zip(("forget", "retain"), examples):
        if e is not None:
            out = generate(model, tok, [e["input_ids"][:e["prompt_len"]]], 48)[0][0]  # (all ranks: FSDP)
            if scaling.is_main():
                answer = tok.decode(out, skip_special_tokens=True).strip()
                print(f"    {tag}: {e['question']!r} -> {answer!r}")


# -----------------------------------------------------------------------------------------------------
# main


def main(argv=None):
    args = get_args(argv)
    if args.model == "toy" and args.data != "toy":
        fail("--model toy only knows the toy data; pass --model for --data tofu")
    # everything that can fail cheaply fails before any work, and nothing is written until then
    forget_rows, retain_rows = load_data(args)
    import toy_world  # the embedded example's model, built and cached offline
    model_path = args.model
    if args.model == "toy":
        model_path = toy_world.toy_model_dir(args.cache_dir, "full", args.seed)
    out = os.path.realpath(args.out_dir)  # realpath: a symlink to the model directory is the model directory
    model_dir = os.path.realpath(model_path if os.path.isdir(model_path) else os.path.dirname(model_path))
    if os.path.exists(model_path) and os.path.commonpath([model_dir, out]) == out:  # (a .gguf: its folder)
        fail(f"--out_dir {args.out_dir} is or holds the input model's directory; choose another")
    if os.path.exists(out) and not os.path.isdir(out):
        fail(f"--out_dir {args.out_dir} is a file, not a directory")
    if os.path.isdir(out) and os.listdir(out) and not args.overwrite:
        fail(f"--out_dir {args.out_dir} is not empty; pass --overwrite or choose another")
    check_writable(out)
    if args.model == "toy":  # (before torchrun's ranks join: each waits for the one build, which is alone)
        toy_world.ensure_toy_models(args.cache_dir, args.forget_split, args.seed, with_retain=False)
    device = scaling.setup(pick_device(args.device))  # under torchrun: join the process group
    if args.fsdp and scaling.world() == 1:
        fail("--fsdp shards over several processes; launch with torchrun --nproc_per_node=K")
    main_rank = scaling.is_main()  # the one that writes: its log, its folder
    # the run appears at out only once it is complete (run_config.json last)
    with atomic_dir(out) if main_rank else contextlib.nullcontext() as tmp:
        t0 = time.time()
        model, tok = load_model(model_path, device, args.dtype, args.system_prompt, args.date_string)
        args.date_string = tok.date_string  # a template that prints a date got today's: it is saved below
        forget_ex, retain_ex = encode_rows(tok, forget_rows), encode_rows(tok, retain_rows)
        if args.method == "finetune":  # learning, not unlearning: train on the full data, no retain term
            forget_ex, retain_ex = forget_ex + retain_ex, []
        # the frozen reference stays in memory only if something needs it after the start
        kl_retain = args.alpha > 0 and args.retain_loss == "kl"
        keep_ref = kl_retain or (needs_ref_logps(args) and args.bss_regen > 0)  # (on-policy NPO beliefs)
        ref_model = None
        if keep_ref and not args.lora_r:
            ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        if args.lora_r:  # only adapters train, so the starting model is this one with them off: no copy
            model = scaling.add_lora(model, args.lora_r, args.lora_alpha, args.lora_targets)
            ref_model = scaling.AdaptersOff(model) if keep_ref else None
        if args.fsdp:
            model, ref_model = scaling.fsdp(model), ref_model and scaling.fsdp(ref_model)
        if needs_ref_logps(args):  # the model is still the reference; each rank scores its share
            attach_ref_logps(model, tok, forget_ex, args.gen_batch_size, split=True)
        n_all = sum(p.numel() for p in model.parameters()) / 1e6
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6  # LoRA: the adapters
        if main_rank:
            print(f"{args.method} on {len(forget_ex)} forget / {len(retain_ex)} retain examples, model "
                  f"{args.model} ({n_all:.2f}M params, {n_train:.2f}M trained) on {device}"
                  + (f" x {scaling.world()} ranks" if scaling.world() > 1 else ""))
        train(model, tok, forget_ex, retain_ex, args, ref_model, tmp and os.path.join(tmp, "log.jsonl"))
        model = scaling.unsharded(model)  # FSDP: the full weights, gathered on rank 0 (None elsewhere)
        if main_rank:  # LoRA: the adapters merged in, so the folder is a normal HF model
            model = scaling.merged(model, tok, args.save_adapter and os.path.join(tmp, "adapter"))
            save_model(model, tok, tmp)
            with open(os.path.join(tmp, "run_config.json"), "w") as f:
                json.dump(dict(vars(args), model_path=model_path, world_size=scaling.world()), f, indent=2)
    if main_rank:
        print(f"done in {time.time() - t0:.1f} s; saved to {args.out_dir}")
    scaling.teardown()


if __name__ == "__main__":
    main()
