"""
dev/grid.py: the paper's comparison (its Table 1): GradDiff, NPO, RMU, SimNPO, WGA, BS-T and BS-S x forget
splits x seeds, optionally over a small grid of settings per method, every run evaluated with eval.py's
functions; and a tuned answer that does not fool itself: each method's setting is chosen on tuning seeds
(highest mean Agg) and reported on other seeds, next to every method at one shared setting.

    python dev/grid.py                        # toy: 7 methods x forget01/05/10 x seeds 0-2, shared setting
    python dev/grid.py --splits forget10 --lrs 1e-4,3e-4,1e-3,3e-3 --bss_lambdas 0.25,0.5,0.75 \\
        --tune_seeds 0,1,2 --seeds 3,4,5      # the README's tuned toy table
    python dev/grid.py --world smollm2 --data_dir ../shared/data/tofu ...   # SmolLM2-135M on TOFU forget01
    python dev/grid.py --world tofu --model open-unlearning/tofu_Llama-3.2-1B-Instruct_full \\
        --retain_model open-unlearning/tofu_Llama-3.2-1B-Instruct_retain{keep} ...   # the paper's, on a GPU

Worlds: `toy` (each seed builds its own toy model and retain-only model, from its own initialisation and
training order, on the same 640 facts; --world_seed S keeps one),
`tofu` (a model and its retain-only model, from the hub or local folders; {keep} becomes 99/95/90), and
`smollm2` (dev/real_model.py's setting: SmolLM2-135M-Instruct fine-tuned on forget01 and 3 retain authors,
the fine-tuned models shared with that script through --models_dir). In every world a seed also sets the
batch order and BS-S's samples. Everything runs in this one process.

Each run is a folder <out_root>/<split>/seed<S>/<method>-<setting>/ with result.json (its table numbers),
eval.json (every metric) and log.jsonl (the steps), written whole when it finishes; a rerun skips finished
runs, so an interrupted grid resumes. The references (the starting model, the retain-only model, the beliefs
eval.py bands) are computed once per world. A run that diverges (bs_unlearn's check) is recorded as stopped,
and a setting stopped on any tuning seed cannot be chosen (the check does not watch RMU's retain term, a
distance, so RMU's runs stop only on NaN or inf). The tables go to stdout and <out_root>/table.md, every
number to <out_root>/table.json.
"""
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the project's modules live one folder up
from plumbing import Diverged  # noqa: E402  (first: Ctrl-C while torch loads ends in one line too)
import torch  # noqa: E402
import bs_unlearn as bs  # noqa: E402
import eval as ev  # noqa: E402
import toy_world  # noqa: E402

METHODS = ["ga", "npo", "rmu", "simnpo", "wga", "bs_t", "bs_s"]  # Table 1's rows, in its order
NAMES = dict(base="Original", retain="Retrain", ga="GradDiff", npo="NPO", rmu="RMU", simnpo="SimNPO",
             wga="WGA", bs_t="BS-T", bs_s="BS-S")
SHORT = dict(lr="lr", bss_lambda="lam")  # the grid's settings, as they appear in folder names
# The paper's Table 1 (Agg, Mem, Util), for the models it names; only forget10 on Llama-3.2-1B is transcribed
PAPER = {("tofu_Llama-3.2-1B-Instruct", "forget10"): dict(
    base=(0.16, 0.09, 0.71), retain=(0.64, 0.58, 0.71), ga=(0.52, 0.49, 0.56), npo=(0.58, 0.58, 0.58),
    rmu=(0.58, 0.59, 0.57), simnpo=(0.47, 0.35, 0.70), wga=(0.53, 0.47, 0.62), bs_t=(0.59, 0.56, 0.62),
    bs_s=(0.61, 0.59, 0.63))}
CELLS = [("agg", "Agg"), ("mem", "Mem"), ("util", "Util"), ("fq", "FQ"), ("mu", "MU")]  # Table 1's, FQ, MU
SQUEEZE = [("forget_rouge", "fROUGE"), ("fact_leak", "Leak"), ("d_target", "dTgt"), ("d_high", "dHigh")]


