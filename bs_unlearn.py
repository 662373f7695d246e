"""
bs_unlearn.py: LLM unlearning with LLM beliefs, in one file.

Reference implementation of "LLM Unlearning with LLM Beliefs" (Li et al., ICLR 2026,
https://arxiv.org/abs/2510.19422). Gradient ascent (GA) and NPO lower the probability of a target answer,
but the mass they remove is *squeezed* into the model's own high-likelihood rephrasings of the same fact,
so the fact survives in other words. (Why: lowering a token's logit raises every other token's probability
in proportion to what it already has, so the model's next most likely continuations gain most, and for a
fact it knows those say the same fact.) Bootstrapping (BS) also pushes down the model's beliefs:
BS-T at token level (its own top-k next tokens as soft targets), BS-S at sequence level (its own sampled
answers). Read top to bottom: config -> data -> log-probs -> objectives -> belief sampling -> training
loop -> main. What is not the method lives beside it: toy_world.py, the embedded example (fictitious
authors and a tiny model that memorises them, built offline); plumbing.py (errors, files, models, run
folders); scaling.py (many processes through torchrun, LoRA adapters through peft); bf16_adamw.py (AdamW
for bf16 weights). eval.py measures the result.

The method in one screen (every objective is minimised; log pi(y|x) sums the answer tokens' log-probs):
    L = gamma * L_forget(forget set D_u) + alpha * L_retain(retain set D_r)      L_retain: NLL, or KL to pi_o
    GA   (Eq. 1)    L_forget = E[log pi_theta(y|x)]
    NPO  (Eq. 3)    L_forget = (2/beta) E[log(1 + (pi_theta(y|x) / pi_o(y|x))^beta)],  pi_o = the frozen start
    BS-T (Eqs. 5-6) GA on soft targets: lam * (the current model's top-k next tokens) + (1 - lam) * (answer)
    BS-S (Eq. 7)    L_forget = (1 - lam) L(targets) + lam * mean_j L(belief_j), L = a base loss above and
                    belief_j = the model's own sampled answers to the forget questions ("beliefs")
The other rows of the paper's Table 1, for comparison: WGA (its Eq. 4: GA with each token's log-prob weighted
by its probability), SimNPO (NPO without a reference, length-normalised) and RMU (hidden states), in
baselines.py.

Run (fully offline; the first run builds and caches a tiny model on generated data, ~1 min on 2 CPU cores):
    python bs_unlearn.py --method bs_s           # also: ga, npo, bs_t, wga, simnpo, rmu, finetune
    python eval.py runs/bs_s                     # metrics, see eval.py
TOFU with the paper's models and settings, several GPUs (torchrun, FSDP2) and LoRA: see the README.
Departures from the paper and its public code (each explained where its code is, and in the README):
1. BS-S keeps N beliefs per forget example (the public code reuses its first batch's samples for all).
2. BS-S's base loss is BS-T; beliefs are sampled once, from the starting model (--bss_regen resamples).
3. The beliefs go through the model in chunks (--bss_chunk), so memory does not grow with N.
4. The log-prob losses sum over answer tokens and average over sequences, as the equations' log pi(y|x) does.
5. NPO's reference log-probs are computed once, before training.
6. The KL retain term is masked to the answer tokens.
7. bf16 weights are stepped with stochastic rounding.
8. A run whose retain term diverges stops and saves nothing.
"""
import copy
import math
import os
import random
import time

# not the method: one-line errors, row files, loading and saving models, run folders written whole (some of
# these names are here for eval.py, the notebooks and the tests, as bs.<name>). Imported before torch, so
# that Ctrl-C while torch loads ends in one line too
from plumbing import (Parser, StepCheck, StepLog, atomic_dir, autocast, check_lengths,  # noqa: F401
                      check_out_dir, check_writable, fail, load_model, load_tokenizer, number, pick_device, quiet,
                      read_rows, run_dir, run_main, save_model, save_run, say)
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import baselines  # the other rows of the paper's Table 1: WGA, SimNPO, RMU
import scaling  # torchrun's ranks and FSDP2, LoRA: a few marked calls, each the plain step in one process
import toy_world  # the embedded example: toy authors and a tiny model, built offline

# -----------------------------------------------------------------------------------------------------
# Config

METHODS = ["ga", "npo", "bs_t", "bs_s", "finetune"] + baselines.METHODS  # the baselines: wga, simnpo, rmu


