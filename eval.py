"""
eval.py: TOFU metrics, the paper's Mem / Util / Agg, and a squeezing diagnostic that ROUGE cannot fool.

Evaluates models written by bs_unlearn.py next to two references: the starting model (the one that was
unlearned) and the retain-only model (trained without the forget set: what unlearning should look like).
Definitions: TOFU's metrics as open-unlearning computes them, and the paper's Table 1 summary (listed below).

Run (the embedded example, fully offline; six models in about 20 s on one CPU core):
    for m in ga npo bs_t bs_s; do python bs_unlearn.py --method $m; done
    python eval.py runs/ga runs/npo runs/bs_t runs/bs_s
TOFU (on a GPU; the data, from local TOFU files or the hub, and the base model default to the runs'; FQ
needs a retain-only model):
    python eval.py runs/tofu_bs_s --retain_model open-unlearning/tofu_Llama-3.2-1B-Instruct_retain90
Output: one printed table (rows = models, the two references first), and the folder --out_dir (default
runs/eval/): <model>.json per model (every metric, per-row values and the greedy answers) plus summary.json
(the table), written whole at the end (a hidden folder, renamed into place once every file is in it). An
earlier evaluation there is replaced only with --overwrite, and a folder holding anything else never. Bad
input stops with one line, before any model is loaded: an unusable --out_dir, an unfinished run, cut
weights, another tokenizer.
In a notebook: `data = load_eval_data(); beliefs = draw_beliefs(base, tok, data["forget"]);
evaluate(model, tok, data, beliefs)` works on any in-memory model.

Metrics, per split where the data has it (toy: forget, retain; TOFU: + real_authors, world_facts):
  Prob    mean p(answer), p = exp(logp / |y|) (length-normalised); real_authors / world_facts:
          mean p_true / (p_true + sum_j p_pert_j)
  ROUGE   ROUGE-L recall of the greedy answer (cut at EOS) against the answer
  TR      truth ratio R = p_pert / p_true, p_pert the geometric (default) or arithmetic mean over the
          perturbed answers, p_true the paraphrased answer (forget, retain) or the answer (the others).
          Forget reports mean min(R, 1/R) (1 = can't tell true from false); others mean max(0, 1 - R)
  FQ      forget quality: KS-test p-value of forget R against the retain-only model's forget R
  MU      model utility: harmonic mean of {retain, real_authors, world_facts} x {Prob, ROUGE, TR}, of what
          the data has (toy: the 3 retain numbers; `mu_n` in the JSON says how many)
  Mem     HM(1 - ES, 1 - EM, 1 - ParaProb, 1 - TR_mem) on the forget set (higher = more forgotten)
  Util    MU, or HM(MU, fluency) with --fluency;  Agg = HM(Mem, Util)
Squeezing diagnostics (ours; the paper's Fig. 2 and its central point, made a number):
  dTgt, dHigh, dMid, dLow   belief retention: answers sampled once from the starting model, banded per
          question by its likelihood (top 20% / 20-60% / 60-100%); each band's mean change in summed
          log-prob, evaluated model minus starting model. dTgt: the same for the target answer.
          Squeezing: the target falls far more than its beliefs (dTgt << dHigh; in the paper's Fig. 2
          dHigh even rises) and Leak stays high: the fact survives in other words
  Leak    (toy) fraction of forget questions whose greedy answer still contains the fact's key entity

Choices:
1. Truth ratio uses the geometric mean (open-unlearning's default and TOFU's own code); `--tr_mean arith`
   gives the TOFU paper's formula. FQ's KS test runs on raw R, as both do.
2. TR_mem in Mem is the open-unlearning meta-eval's truth ratio, mean p_true / (p_true + p_pert) =
   mean 1 / (1 + R), which is high when the model still prefers the truth. It cannot be the reported forget
   TR, min(R, 1/R): that is *highest* for a model that forgot, so 1 - TR would reward memorisation.
3. Beliefs are sampled (temperature 1, --n_beliefs per question, seeded), not beam-searched: bs.generate
   samples in batches. Duplicates and the target answer itself are dropped (the target has its own column),
   and the remaining beliefs of each question are ranked by the starting model's summed log-prob (banding
   per question, so long and short answers are not compared). A band's delta is the mean over its samples.
4. Every forget row is scored (TOFU's legacy eval used the first 300). TOFU forget / retain rows come
   from the *_perturbed splits (retain_perturbed: 400 retain rows with paraphrases and perturbations).
5. The paper's fluency term (a gibberish classifier from the hub, on the forget answers) is off by default,
   so everything runs offline; with --fluency it must be downloadable or in the HF cache.
6. ES and EM are teacher-forced on the forget target (score_examples' n_suffix and n_correct).
7. Every model must share the starting model's token ids, EOS / pad ids and chat template: a run whose
   tokenizer.json maps tokens to other ids feeds its weights the wrong tokens, and the garbage scores as the
   best forgetting of the table. --allow_tokenizer_mismatch evaluates it anyway, with a warning.
"""
import argparse
import functools
import json
import math
import os
import time