def ints(text):
    return [int(s) for s in text.split(",") if s.strip()]


def floats(text):
    return [float(s) for s in text.split(",") if s.strip()]


def get_args(argv=None):
    p = bs.Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world", default="toy", choices=["toy", "tofu", "smollm2"], help="see the docstring")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated, of " + ",".join(METHODS))
    p.add_argument("--splits", default=None, help="default: forget01,forget05,forget10 (smollm2: forget01)")
    p.add_argument("--seeds", type=ints, default="0,1,2", help="the seeds reported")
    p.add_argument("--tune_seeds", type=ints, default="",
                   help="choose each method's setting on these seeds (by mean Agg), then report it on --seeds")
    p.add_argument("--lrs", type=floats, default="", help="learning rates to try (default: the shared one)")
    p.add_argument("--bss_lambdas", type=floats, default="", help="BS-S's lambda values to try")
    p.add_argument("--flags", default="",
                   help="bs_unlearn.py flags for every run: the shared setting (one alone: --flags=--lr=1e-4)")
    p.add_argument("--out_root", default=os.path.join("runs", "grid"), help="one folder per run, and the tables")
    p.add_argument("--tables_only", action="store_true",
                   help="no runs: the tables from the runs already there (give the flags the grid ran with)")
    p.add_argument("--save_models", action="store_true", help="keep every run's weights too (big on GPUs)")
    # the worlds
    p.add_argument("--model", default=None, help="tofu: the starting model (hub id or folder)")
    p.add_argument("--retain_model", default=None, help="tofu: the retain-only model; {keep} = 99/95/90")
    p.add_argument("--data_dir", default=None, help="tofu, smollm2: local TOFU files (default: the hub)")
    p.add_argument("--system_prompt", default=None, help="tofu: the prompt's system turn")
    p.add_argument("--date_string", default=None, help="tofu: the chat template's date")
    p.add_argument("--eval_rows", type=bs.number(int, 0), default=0,
                   help="tofu: only the first N rows of every evaluation split (0: all)")
    p.add_argument("--eval_flags", default="",
                   help="eval.py flags (default: eval.py's; smollm2: real_model's); one alone: --eval_flags=--fluency")
    p.add_argument("--models_dir", default=os.path.join("runs", "real_model"),
                   help="smollm2: where dev/real_model.py keeps (or this script makes) the fine-tuned models")
    p.add_argument("--cache_dir", default=bs.get_args([]).cache_dir, help="toy: the toy models' cache")
    p.add_argument("--world_seed", type=int, default=None,
                   help="toy: one toy model (built from this seed) for every run (default: each seed its own)")
    p.add_argument("--device", default="auto", help="auto | cuda | mps | cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="bf16 on CUDA")
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    if set(args.methods) - set(METHODS):
        bs.fail(f"--methods: unknown {', '.join(sorted(set(args.methods) - set(METHODS)))}")
    default_splits = "forget01" if args.world == "smollm2" else "forget01,forget05,forget10"
    args.splits = [s for s in (args.splits or default_splits).split(",") if s]
    if set(args.splits) - {"forget01", "forget05", "forget10"} or (args.world == "smollm2" and
                                                                    args.splits != ["forget01"]):
        bs.fail(f"--splits {','.join(args.splits)}: forget01, forget05, forget10 (smollm2: forget01 only)")
    if args.world == "tofu" and not args.model:
        bs.fail("--world tofu needs --model (and --retain_model for forget quality and the Retrain row)")
    if not args.seeds:
        bs.fail("--seeds names no seed to report")
    if set(args.tune_seeds) & set(args.seeds):
        bs.fail("--tune_seeds and --seeds overlap: the reported seeds must not be the ones that chose")
    for name, seeds in (("--seeds", args.seeds), ("--tune_seeds", args.tune_seeds)):
        if len(set(seeds)) < len(seeds):
            bs.fail(f"{name} names a seed twice")
    try:
        flags, eval_flags = shlex.split(args.flags), shlex.split(args.eval_flags)
    except ValueError as e:  # an unclosed quote
        bs.fail(f"--flags / --eval_flags: {e}")
    for seed in args.seeds + args.tune_seeds:
        bs.get_args(["--seed", str(seed)])  # a seed torch cannot take fails here, before any run
    if any(lr <= 0 or not math.isfinite(lr) for lr in args.lrs):
        bs.fail(f"--lrs: every learning rate must be > 0 (got {args.lrs})")
    if any(not 0 <= lam <= 1 for lam in args.bss_lambdas):
        bs.fail(f"--bss_lambdas: every lambda must be in [0, 1] (got {args.bss_lambdas})")
    probe = bs.get_args(["--method", "ga", "--seed", "-7"] + flags)  # bad flags fail here, before any run
    plain = bs.get_args(["--method", "ga", "--seed", "-7"])
    for k in ("method", "seed") + NOT_IN_FLAGS:
        if getattr(probe, k) != getattr(plain, k):
            bs.fail(f"--flags sets --{k}, which the grid sets itself (per run, or by its own flag); take it out")
    eprobe, eplain = ev.get_args(eval_flags), ev.get_args([])
    for k in NOT_IN_EVAL_FLAGS:
        if getattr(eprobe, k) != getattr(eplain, k):
            name = "run folders" if k == "runs" else f"--{k}"
            bs.fail(f"--eval_flags sets {name}, which the grid sets itself or does not use; take it out")
    args.shared = {m: setting(m, probe.lr, probe.bss_lambda) for m in args.methods}
    for m in args.methods:  # each setting its own folder: values that print alike would share one
        labels = [label(s) for s in grid(args, m)]
        if len(set(labels)) < len(labels):
            bs.fail(f"--lrs / --bss_lambdas: two values are the same to 6 digits ({', '.join(labels)})")
    return args


# bs_unlearn flags that the grid sets, or that its one-process runs do not use: not accepted in --flags
NOT_IN_FLAGS = ("model", "data", "data_dir", "forget_split", "system_prompt", "date_string",
                "out_dir", "overwrite", "device", "dtype", "cache_dir", "lora_r", "fsdp")
# eval.py flags that the grid sets itself (from the world), or that its in-process evaluation does not use
NOT_IN_EVAL_FLAGS = ("runs", "data", "data_dir", "forget_split", "max_rows", "base_model", "retain_model",
                     "cache_dir", "system_prompt", "date_string", "out_dir", "overwrite", "device", "dtype",
                     "threads")
# what a world's runs and references depend on besides bs_unlearn's flags: kept with every result, checked on
# a rerun, so a folder never mixes worlds (only the flags the world uses: the toy's runs ignore --models_dir)
WORLD = dict(toy=("world_seed",), smollm2=("data_dir", "models_dir"),
             tofu=("model", "retain_model", "data_dir", "system_prompt", "date_string", "eval_rows"))


def fingerprint(args):
    out = {k: getattr(args, k) for k in ("world", "eval_flags", "dtype") + WORLD[args.world]}
    for k in ("model", "retain_model", "data_dir", "models_dir"):  # the same place, however it is written
        if out.get(k) and os.path.exists(out[k]):
            out[k] = os.path.abspath(out[k])
    return out


def read_checked(args, path):
    """A result or references file, if it was made in this world (else one line: another world's file)."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except ValueError:  # (written whole by the grid: only something else cuts or edits it)
        bs.fail(f"{path} is not the JSON the grid wrote; move that run's folder away and rerun to redo it")
    mine, theirs = fingerprint(args), saved.get("world") or {}
    changed = ", ".join(f"--{k} {theirs.get(k)!r} then, {v!r} now" for k, v in mine.items() if theirs.get(k) != v)
    if changed:
        bs.fail(f"{path} was made with other settings ({changed}); use another --out_root")
    CODE.add(saved.get("code", "not recorded"))
    return saved


def code_version():
    """The project's git commit, '+changes' if files differ from it (None outside a git checkout)."""
    def git(*cmd):
        return subprocess.run(["git", "-C", ROOT, *cmd], capture_output=True, text=True, timeout=30).stdout.strip()
    try:
        head = git("rev-parse", "--short", "HEAD")
        return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "") if head else None
    except (OSError, subprocess.SubprocessError):
        return None