def get_args(argv=None):
    p = Parser(description=__doc__.split("\n\n")[0])
    count, positive, fraction = number(int, 1), number(float, 0, above=True), number(float, 0, 1)
    # what to unlearn, from which model
    p.add_argument("--method", default="bs_s", choices=METHODS, help="finetune: plain NLL on all the data")
    p.add_argument("--model", default="toy", help="'toy' (built offline), a HF id, a folder or a .gguf file")
    p.add_argument("--data", default="toy", choices=["toy", "tofu"], help="generated toy authors or TOFU")
    p.add_argument("--data_dir", default=None, help="read TOFU splits from local files instead of the hub")
    p.add_argument("--forget_split", default="forget10", choices=["forget01", "forget05", "forget10"],
                   help="forget the last 1/5/10%% of authors; retain = the rest")
    # open-unlearning's TOFU models: "You are a helpful assistant." and, for Llama-3 (whose template
    # otherwise prints today's date), "10 Apr 2025"
    p.add_argument("--system_prompt", default=None, help="a system turn before each question (default: none)")
    p.add_argument("--date_string", default=None, help="the date for chat templates that print one")
    p.add_argument("--out_dir", default=None, help="where to save the model (default: runs/<method>)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished run in --out_dir (a folder holding anything else: never)")
    # optimisation (defaults: the toy on a CPU; the README has TOFU's)
    p.add_argument("--epochs", type=positive, default=10, help="passes over the forget set (may be fractional)")
    p.add_argument("--batch_size", type=count, default=16, help="forget examples per micro-step (per GPU)")
    p.add_argument("--grad_accum", type=count, default=1, help="micro-steps per optimizer step")
    p.add_argument("--lr", type=positive, default=3e-4, help="peak learning rate of AdamW")
    p.add_argument("--warmup_epochs", type=number(float, 0), default=1.0, help="linear warmup, then decay")
    p.add_argument("--weight_decay", type=number(float, 0), default=0.01, help="AdamW's, on matrices only")
    p.add_argument("--max_grad_norm", type=positive, default=1.0, help="clip the gradient norm to this")
    p.add_argument("--allow_divergence", action="store_true",
                   help="train on past a diverged retain term (default: stop, save nothing)")
    # the loss: gamma * L_forget + alpha * L_retain
    p.add_argument("--gamma", type=number(float, 0), default=None, help="forget weight (1; SimNPO: 0.125)")
    p.add_argument("--alpha", type=number(float, 0), default=1.0, help="retain weight (0: no retain term)")
    p.add_argument("--retain_loss", default=None, choices=["nll", "kl", "embed"],
                   help="NLL, KL(pi_o || pi_theta) or RMU's hidden-state distance (nll; RMU: embed)")
    p.add_argument("--npo_beta", type=positive, default=0.1, help="NPO's inverse temperature beta")
    p.add_argument("--bst_topk", type=count, default=20, help="BS-T: the model's k most likely next tokens")
    p.add_argument("--bst_lambda", type=fraction, default=0.2, help="weight of the model's top-k beliefs")
    p.add_argument("--bst_temp", type=positive, default=1.0, help="temperature of the top-k beliefs")
    p.add_argument("--bss_lambda", type=fraction, default=0.5, help="weight of the sampled-belief term")
    p.add_argument("--bss_base", default="bs_t", choices=["ga", "npo", "bs_t", "wga", "simnpo"],
                   help="BS-S's base loss (BS-T: the paper's best)")
    p.add_argument("--bss_n", type=count, default=3, help="beliefs sampled per forget prompt")
    p.add_argument("--bss_keep", type=number(int, 0), default=0, help="keep the K most confident (0: all)")
    p.add_argument("--bss_temp", type=positive, default=1.0, help="sampling temperature")
    p.add_argument("--bss_max_new_tokens", type=number(int, 0), default=0, help="0: the longest target")
    p.add_argument("--bss_regen", type=number(float, 0), default=0, help="resample every R epochs (0: never)")
    p.add_argument("--bss_chunk", type=count, default=32, help="beliefs per forward (memory; see belief_term)")
    baselines.add_args(p)  # --wga_a, --simnpo_beta, --simnpo_delta, --rmu_layer, --rmu_c
    # system
    p.add_argument("--device", default="auto", help="auto | cuda | cuda:N | mps | cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="weights: auto = bf16 on CUDA, fp32 elsewhere")
    p.add_argument("--bf16_rounding", default="stochastic", choices=["stochastic", "nearest"],
                   help="bf16 weights' AdamW steps: stochastic rounding or nearest (torch's)")
    p.add_argument("--gen_batch_size", type=count, default=64, help="prompts per generate() and scoring batch")
    scaling.add_args(p)  # bigger models: --fsdp under torchrun, --lora_r and friends
    p.add_argument("--seed", type=number(int, -2**31, 2**31 - 1), default=0,
                   help="batch order, sampled beliefs (and the toy model)")
    p.add_argument("--sample_every", type=number(int, 0), default=0, help="print answers every N steps (0: epoch)")
    p.add_argument("--cache_dir", help="the toy models' home ($BS_UNLEARN_CACHE, else ~/.cache/bs_unlearn)",
                   default=os.environ.get("BS_UNLEARN_CACHE", os.path.expanduser("~/.cache/bs_unlearn")))
    args = p.parse_args(argv)
    if args.bss_keep > args.bss_n:
        fail(f"--bss_keep {args.bss_keep} is more than --bss_n {args.bss_n}")
    scaling.check_args(args)
    if args.gamma is None:  # each method's published forget weight and retain term, unless given
        args.gamma = 0.125 if args.method == "simnpo" else 1.0
    if args.retain_loss is None:
        args.retain_loss = "embed" if args.method == "rmu" else "nll"
    args.out_dir = os.path.join("runs", args.method) if args.out_dir is None else args.out_dir
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
        forget, retain = toy_world.split_toy(toy_world.make_toy_data(), args.forget_split)
    else:
        pct = int(args.forget_split[-2:])
        forget = load_tofu(args.forget_split, args.data_dir)
        retain = load_tofu(f"retain{100 - pct}", args.data_dir)
    if not forget:
        fail(f"the forget split {args.forget_split!r} is empty")
    if not retain and args.alpha > 0 and args.method != "finetune":
        fail(f"the retain split of {args.forget_split!r} is empty, so there is no retain term; "
             "pass --alpha 0 to unlearn without one")
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

    def pad(seq, fill):  # to length T: on the right for training, on the left for generation
        return seq + [fill] * (T - len(seq)) if side == "right" else [fill] * (T - len(seq)) + seq
    ids = torch.tensor([pad(e["input_ids"], pad_id) for e in examples])
    labels = torch.tensor([pad(e["labels"], -100) for e in examples])
    mask = torch.tensor([pad([1] * len(e["input_ids"]), 0) for e in examples])
    batch = dict(input_ids=ids, labels=labels, attention_mask=mask,
                 position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    if "ref_logp" in examples[0]:  # NPO: each example's reference log-prob (attach_ref_logps), as a batch
        batch["ref_logps"] = torch.tensor([e["ref_logp"] for e in examples])
    return batch


def make_batch(tok, examples, model):
    """Examples collated (right-padded) onto the model's device."""
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in collate(examples, tok.pad_token_id).items()}


# -----------------------------------------------------------------------------------------------------
# Log-probs of the answers: the prompt and the padding masked, the logits shifted (t predicts t+1)


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
    """The logits (B, T, V), the matmuls in bf16 on CUDA (autocast)."""
    device = next(model.parameters()).device
    with autocast(model):
        return model(input_ids=batch["input_ids"].to(device), position_ids=batch["position_ids"].to(device),
                     attention_mask=batch["attention_mask"].to(device)).logits


@torch.no_grad()
def score(model, tok, examples, batch_size=64):
    """Per example: the summed answer log-prob and the answer length. One forward per batch."""
    out = {k: [] for k in ("logp", "n_tokens")}
    was_training = model.training
    model.eval()
    chunks = [examples[i:i + batch_size] for i in range(0, len(examples), batch_size)]
    for chunk in scaling.lockstep(chunks, model):  # (FSDP: as many forwards as the busiest rank)
        batch = collate(chunk, tok.pad_token_id)
        labels = batch["labels"].to(next(model.parameters()).device)
        out["logp"].append(sequence_logps(forward(model, batch), labels))
        out["n_tokens"].append((labels[:, 1:] != -100).sum(-1))
    model.train(was_training)
    return {k: torch.cat(v).cpu()[:len(examples)] for k, v in out.items()}  # (FSDP's extra forwards dropped)


# -----------------------------------------------------------------------------------------------------
# Objectives: pure functions of log-probs / logits; every one is minimised. The log-prob losses sum over the
# answer's tokens and average over sequences, as the equations' log pi(y|x) does (HF's `.loss` is a token
# mean; the README says what this changes against open-unlearning's settings)


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


def bst_beliefs(logits, k=20, temperature=1.0):
    """Eq. 5's q_i: the model's own top-k next-token distribution at every position (renormalised over the
    k, at a temperature; stop-gradient). Returns the (B, T-1, k) token ids and their probabilities."""
    top, ids = logits[:, :-1].detach().float().topk(min(k, logits.shape[-1]), dim=-1)
    return ids, F.softmax(top / temperature, dim=-1)


def bst_loss(logits, labels, k=20, lam=0.2, temperature=1.0):
    """Eqs. 5-6, BS-T: GA on the soft target t_i = lam * q_i + (1 - lam) * onehot(y_i), that is, minimise
    E[sum_i <t_i, log pi_theta(. | x, y_<i)>] = E[sum_i lam <q_i, log pi_theta> + (1 - lam) log pi_theta(y_i)].
    With lam = 0 it is exactly GA. (A label that is also in the top-k is pushed down by both terms.)"""
    ids, q = bst_beliefs(logits, k, temperature)  # (B, T-1, k) each
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    on_beliefs = (q * logp.gather(-1, ids)).sum(-1)  # <q_i, log pi_theta>  (B, T-1)
    y = labels[:, 1:].clamp(min=0)  # (B, T-1); any id on the prompt and padding, masked below
    on_label = logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)  # log pi_theta(y_i)  (B, T-1)
    per_token = lam * on_beliefs + (1 - lam) * on_label
    return torch.where(labels[:, 1:] != -100, per_token, 0.0).sum(-1).mean()  # (not * mask: -inf * 0 is NaN)