import plumbing  # first: Ctrl-C while torch loads ends in one line too
import numpy as np
import torch
from rouge_score import rouge_scorer
from scipy.stats import ks_2samp

import bs_unlearn as bs
import toy_world

# -----------------------------------------------------------------------------------------------------
# Config

FLUENCY_MODEL = "madhurjindal/autonlp-Gibberish-Detector-492513457"  # the classifier open-unlearning uses


def get_args(argv=None):
    p = bs.Parser(description=__doc__.split("\n\n")[0], epilog=__doc__[__doc__.index("Metrics, per split"):])
    count = bs.number(int, 1)
    p.add_argument("runs", nargs="*", help="run directories written by bs_unlearn.py (or any saved model)")
    # data (defaults: what the runs were trained on, from their run_config.json)
    p.add_argument("--data", default=None, choices=["toy", "tofu"], help="default: the runs', else toy")
    p.add_argument("--data_dir", default=None, help="local TOFU files (default: the runs', else the hub)")
    p.add_argument("--forget_split", default=None, choices=["forget01", "forget05", "forget10"],
                   help="default: the runs', else forget10")
    p.add_argument("--max_rows", type=bs.number(int, 0), default=0,
                   help="only the first N rows of every split (0: all)")
    # reference models
    p.add_argument("--base_model", default=None,
                   help="the starting model (default: the runs' model_path; toy: the cached full model)")
    p.add_argument("--retain_model", default=None,
                   help="the retain-only model, for FQ (toy: the cached one; TOFU: none, so no FQ)")
    p.add_argument("--cache_dir", default=None,
                   help="the toy models' cache (default: the runs', else bs_unlearn.py's default)")
    p.add_argument("--system_prompt", default=None, help="the prompt's system turn (default: the runs')")
    p.add_argument("--date_string", default=None, help="the chat template's date (default: the runs')")
    p.add_argument("--allow_tokenizer_mismatch", action="store_true",
                   help="evaluate a model whose tokenizer is not the starting model's (choice 7)")
    # metrics
    p.add_argument("--tr_mean", default="geo", choices=["geo", "arith"],
                   help="mean over the perturbed answers in the truth ratio\n"
                        "(geo: open-unlearning, TOFU's code; arith: the TOFU paper)")
    p.add_argument("--max_new_tokens", type=count, default=200, help="greedy answers for ROUGE")
    p.add_argument("--n_beliefs", type=count, default=10, help="answers sampled per forget question (bands)")
    p.add_argument("--belief_temp", type=bs.number(float, 0, above=True), default=1.0,
                   help="temperature of the belief samples")
    p.add_argument("--fluency", action="store_true", help="add the paper's fluency classifier (hub, once)")
    p.add_argument("--fluency_model", default=FLUENCY_MODEL, help="HF id or path of the gibberish classifier")
    # system
    p.add_argument("--out_dir", default=os.path.join("runs", "eval"), help="the folder the JSON files go to")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier evaluation in --out_dir (a folder holding anything else: never)")
    p.add_argument("--batch_size", type=count, default=64, help="sequences per forward / generate batch")
    p.add_argument("--device", default="auto", help="auto | cuda | cuda:N | mps | cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="weights: auto = bf16 on CUDA, fp32 elsewhere (no fp16: it breaks the truth ratio)")
    p.add_argument("--seed", type=bs.number(int, -2**31, 2**31 - 1), default=0, help="seed of the belief samples")
    p.add_argument("--threads", type=bs.number(int, 0), default=0,
                   help="CPU threads (0: torch's default, but the toy model runs on one)")
    return p.parse_args(argv)


def read_run(path):
    """A run directory's run_config.json ({} for a plain saved model); a one-line error if it is no model,
    or a run that did not finish (bs_unlearn.py writes run_config.json last)."""
    if not os.path.isdir(path):
        bs.fail(f"run directory not found: {path}")
    cfg = os.path.join(path, "run_config.json")
    if os.path.isfile(os.path.join(path, "log.jsonl")) and not os.path.isfile(cfg):
        bs.fail(f"{path} is a run that did not finish (log.jsonl but no run_config.json); run it again")
    if not os.path.isfile(os.path.join(path, "config.json")):
        bs.fail(f"{path} is not a model directory (no config.json)")
    if not os.path.isfile(cfg):
        return {}
    try:
        with open(cfg) as f:
            run = json.load(f)
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
        bs.fail(f"cannot read {cfg}: {e}")
    if not isinstance(run, dict):
        bs.fail(f"{cfg} holds a JSON {type(run).__name__}, not a run's settings")
    return run


def resolve(args):
    """Fill --data / --forget_split / --data_dir from the runs and pick the two references. Checks everything
    that can fail cheaply, before any model is loaded. Returns (base_path, retain_path or None)."""
    cfgs = [read_run(r) for r in args.runs]
    for key, default in (("data", "toy"), ("forget_split", "forget10"), ("system_prompt", None),
                         ("date_string", None)):
        seen = {c[key] for c in cfgs if c.get(key)}
        if getattr(args, key) is None:
            if len(seen) > 1:
                bs.fail(f"the runs disagree on --{key} ({', '.join(sorted(seen))}); evaluate them separately")
            setattr(args, key, seen.pop() if seen else default)
        elif seen - {getattr(args, key)}:
            bs.fail(f"--{key} {getattr(args, key)} but the runs were trained with {', '.join(sorted(seen))}")
    args.data_dir = args.data_dir or next((c["data_dir"] for c in cfgs if c.get("data_dir")), None)
    starts = {c["model_path"] for c in cfgs if c.get("model_path")}
    if len(starts) > 1 and not args.base_model:
        bs.fail(f"the runs start from different models ({', '.join(sorted(starts))}); pass --base_model")
    base, retain = args.base_model or (starts.pop() if starts else None), args.retain_model
    if args.data == "toy" and all(c.get("model", "toy") == "toy" for c in cfgs):
        # the embedded example: both references are cached (and built once if missing)
        cache = args.cache_dir or next((c["cache_dir"] for c in cfgs if c.get("cache_dir")), None)
        seed = next((c["seed"] for c in cfgs if "seed" in c), 0)
        cache = cache or bs.get_args([]).cache_dir
        full, toy_retain = toy_world.ensure_toy_models(cache, args.forget_split, seed)
        base, retain = base or full, retain or toy_retain
    if not base:
        bs.fail(f"--data {args.data} needs the starting model: pass --base_model or a run directory")
    return base, retain


def check_weights(path):
    """A local model folder holds weights, and each safetensors header fits its file: a cut copy fails here,
    in a second, not after the references were evaluated."""
    from safetensors import safe_open
    files = [f for f in sorted(os.listdir(path)) if f.endswith((".safetensors", ".bin"))]
    if not files:
        bs.fail(f"cannot load model {path!r}: no weights file (*.safetensors or *.bin)")
    for f in files:
        try:
            if f.endswith(".safetensors"):
                with safe_open(os.path.join(path, f), "pt"):
                    pass
        except Exception as e:  # safetensors' own error: a truncated or damaged file
            bs.fail(f"cannot load model {path!r}: {f} is cut or damaged ({e})")


def check_models(models, allow_mismatch=False):
    """Before any model is loaded: local weights are whole, and every model reads text as the starting model,
    models[0], does (choice 7). Only the tokenizers are loaded; pad is compared as bs.load_model sets it."""
    ref = None
    for _, path in models:
        if os.path.isdir(path):
            check_weights(path)
        tok = bs.load_tokenizer(path)
        mine = {"token ids": tok.get_vocab(), "EOS id": tok.eos_token_id, "pad id": tok.pad_token_id,
                "chat template": getattr(tok, "chat_template", None)}
        ref = ref or mine
        diff = [k for k, v in mine.items() if v != ref[k]]
        if diff:
            msg = f"the tokenizer of {path} differs from the starting model's ({', '.join(diff)})"
            if not allow_mismatch:
                bs.fail(f"{msg}: its numbers would mean nothing (--allow_tokenizer_mismatch if you know)")
            print(f"warning: {msg}; evaluated anyway (--allow_tokenizer_mismatch)")


# -----------------------------------------------------------------------------------------------------
# Data: evaluation rows per split, in TOFU's schema


def load_eval_data(data="toy", forget_split="forget10", data_dir=None, max_rows=0):
    """{split: rows}. Every row has question, answer, perturbed_answer (a list); forget / retain rows also
    paraphrased_answer; toy rows also `fact`, the key entity the fact-leak check looks for."""
    if data == "toy":
        forget, retain = toy_world.split_toy(toy_world.make_toy_data(), forget_split)
        splits = dict(forget=forget, retain=retain)
    else:
        names = dict(forget=f"{forget_split}_perturbed", retain="retain_perturbed",
                     real_authors="real_authors_perturbed", world_facts="world_facts_perturbed")
        splits = {k: bs.load_tofu(v, data_dir) for k, v in names.items()}
    for name, rows in splits.items():
        if not rows or "perturbed_answer" not in rows[0]:
            bs.fail(f"split {name!r} is empty or has no perturbed_answer column")
        if len({len(r["perturbed_answer"]) for r in rows}) > 1:
            bs.fail(f"rows of split {name!r} have different numbers of perturbed answers")
    return {k: v[:max_rows] if max_rows else v for k, v in splits.items()}


# -----------------------------------------------------------------------------------------------------
# Metrics: small pure functions of per-sample numbers (no model inside)


def norm_prob(logp, n_tokens):
    """Per-sample probability, length-normalised: p = exp(logp / |y|) = exp(-mean token NLL)."""
    return np.exp(np.asarray(logp, np.float64) / np.maximum(np.asarray(n_tokens, np.float64), 1))


def truth_ratio(p_true, p_pert, mean="geo"):
    """R = p_pert / p_true per row. p_true (N,), p_pert (N, K): normalised probabilities. p_pert is the
    geometric mean over the K perturbed answers (geo) or their arithmetic mean (arith). Logs: no underflow."""
    p_true, p_pert = np.asarray(p_true, np.float64), np.asarray(p_pert, np.float64)
    log_pert = np.log(p_pert).mean(-1) if mean == "geo" else np.log(p_pert.mean(-1))
    return np.exp(log_pert - np.log(p_true))  # (N,)


def tr_forget(R):
    """Forget-set TR: mean min(R, 1/R); 1 when true and false answers are equally likely."""
    R = np.asarray(R, np.float64)
    return float(np.mean(np.minimum(R, 1 / R)))


def tr_keep(R):
    """Retain / real_authors / world_facts TR: mean max(0, 1 - R); high when the truth wins."""
    return float(np.mean(np.maximum(0, 1 - np.asarray(R, np.float64))))


def tr_mem(R):
    """Mem's truth ratio (choice 2): mean p_true / (p_true + p_pert) = mean 1 / (1 + R); 0.5: no preference.
    High while the model still prefers the truth, so 1 - tr_mem measures forgetting."""
    return float(np.mean(1 / (1 + np.asarray(R, np.float64))))


def option_prob(p_true, p_pert):
    """real_authors / world_facts Prob per row: p_true / (p_true + sum_j p_pert_j). p_pert (N, K)."""
    p_true, p_pert = np.asarray(p_true, np.float64), np.asarray(p_pert, np.float64)
    return p_true / (p_true + p_pert.sum(-1))


def hmean(values):
    """Harmonic mean; 0 as soon as one value is 0 (TOFU's model utility). None for no values."""
    values = [float(v) for v in values]
    if not values:
        return None
    if min(values) <= 0:
        return 0.0
    return len(values) / sum(1 / v for v in values)


@functools.lru_cache(maxsize=1)
def _rouge():
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_recall(target, prediction):
    """ROUGE-L recall: LCS(target, prediction) / |target| over rouge_score's stemmed word tokens."""
    return _rouge().score(target, prediction)["rougeL"].recall


def forget_quality(R_model, R_retain):
    """KS-test p-value: could the two forget-set truth-ratio samples come from one distribution?"""
    return float(ks_2samp(np.asarray(R_model, np.float64), np.asarray(R_retain, np.float64)).pvalue)


def extraction_strength(n_suffix, n_tokens):
    """ES per row = 1 - k*/|y|, k* the shortest prefix after which greedy teacher-forced predictions match
    the rest, so ES = (length of the all-correct suffix) / |y|."""
    return np.asarray(n_suffix, np.float64) / np.maximum(np.asarray(n_tokens, np.float64), 1)


def exact_match(n_correct, n_tokens):
    """EM per row: fraction of answer positions where the argmax is the label."""
    return np.asarray(n_correct, np.float64) / np.maximum(np.asarray(n_tokens, np.float64), 1)


def fact_leak(answers, facts):
    """Fraction of answers that contain their fact's key entity (case-insensitive)."""
    return float(np.mean([f.lower() in a.lower() for a, f in zip(answers, facts)]))


def belief_bands(base_logps):
    """Fig. 2's bands for one question's beliefs: rank r of m (most likely first under the starting model)
    is 'high' if r/m < 0.2 (top 20%), 'mid' if r/m < 0.6, else 'low'."""
    order = sorted(range(len(base_logps)), key=lambda i: -base_logps[i])
    bands = [None] * len(base_logps)
    for r, i in enumerate(order):
        bands[i] = "high" if r / len(order) < 0.2 else "mid" if r / len(order) < 0.6 else "low"
    return bands


def belief_deltas(bands, base_logp, model_logp):
    """Mean (model - starting model) summed log-prob per band; None for an empty band."""
    delta = np.asarray(model_logp, np.float64) - np.asarray(base_logp, np.float64)
    out = {}
    for band in ("high", "mid", "low"):
        sel = [d for d, b in zip(delta, bands) if b == band]
        out[band], out[f"n_{band}"] = (float(np.mean(sel)) if sel else None), len(sel)
    return out


# -----------------------------------------------------------------------------------------------------
# Batched model calls: scoring and bs.generate, one batch at a time so a progress bar can move


@torch.no_grad()
def score_examples(model, tok, examples, batch_size=64, bar=None):
    """Per example, teacher-forced: the summed answer log-prob and the answer length (as bs.score), the answer
    tokens the greedy (argmax) prediction gets right (for EM) and the length of the answer's all-correct tail
    (for ES). Batches of similar lengths (less padding), results in the given order."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    out = {k: [] for k in ("logp", "n_tokens", "n_correct", "n_suffix")}
    was_training = model.training
    model.eval()
    for j in range(0, len(order), batch_size):
        batch = bs.collate([examples[i] for i in order[j:j + batch_size]], tok.pad_token_id)
        logits = bs.forward(model, batch)
        labels = batch["labels"].to(logits.device)
        mask = labels[:, 1:] != -100
        hit = logits[:, :-1].argmax(-1) == labels[:, 1:]  # (B, T-1)
        tail = (hit | ~mask).flip(-1).long().cumprod(-1).flip(-1).bool()  # all correct from here to the end
        out["logp"].append(bs.sequence_logps(logits, labels))
        out["n_tokens"].append(mask.sum(-1))
        out["n_correct"].append((hit & mask).sum(-1))
        out["n_suffix"].append((tail & mask).sum(-1))
        if bar is not None:
            bar.update(1)
    model.train(was_training)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return {k: torch.cat(v).cpu()[inverse] for k, v in out.items()}


def greedy_answers(model, tok, prompts, max_new_tokens, batch_size=64, bar=None):
    """Greedy answers (cut at EOS) to prompts (lists of token ids), decoded without special tokens."""
    out = []
    for j in range(0, len(prompts), batch_size):
        ids = bs.generate(model, tok, prompts[j:j + batch_size], max_new_tokens, batch_size=batch_size)
        out += [tok.decode(s[0], skip_special_tokens=True).strip() for s in ids]
        if bar is not None:
            bar.update(1)
    return out


# -----------------------------------------------------------------------------------------------------
# Beliefs: what the starting model itself says about the forget questions (drawn once, reused for all)


def draw_beliefs(model, tok, forget_rows, n=10, temperature=1.0, seed=0, batch_size=64):
    """Sample n answers per forget question from the starting model; keep the distinct ones that are not
    the target answer; band them per question by the model's summed log-prob. Kept as text, so every
    evaluated model re-encodes them with its own tokenizer. Returns dict(samples=[dict(row, text,
    base_logp, band)], target_logp=[the target answer's log-prob per row])."""
    enc = bs.encode_rows(tok, forget_rows)
    prompts = [e["input_ids"][:e["prompt_len"]] for e in enc]
    max_new = max(len(e["input_ids"]) - e["prompt_len"] for e in enc)  # beliefs are answer-length
    torch.manual_seed(seed)
    outs = bs.generate(model, tok, prompts, max_new, n=n, do_sample=True, temperature=temperature,
                       batch_size=batch_size)  # batch_size prompts x n samples per call: one wide batch
    samples, examples = [], []
    for i, (row, e, ss) in enumerate(zip(forget_rows, enc, outs)):
        seen = {tuple(e["input_ids"])}  # the target itself counts as seen: it has its own column
        for s in ss:
            text = tok.decode(s, skip_special_tokens=True).strip()
            ex = bs.encode(tok, row["question"], text)
            if text and tuple(ex["input_ids"]) not in seen:
                seen.add(tuple(ex["input_ids"]))
                samples.append(dict(row=i, text=text))
                examples.append(ex)
    logp = score_examples(model, tok, examples + enc, batch_size)["logp"].tolist()
    for b, lp in zip(samples, logp):
        b["base_logp"] = lp
    per_row = {}
    for b in samples:
        per_row.setdefault(b["row"], []).append(b)
    for mine in per_row.values():  # bands per question (choice 3)
        for b, band in zip(mine, belief_bands([b["base_logp"] for b in mine])):
            b["band"] = band
    return dict(samples=samples, target_logp=logp[len(samples):])


# -----------------------------------------------------------------------------------------------------
# Evaluation of one model


def evaluate_split(model, tok, split, rows, args, beliefs=None, desc=None):
    """Every metric of one split: one packed list of answer variants scored in batches, one batch of
    greedy answers. Returns the split's means plus per-row values under 'rows'."""
    from tqdm.auto import tqdm
    true_key = "paraphrased_answer" if "paraphrased_answer" in rows[0] else "answer"
    # 1. pack every answer variant: [target, (paraphrase), perturbed_1..K] per row, then the beliefs
    variants = [[r["answer"]] + ([r[true_key]] if true_key != "answer" else []) + list(r["perturbed_answer"])
                for r in rows]
    N, V, K = len(rows), len(variants[0]), len(rows[0]["perturbed_answer"])
    examples = [bs.encode(tok, r["question"], a) for r, vs in zip(rows, variants) for a in vs]
    prompts = [e["input_ids"][:e["prompt_len"]] for e in examples[::V]]
    if beliefs is not None:
        examples += [bs.encode(tok, rows[b["row"]]["question"], b["text"]) for b in beliefs["samples"]]
    n_batches = math.ceil(len(examples) / args.batch_size) + math.ceil(N / args.batch_size)
    with tqdm(total=n_batches, desc=desc or split, leave=False, disable=None) as bar:  # (None: on a terminal only)
        s = score_examples(model, tok, examples, args.batch_size, bar)
        answers = greedy_answers(model, tok, prompts, args.max_new_tokens, args.batch_size, bar)
    # 2. per-row numbers; p_* are length-normalised probabilities
    logp = s["logp"][:N * V].view(N, V).double().numpy()  # (N, V)
    p = norm_prob(logp, s["n_tokens"][:N * V].view(N, V).numpy())  # (N, V)
    p_answer, p_true, p_pert = p[:, 0], p[:, V - K - 1], p[:, V - K:]  # p_true is p_answer when V = K + 1
    R = truth_ratio(p_true, p_pert, args.tr_mean)  # (N,)
    target = slice(0, N * V, V)  # the target answer's rows of the packed list
    es = extraction_strength(s["n_suffix"][target].numpy(), s["n_tokens"][target].numpy())
    em = exact_match(s["n_correct"][target].numpy(), s["n_tokens"][target].numpy())
    rouge = [rouge_recall(r["answer"], a) for r, a in zip(rows, answers)]
    # 3. the split's means
    prob = p_answer if true_key == "paraphrased_answer" else option_prob(p_answer, p_pert)
    out = dict(n=N, prob=float(prob.mean()), rouge=float(np.mean(rouge)),
               tr=tr_forget(R) if split == "forget" else tr_keep(R), tr_mem=tr_mem(R),
               es=float(es.mean()), em=float(em.mean()))
    if true_key == "paraphrased_answer":
        out["para_prob"] = float(p_true.mean())
    if "fact" in rows[0]:
        out["fact_hit"] = fact_leak(answers, [r["fact"] for r in rows])
    if beliefs is not None:  # belief retention: summed log-prob, this model minus the starting model
        model_logp = s["logp"][N * V:].tolist()
        out["beliefs"] = dict(target=float(np.mean(logp[:, 0] - np.asarray(beliefs["target_logp"]))),
                              **belief_deltas([b["band"] for b in beliefs["samples"]],
                                              [b["base_logp"] for b in beliefs["samples"]], model_logp))
    out["rows"] = dict(prob=prob.tolist(), R=R.tolist(), rouge=rouge, es=es.tolist(), em=em.tolist(),
                       logp_answer=logp[:, 0].tolist(), answer=answers)
    return out


def evaluate(model, tok, data, beliefs=None, args=None, name="model", fluency=None, retain_R=None):
    """All metrics of one in-memory model on `data` (from load_eval_data). `beliefs` (draw_beliefs on the
    starting model) adds belief retention; `fluency` (load_fluency) the paper's fluency; `retain_R` (the
    retain-only model's forget truth ratios) forget quality. Returns a JSON-able dict; 'summary' holds
    the table's numbers."""
    args = args or get_args([])
    res = dict(name=name, tr_mean=args.tr_mean, splits={})
    for split, rows in data.items():
        if beliefs is not None and split == "forget" and len(beliefs["target_logp"]) != len(rows):
            raise ValueError("beliefs were drawn on different forget rows")
        mine = beliefs if split == "forget" else None
        res["splits"][split] = evaluate_split(model, tok, split, rows, args, mine, desc=f"{name}: {split}")
    if fluency is not None:
        res["fluency"] = float(np.mean(fluency(res["splits"]["forget"]["rows"]["answer"])))
    res["summary"] = summarise(res, retain_R)
    return res


def summarise(res, retain_R=None):
    """The headline numbers of one evaluated model (the printed table's row)."""
    sp, f = res["splits"], res["splits"]["forget"]
    mu_parts = [sp[s][m] for s in ("retain", "real_authors", "world_facts") if s in sp
                for m in ("prob", "rouge", "tr")]  # 9 numbers on TOFU, 3 on the toy data
    mu = hmean(mu_parts)
    mem = hmean([1 - f["es"], 1 - f["em"], 1 - f["para_prob"], 1 - f["tr_mem"]])  # see choice 2
    util = hmean([mu, res["fluency"]]) if res.get("fluency") is not None else mu
    b = f.get("beliefs", {})
    return dict(forget_prob=f["prob"], forget_rouge=f["rouge"], forget_tr=f["tr"],
                fact_leak=f.get("fact_hit"),
                d_target=b.get("target"), d_high=b.get("high"), d_mid=b.get("mid"), d_low=b.get("low"),
                fq=forget_quality(f["rows"]["R"], retain_R) if retain_R is not None else None,
                mu=mu, mu_n=len(mu_parts),
                es=f["es"], em=f["em"], para_prob=f["para_prob"], tr_mem=f["tr_mem"], mem=mem,
                fluency=res.get("fluency"), util=util, agg=hmean([mem, util]) if util is not None else None)


def load_fluency(name=FLUENCY_MODEL, device="cpu", batch_size=64):
    """The paper's fluency: a gibberish classifier's probability that each text is 'clean' (open-unlearning
    scores the forget answers with it). Needs the hub once, then the HF cache. Returns texts -> list."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    try:
        ftok = AutoTokenizer.from_pretrained(name)
        clf = AutoModelForSequenceClassification.from_pretrained(name).to(device).eval()
    except Exception as e:  # offline with no cache, or a wrong name: one line, not a traceback
        bs.fail(f"--fluency could not load the classifier {name!r} ({type(e).__name__}); "
                "it needs the hub once")
    clean = {v.lower(): k for k, v in clf.config.id2label.items()}.get("clean", 0)

    @torch.no_grad()
    def fluency(texts):
        out = []
        for i in range(0, len(texts), batch_size):
            batch = ftok(texts[i:i + batch_size], padding=True, truncation=True, max_length=512,
                         return_tensors="pt").to(device)
            out += clf(**batch).logits.float().softmax(-1)[:, clean].tolist()
        return out
    return fluency


# -----------------------------------------------------------------------------------------------------
# The table

COLUMNS = [  # (summary key, header, format)
    ("forget_prob", "fProb", ".3f"), ("forget_rouge", "fROUGE", ".3f"), ("forget_tr", "fTR", ".3f"),
    ("fact_leak", "Leak", ".3f"), ("d_target", "dTgt", "+.2f"), ("d_high", "dHigh", "+.2f"),
    ("d_mid", "dMid", "+.2f"), ("d_low", "dLow", "+.2f"), ("fq", "FQ", ".2g"), ("mu", "MU", ".3f"),
    ("mem", "Mem", ".3f"), ("util", "Util", ".3f"), ("agg", "Agg", ".3f")]
LEGEND = """\
fProb / fROUGE / fTR: forget-set Prob, ROUGE-L recall, truth ratio min(R, 1/R)
Leak: greedy forget answers that still name the fact (toy); FQ: forget quality; MU: model utility
dTgt / dHigh / dMid / dLow: log-prob change vs the starting model, of the target and of its beliefs by band
Mem / Util / Agg: the paper's summary; higher is better for FQ, MU, Mem, Util and Agg"""


def tidy(x, fmt):
    """Round fixed-point cells first, so a -1e-7 prints as +0.00, not -0.00."""
    return round(x, int(fmt[-2])) + 0.0 if fmt.endswith("f") else x


def format_table(summaries):
    """summaries: {name: summary}. Fixed-width text, one row per model; '-' where a number does not apply."""
    width = max([5] + [len(n) for n in summaries])
    lines = [f"{'model':<{width}} " + " ".join(f"{h:>7}" for _, h, _ in COLUMNS)]
    for name, s in summaries.items():
        cells = [f"{tidy(s[k], fmt):{fmt}}" if s.get(k) is not None else "-" for k, _, fmt in COLUMNS]
        lines.append(f"{name:<{width}} " + " ".join(f"{c:>7}" for c in cells))
    return "\n".join(lines)


def output_dir(out_dir, overwrite=False):
    """The folder the results go to, written whole or not at all (plumbing.atomic_dir): claimed from the
    start, so a second evaluation into it is refused at once, and in place only once every file is written.
    An earlier evaluation there is replaced only with --overwrite. A full disk or Ctrl-C leaves what was there
    before, and no temporary folder."""
    def earlier_evaluation(path):
        return overwrite and plumbing.eval_problem(path) is None
    return plumbing.atomic_dir(out_dir, earlier_evaluation)


def write_outputs(folder, files):
    """{file name: JSON-able} as JSON files in folder. summary.json lists them all, so that a later --overwrite
    knows the folder for an evaluation and nothing else."""
    try:
        for name, obj in files.items():
            if name == plumbing.EVAL_SUMMARY:
                obj = dict(obj, files=sorted(files))
            with open(os.path.join(folder, name), "w") as f:
                json.dump(obj, f, indent=1)
    except OSError as e:
        bs.fail(f"cannot write the results: {e.strerror or e}")


# -----------------------------------------------------------------------------------------------------
# main


def main(argv=None):
    t0 = time.time()
    args = get_args(argv)
    device = bs.pick_device(args.device)  # one line for a device that is not one, or not here
    # everything that can fail cheaply fails here, before any model is loaded
    plumbing.check_out_dir(args.out_dir, args.overwrite, args.runs, plumbing.eval_problem, "evaluation")
    base_path, retain_path = resolve(args)
    names = [os.path.basename(os.path.normpath(r)) for r in args.runs]  # a run is named by its directory
    names = [n if names.count(n) == 1 and n not in ("base", "retain", "summary") else f"{n}_{i}"
             for i, n in enumerate(names)]
    if len(set(names)) < len(names):  # (say runs a/x, b/x and x_1)
        bs.fail(f"two runs would be reported as one ({', '.join(names)}); rename a run's folder")
    models = [("base", base_path)] + ([("retain", retain_path)] if retain_path else [])
    models += list(zip(names, args.runs))
    check_models(models, args.allow_tokenizer_mismatch)  # the base first: the others are compared with it
    data = load_eval_data(args.data, args.forget_split, args.data_dir, args.max_rows)
    fluency = load_fluency(args.fluency_model, device, args.batch_size) if args.fluency else None
    print(f"evaluating {len(models)} models on {args.data} {args.forget_split} "
          f"({', '.join(f'{k} {len(v)}' for k, v in data.items())} rows) on {device}")
    results, beliefs = {}, None
    with output_dir(args.out_dir, args.overwrite) as out:  # (claimed now: a second evaluation into it stops)
        for name, path in models:  # the base first: its beliefs are drawn once and reused by every model
            t = time.time()
            model, tok = bs.load_model(path, device, args.dtype, args.system_prompt, args.date_string)
            if args.threads:  # after load_model, which puts the toy model on one thread
                torch.set_num_threads(args.threads)
            if beliefs is None:
                beliefs = draw_beliefs(model, tok, data["forget"], args.n_beliefs, args.belief_temp, args.seed,
                                       args.batch_size)
            results[name] = dict(evaluate(model, tok, data, beliefs, args, name, fluency), path=path)
            del model
            print(f"  {name}: {time.time() - t:.1f} s")
        # forget quality needs the retain-only model's truth ratios, so the summaries come last
        retain_R = results["retain"]["splits"]["forget"]["rows"]["R"] if "retain" in results else None
        for res in results.values():
            res["summary"] = summarise(res, retain_R)
            res["config"] = dict(vars(args), base_model=base_path, retain_model=retain_path)
        summaries = {name: res["summary"] for name, res in results.items()}
        summary = dict(summaries=summaries, beliefs=beliefs, config=results["base"]["config"])
        write_outputs(out, {**{f"{name}.json": res for name, res in results.items()},
                            plumbing.EVAL_SUMMARY: summary})
    print(format_table(summaries))
    print(LEGEND)
    print(f"MU from {summaries['base']['mu_n']} numbers; {len(beliefs['samples'])} beliefs; "
          f"wrote {args.out_dir}/; wall time {time.time() - t0:.1f} s")
    return results


if __name__ == "__main__":
    bs.run_main(main, "nothing written")  # Ctrl-C, pipes, disk: one line