CODE = set()  # the code versions of every result read or written: the tables say when there is more than one


# -----------------------------------------------------------------------------------------------------
# Settings: what the grid varies per method


def setting(method, lr, bss_lambda):
    return dict(lr=lr, bss_lambda=bss_lambda) if method == "bs_s" else dict(lr=lr)


def grid(args, method):
    """Every setting to try for a method: --lrs x (BS-S) --bss_lambdas, the shared values where not given."""
    base = args.shared[method]
    lams = (args.bss_lambdas or [base["bss_lambda"]]) if method == "bs_s" else [None]  # (lambda: BS-S's only)
    return [setting(method, lr, lam) for lr in args.lrs or [base["lr"]] for lam in lams]


def label(s):
    return "_".join(f"{SHORT[k]}{v:g}" for k, v in s.items())


# -----------------------------------------------------------------------------------------------------
# Worlds: the starting model, its retain-only model, the rows to train and to evaluate on


def world_key(args, split, seed):
    """The world's references' folder under --out_root: per split, and on the toy per toy model."""
    if args.world == "toy":
        return os.path.join(split, f"refs-toy{seed if args.world_seed is None else args.world_seed}")
    return os.path.join(split, "refs")


def world(args, split, seed, _cache={}):
    key = (args.world, args.world_seed, args.cache_dir, args.model, args.retain_model, args.data_dir, args.models_dir,
           args.eval_rows, args.eval_flags, world_key(args, split, seed))
    if key in _cache:
        return _cache[key]
    keep = 100 - int(split[-2:])
    w = dict(split=split, key=world_key(args, split, seed),
             system_prompt=args.system_prompt, date_string=args.date_string, eval_flags=shlex.split(args.eval_flags))
    if args.world == "toy":
        toy_seed = seed if args.world_seed is None else args.world_seed
        w["start"], w["retain"] = toy_world.ensure_toy_models(args.cache_dir, split, toy_seed)
        w["forget_rows"], w["retain_rows"] = toy_world.split_toy(toy_world.make_toy_data(), split)
        w["evalset"] = ev.load_eval_data("toy", split)
    elif args.world == "tofu":
        w["start"] = args.model
        w["retain"] = args.retain_model and args.retain_model.replace("{keep}", str(keep))
        w["forget_rows"] = bs.load_tofu(split, args.data_dir)
        w["retain_rows"] = bs.load_tofu(f"retain{keep}", args.data_dir)
        w["evalset"] = ev.load_eval_data("tofu", split, args.data_dir, args.eval_rows)
    else:  # smollm2: dev/real_model.py's models and rows
        from dev import real_model as rm
        rargs = rm.get_args(["--data_dir", args.data_dir] if args.data_dir else [])
        forget, retain, evalset = rm.load_rows(rargs)
        base, tok = bs.load_model(rm.smollm2_gguf(), torch.device("cpu"), "float32", rm.SYSTEM_PROMPT)
        w["start"], w["retain"] = (os.path.join(args.models_dir, d) for d in ("full", "retain_only"))
        for path, rows in ((w["start"], forget + retain), (w["retain"], retain)):
            if not os.path.exists(os.path.join(path, "run_config.json")):
                say(f"fine-tuning {path} (dev/real_model.py's setting; once)")
                rm.finetune(base, tok, rows, rargs, path)
        del base
        w.update(forget_rows=forget, retain_rows=retain, evalset=evalset, system_prompt=rm.SYSTEM_PROMPT)
        w["eval_flags"] = w["eval_flags"] or ["--batch_size", "8", "--max_new_tokens", str(rargs.max_new_tokens),
                                              "--n_beliefs", str(rargs.n_beliefs)]
    _cache[key] = w
    return w