def bss_loss(target_loss, belief_loss, lam=0.5):
    """Eq. 7, BS-S: (1 - lam) L(D_u) + lam * mean_j L(D^_u,j), with L the base loss (BS-T by default) on the
    targets and on their beliefs (belief_term computes the second)."""
    return (1 - lam) * target_loss + lam * belief_loss


def kl_retain_loss(logits, ref_logits, labels):
    """KL(pi_o || pi_theta) summed over answer tokens (masked, unlike the public code), mean over
    sequences."""
    mask = labels[:, 1:] != -100
    ref = F.log_softmax(ref_logits[:, :-1].float(), -1)
    # F.kl_div(input, target) sums target * (log target - input): with target = pi_o, KL(pi_o || pi_theta)
    kl = F.kl_div(F.log_softmax(logits[:, :-1].float(), -1), ref, log_target=True, reduction="none").sum(-1)
    return (kl * mask).sum(-1).mean()


def forget_loss(model, batch, method, args):
    """The forget term of `method` on one batch (its forward included): Eq. 1 (GA), 3 (NPO) or 6 (BS-T); BS-S
    (Eq. 7) applies its base method to targets and beliefs alike (see micro_step)."""
    if method in baselines.METHODS:  # the other rows of Table 1, for comparison: not needed to follow the method
        return baselines.forget_loss(model, batch, method, args, forward, token_logps)
    logits, labels = forward(model, batch), batch["labels"]
    if method == "ga":
        return ga_loss(sequence_logps(logits, labels))
    if method == "npo":
        return npo_loss(sequence_logps(logits, labels), batch["ref_logps"], args.npo_beta)
    if method == "bs_t":
        return bst_loss(logits, labels, args.bst_topk, args.bst_lambda, args.bst_temp)
    if method == "finetune":
        return nll_loss(logits, labels)
    raise ValueError(f"no forget loss for method {method!r} (BS-S's is Eq. 7 on its base method's)")