def fluency(args, eargs, _loaded={}):
    """The paper's fluency classifier, loaded once, if --eval_flags has --fluency (then Util = HM(MU, fluency))."""
    if not eargs.fluency:
        return None
    if eargs.fluency_model not in _loaded:
        _loaded[eargs.fluency_model] = ev.load_fluency(eargs.fluency_model, bs.pick_device(args.device))
    return _loaded[eargs.fluency_model]


def load(args, w, path):
    return bs.load_model(path, bs.pick_device(args.device), args.dtype, w["system_prompt"], w["date_string"])


def references(args, w, seed):
    """The beliefs (sampled once from the starting model) and the evaluations of the starting and the
    retain-only models, once per world, in <out_root>/<world>/refs.json."""
    path = os.path.join(args.out_root, w["key"], "refs.json")
    if os.path.exists(path):
        return read_checked(args, path)
    eargs = ev.get_args(w["eval_flags"])  # (its beliefs' seed: eval.py's, as its command line draws them)
    t0 = time.time()
    model, tok = load(args, w, w["start"])
    with bs.quiet():
        beliefs = ev.draw_beliefs(model, tok, w["evalset"]["forget"], eargs.n_beliefs, eargs.belief_temp,
                                  eargs.seed, eargs.batch_size)
    refs, retain_R = dict(beliefs=beliefs), None
    if w["retain"]:
        rmodel, rtok = load(args, w, w["retain"])
        with bs.quiet():
            res = ev.evaluate(rmodel, rtok, w["evalset"], beliefs, eargs, "retain", fluency(args, eargs))
        retain_R = res["splits"]["forget"]["rows"]["R"]
        refs["retain"] = dict(summary=ev.summarise(res, retain_R))
    with bs.quiet():
        res = ev.evaluate(model, tok, w["evalset"], beliefs, eargs, "base", fluency(args, eargs), retain_R)
    refs["base"] = dict(summary=res["summary"])
    refs.update(retain_R=retain_R, world=fingerprint(args), code=code_version())
    CODE.add(refs["code"])
    with bs.atomic_dir(os.path.dirname(path)) as tmp:  # (a folder there with anything in it is left alone)
        with open(os.path.join(tmp, "refs.json"), "w") as f:
            json.dump(refs, f)
    say(f"{w['key']}: references in {time.time() - t0:.0f} s")
    return refs


# -----------------------------------------------------------------------------------------------------
# One run: unlearn with bs_unlearn.train, evaluate with eval.evaluate, save the folder whole


def say(text):
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


def run(args, method, s, split, seed):
    """The result of one run ({summary, train_s, ...} or {stopped: why}); from its folder if it finished."""
    folder = os.path.join(args.out_root, split, f"seed{seed}", f"{method}-{label(s)}")
    argv = ["--method", method, "--seed", str(seed)] + shlex.split(args.flags)
    argv += [a for k, v in s.items() for a in (f"--{k}", repr(v))]
    done = os.path.join(folder, "result.json")
    if os.path.exists(done):
        result = read_checked(args, done)
        if result["argv"] != argv:
            bs.fail(f"{folder} was run with other flags ({' '.join(result['argv'])}); use another --out_root")
        return result
    if args.tables_only:
        return None
    w = world(args, split, seed)
    refs = references(args, w, seed)
    targs = bs.get_args(argv)
    model, tok = load(args, w, w["start"])
    forget_ex, retain_ex = bs.encode_rows(tok, w["forget_rows"]), bs.encode_rows(tok, w["retain_rows"])
    result = dict(method=method, setting=s, split=split, seed=seed, argv=argv, world=fingerprint(args),
                  code=code_version(), start=w["start"])
    with bs.atomic_dir(folder) as tmp:
        t0 = time.time()
        try:
            with bs.quiet():
                bs.train(model, tok, forget_ex, retain_ex, targs, log_path=os.path.join(tmp, "log.jsonl"))
        except Diverged as e:  # bs_unlearn's check stopped it (NaN, or diverging): recorded, not retried
            result["stopped"] = str(e.code).removeprefix("error: ")
        result["train_s"] = time.time() - t0
        if "stopped" not in result:
            t0 = time.time()
            eargs = ev.get_args(w["eval_flags"])
            with bs.quiet():
                res = ev.evaluate(model, tok, w["evalset"], refs["beliefs"], eargs, method, fluency(args, eargs),
                                  refs["retain_R"])
            result.update(summary=res["summary"], eval_s=time.time() - t0)
            with open(os.path.join(tmp, "eval.json"), "w") as f:
                json.dump(res, f)
            if args.save_models:
                bs.save_model(model, tok, tmp)
        with open(os.path.join(tmp, "result.json"), "w") as f:
            json.dump(result, f, indent=1)
    CODE.add(result["code"])
    what = (f"stopped ({result['stopped']})" if "stopped" in result else
            f"Agg {result['summary']['agg']:.3f} Mem {result['summary']['mem']:.3f} "
            f"Util {result['summary']['util']:.3f} (train {result['train_s']:.0f} s, eval {result['eval_s']:.0f} s)")
    say(f"{split} seed{seed} {method} {label(s)}: {what}")
    return result