def retain_loss(model, batch, args, ref_model=None):
    """The retain term: NLL of the retain answers, KL to the frozen starting model (--retain_loss kl), or the
    distance to its hidden states (embed, RMU's)."""
    if args.retain_loss == "embed":  # RMU's (baselines.py)
        return baselines.rmu_retain(model, ref_model, batch, args)
    logits = forward(model, batch)
    if args.retain_loss == "kl":
        with torch.no_grad():
            ref_logits = forward(ref_model, batch)
        return kl_retain_loss(logits, ref_logits, batch["labels"])
    return nll_loss(logits, batch["labels"])


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
    # plain sampling from the softmax at `temperature`: no top-k (HF's default is 50), no top-p
    sampling = dict(temperature=temperature, top_k=0, top_p=1.0) if do_sample else {}
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=do_sample, num_return_sequences=n,
                           pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **sampling)
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    outs = []
    for i in range(0, len(prompts), batch_size):
        chunk = [dict(input_ids=p, labels=p) for p in prompts[i:i + batch_size]]  # (collate wants labels)
        batch = collate(chunk, tok.pad_token_id, side="left")  # left: all prompts end where generation starts
        with autocast(model):
            seqs = model.generate(input_ids=batch["input_ids"].to(device), generation_config=cfg,
                                  attention_mask=batch["attention_mask"].to(device))
        for s in seqs[:, batch["input_ids"].shape[1]:].tolist():
            outs.append(s[:s.index(tok.eos_token_id) + 1] if tok.eos_token_id in s else s)
    model.train(was_training)
    return [outs[j * n:(j + 1) * n] for j in range(len(prompts))]