# -----------------------------------------------------------------------------------------------------
# Tuning and the tables


def mean_agg(results):
    """Mean Agg over runs; None if any run stopped; with --tables_only, "not run" if none has run and "k of n
    seeds run" if some have."""
    if any(r is not None and "stopped" in r for r in results):
        return None
    done = sum(r is not None for r in results)
    if done < len(results) or not results:
        return f"{done} of {len(results)} seeds run" if done else "not run"
    return statistics.mean(r["summary"]["agg"] for r in results)


def tune(args, split, method):
    """{label: mean Agg over the tuning seeds} for every setting, and the chosen setting (highest mean Agg)."""
    scores = {}
    for s in grid(args, method):
        scores[label(s)] = (s, mean_agg([run(args, method, s, split, seed) for seed in args.tune_seeds]))
    ok = {k: v for k, v in scores.items() if v[1] is not None and not isinstance(v[1], str)}  # all seeds run
    chosen = max(ok.values(), key=lambda v: v[1])[0] if ok else None
    return {k: v[1] for k, v in scores.items()}, chosen


def stat(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return dict(mean=statistics.mean(values), sd=statistics.stdev(values) if len(values) > 1 else None,
                values=values)


def cell(st, fmt=".3f"):
    """'mean ± sd' ('-' without values, the mean alone with one)."""
    if st is None:
        return "-"
    mean = format(ev.tidy(st["mean"], fmt), fmt)
    return mean if st["sd"] is None else f"{mean} ± {format(ev.tidy(st['sd'], fmt), fmt.lstrip('+'))}"


FORMATS = dict(fq=".2g", d_target="+.2f", d_high="+.2f")  # the rest: .3f


def rows_of(results):
    """{column: stat over seeds} of a list of run results (stopped runs counted apart)."""
    ok = [r for r in results if r is not None and "stopped" not in r]
    out = {k: stat([r["summary"].get(k) for r in ok]) for k, _ in CELLS + SQUEEZE}
    out["stopped"] = sum(1 for r in results if r is not None and "stopped" in r)
    out["missing"] = sum(1 for r in results if r is None)
    return out


def markdown(block, splits, paper=None, cols=CELLS):
    """block: {row name: {split: rows_of(...) plus 'setting'}}, one markdown table, a column group per split."""
    head = "| method | " + " | ".join(f"{sp} {h}" for sp in splits for _, h in cols)
    head += " | setting |" if any("setting" in v for r in block.values() for v in r.values()) else " |"
    lines = [head, "|---|" + "---:|" * (len(cols) * len(splits)) + ("---|" if head.endswith("setting |") else "")]
    order = ["base", "retain"] + METHODS  # Table 1's order, whatever order the runs ran in
    for name, per_split in sorted(block.items(), key=lambda kv: order.index(kv[0].split()[0])):
        cells = []
        for sp in splits:
            r = per_split.get(sp, {})
            for k, _ in cols:
                c = cell(r.get(k), FORMATS.get(k, ".3f"))
                if k == "agg" and r.get("setting", True) is None:
                    c = r["none"]  # (every setting stopped, or with --tables_only, none has run on every seed)
                elif k == "agg" and (r.get("stopped") or r.get("missing")):
                    c += f" ({r['stopped']} stopped)" if r.get("stopped") else f" ({r['missing']} missing)"
                if k == "agg" and paper and paper.get(sp, {}).get(name):
                    c += f" [paper {paper[sp][name][0]:.2f}]"
                cells.append(c)
        settings = {label(per_split[sp]["setting"]) for sp in splits if per_split.get(sp, {}).get("setting")}
        tail = f" | {', '.join(sorted(settings))} |" if head.endswith("setting |") else " |"
        lines.append(f"| {NAMES.get(name, name)} | " + " | ".join(cells) + tail)
    return "\n".join(lines)


def paper_numbers(args):
    if args.world != "tofu":
        return None
    out = {}
    for (model, split), numbers in PAPER.items():
        if model in args.model:
            out[split] = numbers
    return out or None


OWN = {"forget01", "forget05", "forget10", "table.md", "table.json"}  # what a grid writes in --out_root


def check_out_root(args):
    """--out_root holds this grid's folders and tables, or nothing yet: its tables are rewritten on every
    call, so a folder holding anything else is refused (its table.md could be someone's notes)."""
    root = args.out_root
    if os.path.exists(root) and not os.path.isdir(root):
        bs.fail(f"--out_root {root} is a file, not a folder")
    names = set(os.listdir(root)) if os.path.isdir(root) else set()
    others = sorted(n for n in names - OWN if not n.startswith("."))
    try:
        with open(os.path.join(root, "table.json")) as f:
            ours = {"tuning", "shared"} <= set(json.load(f))
    except (OSError, ValueError, TypeError):
        ours = False
    others += [n for n in ("table.md", "table.json") if n in names and not ours]
    if others:
        bs.fail(f"--out_root {root} holds files the grid did not write ({', '.join(others[:3])}); choose another")
    if args.tables_only and not names & {"forget01", "forget05", "forget10"}:
        bs.fail(f"--out_root {root} holds no runs yet: nothing to tabulate")


def write_whole(path, text):
    """A file written in full or not at all: into a hidden neighbour first, renamed once complete."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.partial")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv=None):
    args = get_args(argv)
    check_out_root(args)
    CODE.clear()  # (a second call in one process: only its own runs count)
    t_start = time.time()
    tuned, shared, tuning, refs_rows = {}, {}, {}, {}
    for split in args.splits:
        for m in args.methods:
            if args.tune_seeds:
                scores, chosen = tune(args, split, m)
                tuning.setdefault(m, {})[split] = dict(scores=scores, chosen=chosen and label(chosen))
                rows = rows_of([run(args, m, chosen, split, s) for s in args.seeds]) if chosen else rows_of([])
                pending = any(isinstance(v, str) for v in scores.values())  # ("not run", "k of n seeds run")
                tuned.setdefault(m, {})[split] = dict(rows, setting=chosen,  # (None: no setting to choose)
                                                      none="none chosen yet" if pending else "every setting stopped")
            elif args.lrs or args.bss_lambdas:  # every setting, reported on --seeds
                for s in grid(args, m):
                    tuned.setdefault(f"{m} {label(s)}", {})[split] = dict(
                        rows_of([run(args, m, s, split, seed) for seed in args.seeds]), setting=s)
            shared.setdefault(m, {})[split] = dict(
                rows_of([run(args, m, args.shared[m], split, s) for s in args.seeds]), setting=args.shared[m])
        for ref in ("base", "retain"):
            summaries = []
            for key in dict.fromkeys(world_key(args, split, seed) for seed in args.seeds):
                path = os.path.join(args.out_root, key, "refs.json")
                if os.path.exists(path):
                    summaries.append(read_checked(args, path).get(ref, {}).get("summary"))
            refs_rows.setdefault(ref, {})[split] = dict(rows_of([dict(summary=s) for s in summaries if s]))
    paper = paper_numbers(args)
    seeds = ", ".join(map(str, args.seeds))
    parts = []
    if args.tune_seeds:
        parts.append(f"Each method at the setting chosen on seeds {', '.join(map(str, args.tune_seeds))} "
                     f"(highest mean Agg), reported on seeds {seeds} (mean ± sample sd):")
        parts.append(markdown({**refs_rows, **tuned}, args.splits, paper))
        parts.append("The squeezing diagnostics of the same runs (eval.py's fROUGE, Leak, dTgt, dHigh):")
        parts.append(markdown({**refs_rows, **tuned}, args.splits, cols=SQUEEZE))
        lines = ["Mean Agg of every setting on the tuning seeds (chosen: *):", ""]
        for m, per_split in tuning.items():
            for sp, t in per_split.items():
                lines.append(f"- {NAMES[m]} {sp}: " + ", ".join(
                    f"{k}{'*' if k == t['chosen'] else ''} "
                    f"{'stopped' if v is None else v if isinstance(v, str) else f'{v:.3f}'}"
                    for k, v in t["scores"].items()))
        if any(isinstance(v, str) for t in tuning.values() for p in t.values() for v in p["scores"].values()):
            lines += ["", "A setting not yet run on every tuning seed is left out of the choice, which may change "
                      "once it has."]
        parts.append("\n".join(lines))
    elif tuned:
        parts.append(f"Every setting, on seeds {seeds} (mean ± sample sd):")
        parts.append(markdown({**refs_rows, **tuned}, args.splits, paper))
    parts.append(f"Every method at the shared setting ({args.flags or 'bs_unlearn.py defaults'}), "
                 f"on seeds {seeds} (mean ± sample sd):")
    parts.append(markdown({**refs_rows, **shared}, args.splits, paper))
    parts.append("The squeezing diagnostics of the same runs (eval.py's fROUGE, Leak, dTgt, dHigh):")
    parts.append(markdown({**refs_rows, **shared}, args.splits, cols=SQUEEZE))
    if not ev.get_args(shlex.split(args.eval_flags)).fluency:
        parts.append("Util is MU here: the fluency classifier is off (--eval_flags --fluency adds it; the "
                     "paper's Util includes it" + (", so its Agg in brackets is not on the same scale)." if paper
                                                   else ")."))
    CODE.discard(None)  # (outside a git checkout)
    if len(CODE) > 1:
        parts.append(f"These runs come from {len(CODE)} versions of the code: {', '.join(sorted(CODE))}.")
    text = "\n\n".join(parts)
    print("\n" + text)
    os.makedirs(args.out_root, exist_ok=True)
    write_whole(os.path.join(args.out_root, "table.json"), json.dumps(dict(
        argv=sys.argv[1:] if argv is None else argv, seeds=args.seeds, tune_seeds=args.tune_seeds,
        splits=args.splits, tuned=tuned, shared=shared, refs=refs_rows, tuning=tuning), indent=1, default=str))
    write_whole(os.path.join(args.out_root, "table.md"), text + "\n")
    print(f"\nwrote {args.out_root}/table.md and table.json; {time.time() - t_start:.0f} s")
    return dict(tuned=tuned, shared=shared, refs=refs_rows, tuning=tuning)


if __name__ == "__main__":
    bs.run_main(main, "finished runs are kept; run it again to resume")