def flatten(beliefs):
    """Per-example lists of beliefs as one list."""
    return [b for bs in beliefs for b in bs]


def sample_beliefs(model, tok, forget_examples, args, sampling_round=0):
    """N sampled answers per forget example, kept per example: beliefs[i] is a list of encoded examples (the
    public code keeps its first batch's samples and trains every later batch on them).
    Seeded per (seed, round of sampling, rank). With --bss_keep K, keep the K with the highest mean token
    log-prob."""
    max_new = args.bss_max_new_tokens or max(len(e["input_ids"]) - e["prompt_len"] for e in forget_examples)
    prompts = [e["input_ids"][:e["prompt_len"]] for e in forget_examples]
    with scaling.seeded(args.seed * 1000 + sampling_round, model):  # a stream of its own (torchrun: per rank)
        samples = generate(model, tok, prompts, max_new, n=args.bss_n, do_sample=True,
                           temperature=args.bss_temp, batch_size=args.gen_batch_size)
    beliefs = [[dict(input_ids=p + s, labels=[-100] * len(p) + s, prompt_len=len(p)) for s in ss]
               for p, ss in zip(prompts, samples)]
    flat = flatten(beliefs)
    if args.bss_keep and args.bss_keep < args.bss_n:
        s = score(model, tok, flat, args.gen_batch_size)
        for b, lp, n in zip(flat, s["logp"].tolist(), s["n_tokens"].tolist()):
            b["confidence"] = lp / max(n, 1)
        beliefs = [sorted(bs, key=lambda b: -b["confidence"])[:args.bss_keep] for bs in beliefs]
    return beliefs


def sample_all_beliefs(model, tok, forget_examples, args, sampling_round=0):
    """sample_beliefs for every forget example (on torchrun's K ranks each samples its share, and all get all)."""
    def sample(part):
        return sample_beliefs(model, tok, part, args, sampling_round)
    return scaling.gather(sample, forget_examples)  # in one process: sample(forget_examples)


# -----------------------------------------------------------------------------------------------------
# pi_o, the frozen starting model: NPO compares with its log-probs, the KL and RMU retain terms with its outputs


def needs_ref_logps(args):
    """NPO (alone or as BS-S's base) compares with pi_o's log-probs: a number per example, computed once before
    training (the public code runs the frozen reference model at every step for the same numbers)."""
    return args.method == "npo" or (args.method == "bs_s" and args.bss_base == "npo")


def needs_ref_model(args):
    """Whether training needs pi_o itself after its first step, when the model being trained no longer is
    pi_o: for the KL or hidden-state retain term, or for NPO's log-probs of beliefs resampled mid-training."""
    retain_on_ref = args.alpha > 0 and args.retain_loss in ("kl", "embed") and args.method != "finetune"
    return retain_on_ref or (needs_ref_logps(args) and args.bss_regen > 0)


def attach_ref_logps(start_model, tok, examples, batch_size=64):
    """NPO's log pi_o(y|x) for each example, stored on it (collate makes them batch["ref_logps"]).
    (On torchrun's ranks each scores its share; all get every example's.)"""
    def ref_logps(part):
        return score(start_model, tok, part, batch_size)["logp"].tolist()
    for e, lp in zip(examples, scaling.gather(ref_logps, examples)):
        e["ref_logp"] = lp


def set_up_reference(model, tok, examples, args, ref_model=None):
    """pi_o in the two forms training uses. NPO's log-probs of `examples` (targets and beliefs) are scored now,
    from `model`, which is pi_o until its first step. pi_o itself is returned where needs_ref_model says a term
    needs it: the ref_model handed in (main's, from scaling.wrap), else a frozen copy made here; else None."""
    if needs_ref_logps(args):
        attach_ref_logps(model, tok, examples, args.gen_batch_size)
    if ref_model is None and needs_ref_model(args):
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    return ref_model


# -----------------------------------------------------------------------------------------------------
# Training loop


def get_lr(step, total, warmup, lr):
    """Linear warmup over `warmup` steps, then linear decay to 0 at step `total`."""
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    return lr * max(0.0, (total - step) / max(1, total - warmup))


def batches(n, batch_size, rng):
    """Index batches over n examples, epoch after epoch, reshuffled each epoch (an epoch's last batch may be
    short)."""
    while True:
        order = rng.sample(range(n), n)
        yield from (order[i:i + batch_size] for i in range(0, n, batch_size))


def make_optimizer(model, args):
    """AdamW, with weight decay on matrices only. bf16 weights (the CUDA default) are stepped with stochastic
    rounding, so that updates below bf16's resolution still arrive on average; torch's AdamW rounds to nearest
    and drops them (--bf16_rounding nearest)."""
    params = [p for p in model.parameters() if p.requires_grad]  # with LoRA: the adapters only
    decay = [p for p in params if p.dim() >= 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    if args.bf16_rounding == "stochastic" and any(p.dtype == torch.bfloat16 for p in decay):
        from bf16_adamw import BF16AdamW  # (a file of its own: numerics, not the method)
        return BF16AdamW(groups, lr=args.lr, betas=(0.9, 0.95))
    fused = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), fused=fused)


def belief_round(args, step, micro, micro_per_epoch):
    """BS-S: which round of beliefs a micro-step trains on: 0 always (the default: sampled once, from the
    starting model, off-policy), or with --bss_regen R one more round every R epochs, resampled from the model
    being unlearned (which, in our prototype, fed it its own degenerate text as unlearning went on)."""
    epoch = (step * args.grad_accum + micro) / micro_per_epoch
    return int(epoch // args.bss_regen) if args.bss_regen else 0


def belief_term(model, tok, beliefs, args):
    """Eq. 7's belief term, mean_j L(belief_j): the base loss over all of a batch's beliefs, N per target. Past
    --bss_chunk beliefs, as the mean of chunks of them, each weighed by its share |c| / n (the weights sum to 1),
    and each under activation checkpointing: its activations are dropped after its forward and recomputed in
    the backward, so memory holds one chunk's at a time, whatever N is (the paper's N = 10 ran out of memory for
    its authors). The cost: one more forward per chunk (see scaling.fsdp for what it does under FSDP)."""
    def L(batch):
        return forget_loss(model, batch, args.bss_base, args)
    if len(beliefs) <= args.bss_chunk:
        return L(make_batch(tok, beliefs, model))
    beliefs = sorted(beliefs, key=lambda b: len(b["input_ids"]))  # (alike lengths in a chunk: less padding)
    chunks = [beliefs[i:i + args.bss_chunk] for i in range(0, len(beliefs), args.bss_chunk)]
    return sum(len(c) / len(beliefs) * checkpoint(L, make_batch(tok, c, model), use_reentrant=False) for c in chunks)


def micro_step(model, tok, targets, beliefs, retain, args, ref_model=None):
    """One micro-step: the objective L = gamma * L_forget + alpha * L_retain on a batch of forget examples
    (`targets`; for BS-S also their `beliefs`, one list) and a batch of retain examples (None: no retain
    term), backpropagated. Returns the two terms, detached, for the log."""
    if args.method == "bs_s":  # Eq. 7: the base loss on the targets and on their beliefs, weighed by lam
        L_targets = forget_loss(model, make_batch(tok, targets, model), args.bss_base, args)
        L_beliefs = belief_term(model, tok, beliefs, args)  # mean_j L(belief_j), in chunks
        L_forget = bss_loss(L_targets, L_beliefs, args.bss_lambda)
    else:
        L_forget = forget_loss(model, make_batch(tok, targets, model), args.method, args)
    L_retain = torch.zeros(())  # (none with --alpha 0 or no retain data)
    if retain is not None:
        L_retain = retain_loss(model, make_batch(tok, retain, model), args, ref_model)
    loss = args.gamma * L_forget + args.alpha * L_retain  # the objective
    (loss / args.grad_accum).backward()  # .grad adds up the --grad_accum micro-steps' gradients
    return L_forget.detach(), L_retain.detach()


def train(model, tok, forget_ex, retain_ex, args, ref_model=None, log_path=None, progress=False,
          beliefs=None):
    """Minimise L = gamma * L_forget + alpha * L_retain with AdamW, warmup then linear decay. Each micro-step
    (micro_step) pairs a forget batch with a retain batch. BS-S only: `beliefs`, as sample_beliefs returns them for
    forget_ex, replaces the sampling before the first step (--bss_regen's later rounds are sampled in the loop).
    One line per step (or a progress bar with progress=True), and the same numbers as JSON in log_path.
    Under torchrun every rank draws the same global batches of K * batch_size and trains on its share."""
    if not forget_ex:
        fail("train: no forget examples to train on")
    torch.manual_seed(args.seed)
    # the schedule, in optimizer steps: linear warmup (short runs peak too), then linear decay
    global_batch = args.batch_size * scaling.world()  # torchrun: K ranks share every batch (one process: K = 1)
    micro_per_epoch = math.ceil(len(forget_ex) / global_batch)
    total = math.ceil(micro_per_epoch * args.epochs / args.grad_accum)
    warmup = min(int(args.warmup_epochs * micro_per_epoch / args.grad_accum), total // 2)
    # BS-S: the beliefs, sampled once from the starting model (off-policy) unless handed in
    if args.method == "bs_s" and beliefs is None:
        t0 = time.time()
        beliefs = sample_all_beliefs(model, tok, forget_ex, args)
        say(f"sampled {len(beliefs[0])} beliefs per forget question ({sum(map(len, beliefs))} in all) from the "
            f"starting model in {time.time() - t0:.1f} s")
    if beliefs is not None and (len(beliefs) != len(forget_ex) or len({len(b) for b in beliefs}) != 1
                                or not beliefs[0]):
        fail("train: BS-S needs a list of beliefs per forget example, N >= 1 in each, the same N for all (Eq. 7)")
    # pi_o: NPO's log-probs of the targets and beliefs, scored now; pi_o itself, if a term needs it later
    ref_model = set_up_reference(model, tok, forget_ex + flatten(beliefs or []), args, ref_model)
    beliefs_round = 0  # the round of sampling that `beliefs` holds (--bss_regen adds rounds)
    use_retain = args.alpha > 0 and len(retain_ex) > 0 and args.method != "finetune"
    # a run that goes NaN or diverges (its retain term worse than a uniform guess: StepCheck) stops, unsaved
    watch_retain = use_retain and args.retain_loss != "embed" and not args.allow_divergence  # (RMU's: a distance)
    check = StepCheck(len(tok), retain_ex if watch_retain else [])
    opt = make_optimizer(model, args)
    # index batches, reshuffled every epoch (one process: the batches themselves; K ranks: this rank's share)
    forget_batches = scaling.shares(batches(len(forget_ex), global_batch, random.Random(args.seed)))
    retain_batches = scaling.shares(batches(len(retain_ex), global_batch, random.Random(args.seed + 1)))
    sample_every = args.sample_every or max(1, micro_per_epoch // args.grad_accum)
    log = StepLog(log_path, total, bar=progress, desc=args.method)
    model.train()
    for step in range(total):
        t0 = time.time()
        lr = get_lr(step, total, warmup, args.lr)
        for group in opt.param_groups:
            group["lr"] = lr
        forget = retain = 0.0
        for micro in range(args.grad_accum):
            idx = next(forget_batches)
            if args.method == "bs_s":
                r = belief_round(args, step, micro, micro_per_epoch)  # 0, or one more every --bss_regen epochs
                if r != beliefs_round:  # --bss_regen: resampled from the model being unlearned (on-policy)
                    beliefs, beliefs_round = sample_all_beliefs(model, tok, forget_ex, args, r), r
                    if needs_ref_logps(args):  # NPO: pi_o's log-probs of the new beliefs, from the frozen copy
                        attach_ref_logps(ref_model, tok, flatten(beliefs), args.gen_batch_size)
            targets = [forget_ex[i] for i in idx]
            their_beliefs = [b for i in idx for b in beliefs[i]] if args.method == "bs_s" else None
            retain_part = [retain_ex[i] for i in next(retain_batches)] if use_retain else None
            L_forget, L_retain = micro_step(model, tok, targets, their_beliefs, retain_part, args, ref_model)
            forget += L_forget / args.grad_accum  # (kept on the device: nothing waits for them)
            retain += L_retain / args.grad_accum
        scaling.sync_grads(model)  # (K ranks: the gradients averaged over them)
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        forget, retain, gnorm = scaling.average(forget, retain, gnorm)  # floats (K ranks: their mean)
        check(step + 1, forget, retain, gnorm)  # NaN, inf or a diverging run: stopped before its step
        opt.step()
        opt.zero_grad(set_to_none=True)
        if next(model.parameters()).device.type == "cuda":
            torch.cuda.synchronize()  # so ms counts the whole step
        rec = dict(step=step + 1, epoch=round((step + 1) * args.grad_accum / micro_per_epoch, 3),
                   forget=forget, retain=retain, lr=lr, grad_norm=gnorm, ms=1000 * (time.time() - t0))
        log.write(rec, f"step {rec['step']:4d}/{total} | forget {forget:9.4f} | retain {retain:8.4f} "
                       f"| lr {lr:.2e} | gnorm {gnorm:7.2f} | {rec['ms']:6.1f} ms")
        if not progress and (rec["step"] % sample_every == 0 or rec["step"] == total):
            show_answers(model, tok, forget_ex[0], retain_ex[0] if retain_ex else None)
    log.close()
    return model


def show_answers(model, tok, *examples):
    """Print the greedy answer to one forget and one retain question: the quickest look at what happened."""
    for tag, e in zip(("forget", "retain"), examples):
        if e is not None:
            out = generate(model, tok, [e["input_ids"][:e["prompt_len"]]], 48)[0][0]  # (every rank: FSDP)
            say(f"    {tag}: {e['question']!r} -> {tok.decode(out, skip_special_tokens=True).strip()!r}")


# -----------------------------------------------------------------------------------------------------
# main


def main(argv=None):
    args = get_args(argv)
    # everything that can fail cheaply fails before any work, and nothing is written until then
    if args.model == "toy" and args.data != "toy":
        fail("--model toy only knows the toy data; pass --model for --data tofu")
    forget_rows, retain_rows = load_data(args)
    model_path = args.model
    if args.model == "toy":
        model_path = toy_world.toy_model_dir(args.cache_dir, "full", args.seed)
    check_out_dir(args.out_dir, args.overwrite, model_path)
    if args.model == "toy":  # built once and cached (before torchrun's ranks join: all wait for one build)
        toy_world.ensure_toy_models(args.cache_dir, args.forget_split, args.seed, with_retain=False)
    device = scaling.setup(pick_device(args.device), args.fsdp)  # (torchrun: join the process group)
    t0 = time.time()
    # the run appears at --out_dir only once it is complete (torchrun: rank 0 writes; the others get None)
    with run_dir(args.out_dir, args.overwrite) as out:
        model, tok = load_model(model_path, device, args.dtype, args.system_prompt, args.date_string)
        args.date_string = tok.date_string  # a template that prints a date got today's: it is saved below
        forget_ex, retain_ex = encode_rows(tok, forget_rows), encode_rows(tok, retain_rows)
        check_lengths(model, forget=forget_ex, retain=retain_ex)
        if args.method == "finetune":  # learning, not unlearning: train on the full data, no retain term
            forget_ex, retain_ex = forget_ex + retain_ex, []
        # pi_o, the frozen starting model, kept only where training needs it: a copy (with --lora_r: the model
        # with its adapters off; with --fsdp: both sharded over the ranks)
        model, ref_model = scaling.wrap(model, args, keep_ref=needs_ref_model(args))
        n_all = sum(p.numel() for p in model.parameters()) / 1e6
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6
        say(f"{args.method} on {len(forget_ex)} forget / {len(retain_ex)} retain examples, model {args.model} "
            f"({n_all:.2f}M params, {n_train:.2f}M trained) on {device}")
        train(model, tok, forget_ex, retain_ex, args, ref_model, out and os.path.join(out, "log.jsonl"))
        model = scaling.for_saving(model, tok, args.save_adapter and out and os.path.join(out, "adapter"))
        if out:  # (torchrun: rank 0 writes)
            save_run(model, tok, out, dict(vars(args), model_path=model_path))
    say(f"done in {time.time() - t0:.1f} s; saved to {args.out_dir}")
    scaling.teardown()  # (torchrun: leave the process group before exit; at exit it can abort)


if __name__ == "__main__":
    run_main(main)  # (Ctrl-C, a closed pipe, a full disk: one line, not a traceback)

