"""
dev/bench.py: speed and memory of GA, NPO, BS-T and BS-S side by side, in one table (and the same as JSON).

cpu  the embedded example: python's start-up; the toy build and a BS-S run on 1 thread and on 2, each alone
     and beside a second identical run (why the toy model runs on one thread); each method's unlearning run
     (ms/step from its log); eval.py on one model; peak resident memory
gpu  a Llama-3.2-1B-shaped model from its config (random bf16 weights) on TOFU-shaped batches: ms/step,
     tokens/s, MFU against the device's measured bf16 matmul rate, BS-S's generation and peak memory for
     N = 1, 3, 5, 10, eval.py at TOFU's size; `--gpu_config 8b` for Llama-3.1-8B's shape,
     `--train_flags "--lora_r 16"` for LoRA. Needs CUDA; `--device cpu --gpu_config tiny` runs it anywhere
Figures are medians of --repeats after a warm-up (the thread rows: one run each). Take them on an idle
machine; the thread rows say how many cores other processes used while they ran.

    python dev/bench.py                            # from the repository root; ~6 min on 2 CPU cores
    python dev/bench.py --skip_build --repeats 1   # a quick look, without the cold start
    python dev/bench.py --skip_cpu                 # on a CUDA machine: the 1B figures
    python dev/bench.py --skip_cpu --gpu_config 8b --methods ga,bs_s --bss_ns 3 [--train_flags "--lora_r 16"]
"""
import argparse
import gc
import json
import math
import os
import platform
import random
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the project's modules live one folder up
import bs_unlearn as bs  # noqa: E402
import eval as ev  # noqa: E402
import scaling  # noqa: E402
import toy_world  # noqa: E402

# -----------------------------------------------------------------------------------------------------
# Config

# Llama-3.2-1B's and Llama-3.1-8B's shapes (from their config.json; here with a tied head, so the 8B-shaped
# model has 0.5B fewer parameters than the real one) and a scaled-down copy with the same structure (GQA)
GPU_CONFIGS = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256),
    "tiny": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=2048),
}
TOFU_SIZES = dict(forget=400, retain=400, real_authors=100, world_facts=117)  # eval.py's *_perturbed splits
METHODS = ["ga", "npo", "bs_t", "bs_s"]
CPU_RUNS = [  # (row, method, extra flags): BS-S off-policy (its default), then resampling every 2 epochs
    ("ga", "ga", []), ("npo", "npo", []), ("bs_t", "bs_t", []), ("bs_s", "bs_s", []),
    ("bs_s regen 2", "bs_s", ["--bss_regen", "2"])]
CPU = torch.device("cpu")


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawTextHelpFormatter)
    # what to run
    p.add_argument("--out", default="bench_results.json", help="where the JSON goes (nothing else is kept)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of ga,npo,bs_t,bs_s")
    p.add_argument("--skip_cpu", action="store_true", help="skip the embedded example's section")
    p.add_argument("--skip_gpu", action="store_true", help="skip the gpu section")
    p.add_argument("--skip_build", action="store_true",
                   help="cpu: no start-up or toy-build rows; runs use --cache_dir (built there if missing)")
    p.add_argument("--gpu_config", default="1b", choices=list(GPU_CONFIGS), help="tiny: the tests' model")
    p.add_argument("--device", default="auto", help="the gpu section's device: auto | cuda | cpu")
    # repeats and sizes
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per figure (we report the median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed repeats before them")
    p.add_argument("--max_rows", type=int, default=0,
                   help="cap every eval split and the gpu's forget / retain sets at N rows (0: all)")
    # cpu section
    p.add_argument("--cpu_epochs", type=float, default=10, help="epochs per cpu run (10: the quick start's)")
    p.add_argument("--cache_dir", default=bs.get_args([]).cache_dir, help="toy models for --skip_build")
    # gpu section (TOFU settings of the paper)
    p.add_argument("--batch_size", type=int, default=8, help="gpu: forget examples per micro-step")
    p.add_argument("--grad_accum", type=int, default=4, help="gpu: micro-steps per optimizer step")
    p.add_argument("--bss_ns", default="1,3,5,10", help="gpu: BS-S beliefs per prompt, one row each")
    p.add_argument("--bss_regen", type=float, default=2,
                   help="gpu: BS-S's mean ms has a generation round every R epochs (0: one per 10 epochs)")
    p.add_argument("--matmul_size", type=int, default=0,
                   help="gpu: n of the n x n matmuls that measure the peak (0: 8192 on CUDA, else 512)")
    p.add_argument("--train_flags", default="",
                   help='gpu: more bs_unlearn.py flags for every row, e.g. "--lora_r 16" (LoRA adapters)')
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    if set(args.methods) - set(METHODS):
        bs.fail(f"--methods takes ga, npo, bs_t, bs_s; got {','.join(args.methods)}")
    args.bss_ns = [int(n) for n in args.bss_ns.split(",") if n]
    if args.repeats < 1 or args.warmup < 0:
        bs.fail("--repeats must be >= 1, --warmup >= 0")
    return args


# -----------------------------------------------------------------------------------------------------
# Timing and memory


def sync(device):
    """Wait for the device: CUDA calls return before the work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats, warmup=1):
    """Run fn() warmup + repeats times; return the timed runs' seconds and their results."""
    secs, outs = [], []
    for i in range(warmup + repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        if i >= warmup:
            secs.append(time.perf_counter() - t0)
            outs.append(out)
    return secs, outs


median = statistics.median


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device):
    """CUDA: peak allocated since reset_peak. CPU: the process's peak resident set (it only grows)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2 ** 20 if sys.platform == "darwin" else rss / 2 ** 10  # bytes on macOS, KiB on Linux


def say(msg):
    """Progress, on stderr, so that stdout is just the table."""
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def step_ms(run_dir):
    """The per-step milliseconds of bs.train's log in run_dir."""
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line)["ms"] for line in f if line.strip()]


def add_x_ga(rows):
    """Each row's mean ms over GA's (None without a GA row)."""
    ga = rows.get("ga", {}).get("ms_mean")
    for r in rows.values():
        if "ms_mean" in r:
            r["x_ga"] = r["ms_mean"] / ga if ga else None
    return rows


# -----------------------------------------------------------------------------------------------------
# cpu: threads. Each job runs in a child process held at a thread count: bs.load_model and the toy build
# ask torch for one thread, so set_num_threads becomes a no-op once the count is set. The child times its
# own job (python's start-up excluded) and prints the seconds and the thread count it ran on.

CHILD = """import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
torch.set_num_threads = lambda _: None
import bs_unlearn, toy_world
t0 = time.perf_counter()
with bs_unlearn.quiet():
    {job}
print(time.perf_counter() - t0, torch.get_num_threads())
"""
JOBS = {  # the child's sys.argv[2:]: a fresh cache (build); the cache, an out_dir, the epochs (bs_s run)
    "toy build": "toy_world.ensure_toy_models(sys.argv[2], with_retain=False)",
    "bs_s run": "bs_unlearn.main(['--method', 'bs_s', '--device', 'cpu', '--cache_dir', sys.argv[2], "
                "'--out_dir', sys.argv[3], '--epochs', sys.argv[4]])",
}


def machine_cpu_s():
    """CPU seconds the whole machine has spent busy (Linux's /proc/stat; None elsewhere)."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, idle, iowait, irq, softirq = map(int, f.readline().split()[1:8])
    except OSError:
        return None
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def children_cpu_s():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # children that have finished
    return usage.ru_utime + usage.ru_stime


def run_children(job, threads, argvs):
    """Start one child per argv at once, each held at `threads`, and wait for all. Returns the mean of
    their own seconds and the cores other processes used meanwhile (None without /proc/stat)."""
    cmd = [sys.executable, "-c", CHILD.format(job=JOBS[job]), str(threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TRANSFORMERS_VERBOSITY="error")
    machine, kids, t0 = machine_cpu_s(), children_cpu_s(), time.perf_counter()
    procs = [subprocess.Popen(cmd + list(a), cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
             for a in argvs]
    outs = [p.communicate()[0].split() for p in procs]  # (one short line each: no pipe fills up)
    wall = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        bs.fail(f"a {job} child on {threads} threads failed; its error is above")
    if {int(out[-1]) for out in outs} != {threads}:
        bs.fail(f"a {job} child did not run on {threads} threads")
    others = None
    if machine is not None:
        others = max(0.0, (machine_cpu_s() - machine - (children_cpu_s() - kids)) / wall)
    return statistics.mean(float(out[-2]) for out in outs), others


def bench_threads(args, tmp, cache):
    """The toy build (unless --skip_build) and a BS-S run of `cache`'s model, on 1 thread and on 2, alone and
    beside a second identical run. Returns the rows and a cache holding the model built alone on 1 thread
    (the runs after use it), or `cache` with --skip_build."""
    rows = {}
    for job in (["toy build"] if not args.skip_build else []) + ["bs_s run"]:
        for threads in (1, 2):
            for n in (1, 2):
                what = f"{job}, {threads} thread{'s' * (threads > 1)}, {['alone', 'beside a second'][n - 1]}"
                say(f"cpu: {what}")
                dirs = [tempfile.mkdtemp(dir=tmp) for _ in range(n)]
                argvs = [[d] if job == "toy build" else [cache, os.path.join(d, "run"), str(args.cpu_epochs)]
                         for d in dirs]
                secs, others = run_children(job, threads, argvs)
                rows[what] = dict(seconds=secs, others_cores=others)
                if job == "toy build" and threads == 1 and n == 1:
                    cache = dirs[0]  # built as a user builds it
    return rows, cache


# -----------------------------------------------------------------------------------------------------
# cpu: the embedded example, as a user runs it


def bench_cpu(args):
    """Start-up, the thread rows, each method's bs_unlearn.main run (wall time; median and mean ms/step
    from its log: BS-S's --bss_regen rounds are in its steps, its first sampling, before step 1, only in the
    wall time), eval.py on the toy model, peak RSS. Every run
    unlearns the same toy model afresh, in a temporary folder."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.skip_build:
            with bs.quiet():
                toy_world.ensure_toy_models(args.cache_dir, with_retain=False)
        else:  # what `python bs_unlearn.py` pays before any work
            say("cpu: python start-up")
            imports = "import bs_unlearn, toy_world; from transformers import LlamaForCausalLM"
            secs, _ = timed(lambda: subprocess.run([sys.executable, "-c", imports], cwd=ROOT, check=True),
                            CPU, args.repeats, args.warmup)
            out["startup_s"] = median(secs)
        out["threads"], cache = bench_threads(args, tmp, args.cache_dir)
        flags = ["--cache_dir", cache, "--device", "cpu", "--overwrite"]
        with bs.quiet():  # warm-up: the first run in a process pays one-off costs (lazy imports, allocations)
            bs.main(flags + ["--method", "ga", "--epochs", "1", "--out_dir", os.path.join(tmp, "warmup")])
        runs = {}
        for name, method, extra in [r for r in CPU_RUNS if r[1] in args.methods]:
            run_dir = os.path.join(tmp, name.replace(" ", "_"))
            run_args = flags + ["--method", method, "--out_dir", run_dir, "--epochs", str(args.cpu_epochs)]

            def run():
                with bs.quiet():
                    bs.main(run_args + extra)
                return step_ms(run_dir)
            say(f"cpu: {name}")
            secs, logs = timed(run, CPU, args.repeats, warmup=0)
            runs[name] = dict(wall_s=median(secs), ms_step=median(median(ms) for ms in logs),
                              ms_mean=median(statistics.mean(ms) for ms in logs), steps=len(logs[-1]))
        out["methods"] = add_x_ga(runs)
        build = out["threads"].get("toy build, 1 thread, alone")
        if build and "bs_s" in runs:  # the README's quick start: a first run, with no cache
            out["quick_start_s"] = out["startup_s"] + build["seconds"] + runs["bs_s"]["wall_s"]
        say("cpu: eval.py on one model")
        with bs.quiet():
            model, tok = bs.load_model(toy_world.toy_model_dir(cache), CPU)
        out["eval"] = bench_eval(model, tok, None, args)
    out["peak_rss_mib"] = peak_mib(CPU)
    return out


def bench_eval(model, tok, data, args):
    """eval.py's time for one model, through its public functions: drawing the beliefs from the starting
    model (once per eval run) and evaluate() (every metric on every split). data None: the toy splits."""
    device = next(model.parameters()).device
    eargs = ev.get_args([])
    if data is None:
        data = ev.load_eval_data("toy", "forget10", max_rows=args.max_rows)
    else:  # a random model never says EOS: stop its greedy answers where a fine-tuned one would (+ EOS)
        eargs.max_new_tokens = max(len(r["answer"].split()) for rows in data.values() for r in rows) + 1

    def draw(rows):
        return ev.draw_beliefs(model, tok, rows, eargs.n_beliefs, eargs.belief_temp, eargs.seed,
                               eargs.batch_size)
    small = {k: v[:8] for k, v in data.items()}
    with bs.quiet():
        ev.evaluate(model, tok, small, draw(small["forget"]), eargs, "warmup")
        reset_peak(device)
        secs_b, beliefs = timed(lambda: draw(data["forget"]), device, args.repeats, warmup=0)
        secs_e, _ = timed(lambda: ev.evaluate(model, tok, data, beliefs[-1], eargs), device,
                          args.repeats, warmup=0)
    return dict(beliefs_s=median(secs_b), model_s=median(secs_e), n_beliefs=len(beliefs[-1]["samples"]),
                peak_mib=peak_mib(device), rows={k: len(v) for k, v in data.items()})


# -----------------------------------------------------------------------------------------------------
# gpu: a Llama-3.2-1B-shaped model on TOFU-shaped data


def word_tokenizer(vocab_size):
    """toy_world's word-level tokenizer with exactly vocab_size ids: its 4 special tokens, the prompt
    format's words, then 'w9' ... 'w<vocab_size - 1>' (its trainer stops at 30000 words, so the vocabulary
    is set here). One word is one token: every row has exactly the token lengths asked for, and the
    cost depends on token counts and the vocabulary's size, not on which tokens."""
    from tokenizers import models
    tok = toy_world.word_tokenizer([])  # only the special tokens
    vocab = tok.get_vocab()
    for word in ["Question", "Answer", ":", "?", "."] + [f"w{i}" for i in range(9, vocab_size)]:
        vocab[word] = len(vocab)
    tok.backend_tokenizer.model = models.WordLevel(vocab, unk_token=tok.unk_token)
    return tok


def tofu_shaped(vocab_size, max_rows=0, seed=0):
    """{split: rows} in the schema of TOFU's *_perturbed splits, of random words. Prompts are 41-51 words
    (+ 'Question :' and 'Answer :': ~50 tokens, as Llama-3's chat template around a TOFU question); forget
    and retain answers 49-69 words + EOS (~60 tokens), with a paraphrase and 5 perturbed; real_authors and
    world_facts answers 2-6 words, with 3 perturbed."""
    rng = random.Random(seed)

    def words(lo, hi):
        return " ".join(f"w{rng.randrange(9, vocab_size)}" for _ in range(rng.randint(lo, hi)))
    data = {}
    for split, n in TOFU_SIZES.items():
        long = split in ("forget", "retain")
        lo, hi = (49, 69) if long else (2, 6)
        data[split] = [dict(question=words(41, 51), answer=words(lo, hi),
                            perturbed_answer=[words(lo, hi) for _ in range(5 if long else 3)])
                       for _ in range(min(n, max_rows or n))]
        for row in data[split] if long else []:
            row["paraphrased_answer"] = words(lo, hi)
    return data


def build_llama(shape, tok, device, seed=0):
    """Random-weight Llama from a config, in the dtype bs.load_model gives (bf16 on CUDA, else fp32)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(**shape, tie_word_embeddings=True, max_position_embeddings=131072, rms_norm_eps=1e-5,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    with torch.device(device):  # initialise on the device: 1.2B parameters are slow to fill on a CPU
        model = LlamaForCausalLM(config)
    return model.to(torch.bfloat16 if device.type == "cuda" else torch.float32)


def matmul_rate(device, dtype, n, repeats, warmup=1, iters=20):
    """The device's dense matmul rate in FLOP/s: median over repeats of 2 n^3 x iters / seconds."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)

    def run():
        for _ in range(iters):
            torch.matmul(a, b)
    secs, _ = timed(run, device, repeats, warmup + 1)
    return 2 * n ** 3 * iters / median(secs)


def time_train(model, tok, forget_ex, retain_ex, targs, steps, beliefs=None):
    """bs.train for exactly `steps` optimizer steps; returns its log's per-step ms and the peak memory."""
    device = next(model.parameters()).device
    micro_per_epoch = math.ceil(len(forget_ex) / targs.batch_size)
    targs.epochs = (steps - 0.5) * targs.grad_accum / micro_per_epoch  # train rounds the step count up
    with tempfile.TemporaryDirectory() as tmp:
        reset_peak(device)
        with bs.quiet():
            bs.train(model, tok, forget_ex, retain_ex, targs, log_path=os.path.join(tmp, "log.jsonl"),
                     progress=True, beliefs=beliefs)
        return step_ms(tmp), peak_mib(device)


def mean_len(examples):
    return sum(len(e["input_ids"]) for e in examples) / len(examples)


def bench_row(method, n_beliefs, shape, device, tok, forget_ex, retain_ex, args, peak_flops):
    """One gpu row on a fresh model: ms/step, tok/s, MFU, peak memory; BS-S also its belief generation.
    FLOPs, N = parameters with the tied embedding once: 6N per real token trained (forward 2N, backward
    4N; the forget and retain batches and BS-S's beliefs; NPO's reference log-probs come before training,
    BS-T's targets from the same forward), 2N per token prefilled or generated. Not counted: attention
    scores (under 1% at ~110 tokens), the fp32 softmax over the vocabulary, the optimizer. BS-S's beliefs
    are sampled on their own and handed to bs.train, so its step time and peak are training alone."""
    targs = bs.get_args(["--method", method, "--batch_size", str(args.batch_size), "--grad_accum",
                         str(args.grad_accum), "--lr", "1e-5", "--bss_n", str(n_beliefs or 3),
                         "--seed", str(args.seed), *shlex.split(args.train_flags)])
    model = build_llama(shape, tok, device, args.seed)
    if targs.lora_r:  # as bs_unlearn.main does: only the adapters train
        model = scaling.add_lora(model, targs.lora_r, targs.lora_alpha, targs.lora_targets)
    n_params = sum(p.numel() for p in model.parameters())
    seqs = args.batch_size * args.grad_accum  # forget examples per optimizer step
    tokens = seqs * (mean_len(forget_ex) + mean_len(retain_ex))  # a forget and a retain batch per micro-step
    row, beliefs = dict(n_params=n_params), None
    forget_ex = [dict(e) for e in forget_ex]  # (bs.train stores NPO's reference log-probs on them)
    if method == "bs_s":  # generation on its own, after a warm-up on one batch of prompts
        bs.sample_beliefs(model, tok, forget_ex[:targs.gen_batch_size], targs)
        reset_peak(device)
        secs, rounds = timed(lambda: bs.sample_beliefs(model, tok, forget_ex, targs), device, args.repeats,
                             warmup=0)
        beliefs = rounds[-1]
        flat = [b for bel in beliefs for b in bel]
        new_tokens = sum(len(b["input_ids"]) - b["prompt_len"] for b in flat)
        gen_flops = 2 * n_params * sum(len(b["input_ids"]) for b in flat)  # prefill and new tokens
        row.update(gen_s=median(secs), gen_tok_s=new_tokens / median(secs), gen_peak_mib=peak_mib(device),
                   gen_mfu=gen_flops / median(secs) / peak_flops, n_beliefs=len(flat),
                   belief_tokens=mean_len(flat))
        tokens += seqs * n_beliefs * mean_len(flat)  # each forget example's beliefs, forward and backward
    ms, peak = time_train(model, tok, forget_ex, retain_ex, targs, args.warmup + args.repeats, beliefs)
    step_s = median(ms[args.warmup:]) / 1000
    row.update(ms_step=1000 * step_s, tokens_step=tokens, tok_s=tokens / step_s, peak_mib=peak,
               mfu=6 * n_params * tokens / step_s / peak_flops, steps=len(ms) - args.warmup)
    # mean ms: one generation round every bss_regen epochs of this forget set (0: one per 10-epoch run)
    steps_per_round = (args.bss_regen or 10) * math.ceil(len(forget_ex) / args.batch_size) / args.grad_accum
    row["ms_mean"] = row["ms_step"] + (1000 * row["gen_s"] / steps_per_round if beliefs is not None else 0)
    return row


def bench_gpu(args, device):
    """The matmul rate; a row per method (BS-S: per N), each on a fresh model; eval.py at TOFU's size."""
    shape = GPU_CONFIGS[args.gpu_config]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = args.matmul_size or (8192 if device.type == "cuda" else 512)
    say(f"gpu: {n} x {n} {str(dtype)[6:]} matmul rate on {device}")
    peak_flops = matmul_rate(device, dtype, n, args.repeats, args.warmup)
    out = dict(config=args.gpu_config, device=str(device), dtype=str(dtype)[6:], matmul_size=n,
               matmul_tflops=peak_flops / 1e12)
    if device.type == "cuda":
        out["card"] = torch.cuda.get_device_name(device)
    tok = word_tokenizer(shape["vocab_size"])
    data = tofu_shaped(shape["vocab_size"], args.max_rows, args.seed)
    forget_ex, retain_ex = bs.encode_rows(tok, data["forget"]), bs.encode_rows(tok, data["retain"])
    out["data"] = dict(forget=len(forget_ex), retain=len(retain_ex), tokens=mean_len(forget_ex),
                       prompt_tokens=sum(e["prompt_len"] for e in forget_ex) / len(forget_ex))
    out["methods"] = rows = {}
    for method in args.methods:
        for n_beliefs in args.bss_ns if method == "bs_s" else [None]:
            name = method if n_beliefs is None else f"bs_s N={n_beliefs}"
            say(f"gpu: {name}")
            try:
                rows[name] = bench_row(method, n_beliefs, shape, device, tok, forget_ex, retain_ex, args,
                                       peak_flops)
            except torch.cuda.OutOfMemoryError:  # recorded as a result (the row says so), and on we go
                rows[name] = dict(oom=True)
            gc.collect()  # free this row's model and optimizer before the next row's peak is measured
            if device.type == "cuda":
                torch.cuda.empty_cache()
    add_x_ga(rows)
    out["n_params"] = next((r["n_params"] for r in rows.values() if "n_params" in r), None)
    say("gpu: eval.py on the TOFU-shaped splits")
    out["eval"] = bench_eval(build_llama(shape, tok, device, args.seed), tok, data, args)
    return out


# -----------------------------------------------------------------------------------------------------
# The table

HEAD = ["section", "what", "wall s", "ms/step", "mean ms", "x GA", "tok/s", "MFU", "peak MiB"]
FORMATS = [None, None, ".1f", ".1f", ".1f", ".2f", ",.0f", ".1%", ",.0f"]
NOTES = """\
ms/step: median over a run's steps; mean ms: their mean (cpu: BS-S's --bss_regen rounds included, its first
  sampling, before step 1, in wall s only; gpu: ms/step plus one round of generation every --bss_regen
  epochs); x GA: mean ms over GA's; MFU: model FLOPs per second over the matmul rate above; peak MiB: gpu,
  allocated during the row; cpu, the process's peak resident set
threads: each run is a child process held at that many torch threads, timed from its own start (python's
  start-up excluded); 'beside a second': two identical runs at once, their mean; others: the cores that
  other processes used meanwhile"""


def row(section, what, wall=None, ms=None, mean=None, x_ga=None, tok_s=None, mfu=None, peak=None):
    return [section, what, wall, ms, mean, x_ga, tok_s, mfu, peak]


def table_rows(res):
    """The table's rows: lists of HEAD's cells, None where a number does not apply."""
    rows, cpu, gpu = [], res.get("cpu"), res.get("gpu")
    if cpu:
        if "startup_s" in cpu:
            rows.append(row("cpu", "python start-up (torch, transformers)", cpu["startup_s"]))
        for what, t in cpu["threads"].items():
            others = "" if t["others_cores"] is None else f" (others: {t['others_cores']:.1f} cores)"
            rows.append(row("cpu", what + others, t["seconds"]))
        for name, r in cpu["methods"].items():
            rows.append(row("cpu", f"{name} ({r['steps']} steps)", r["wall_s"], r["ms_step"], r["ms_mean"],
                            r["x_ga"]))
        if "quick_start_s" in cpu:
            rows.append(row("cpu", "quick start: start-up + toy build + bs_s", cpu["quick_start_s"]))
        e = cpu["eval"]
        rows += [row("cpu", f"eval: beliefs ({e['n_beliefs']})", e["beliefs_s"]),
                 row("cpu", "eval: one model", e["model_s"]),
                 row("cpu", "peak resident memory", peak=cpu["peak_rss_mib"])]
    if gpu:
        tag = "gpu" if gpu["config"] == "1b" else f"gpu ({gpu['config']}, {gpu['device']})"
        rows.append(row(tag, f"{gpu['dtype']} matmul, {gpu['matmul_tflops']:.3g} TFLOP/s"))
        for name, r in gpu["methods"].items():
            if r.get("oom"):
                rows.append(row(tag, f"{name}: out of memory"))
                continue
            if "gen_s" in r:
                rows.append(row(tag, f"{name}: generate {r['n_beliefs']}", r["gen_s"], tok_s=r["gen_tok_s"],
                                mfu=r["gen_mfu"], peak=r["gen_peak_mib"]))
            rows.append(row(tag, f"{name}: step", None, r["ms_step"], r["ms_mean"], r["x_ga"], r["tok_s"],
                            r["mfu"], r["peak_mib"]))
        e = gpu["eval"]
        sizes = "/".join(str(v) for v in e["rows"].values())
        rows += [row(tag, f"eval: beliefs ({e['n_beliefs']})", e["beliefs_s"]),
                 row(tag, f"eval: one model ({sizes} rows)", e["model_s"], peak=e["peak_mib"])]
    return rows


def format_table(res):
    """Fixed-width text; '-' where a number does not apply."""
    cells = [HEAD] + [[c if f is None else "-" if c is None else f"{c:{f}}" for c, f in zip(r, FORMATS)]
                      for r in table_rows(res)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(HEAD))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    return "\n".join(lines[:1] + ["-" * len(lines[0])] + lines[1:])


# -----------------------------------------------------------------------------------------------------
# main


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main(argv=None):
    t0 = time.perf_counter()
    args = get_args(argv)
    import transformers
    device = bs.pick_device(args.device)
    meta = dict(argv=sys.argv[1:] if argv is None else list(argv), cpu=cpu_name(), cores=os.cpu_count(),
                python=platform.python_version(), torch=torch.__version__,
                transformers=transformers.__version__, load_avg_start=os.getloadavg()[0])
    res = dict(meta=meta)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # no library warnings between the progress lines
    try:
        if not args.skip_cpu:
            res["cpu"] = bench_cpu(args)
        if not args.skip_gpu and (args.gpu_config == "tiny" or device.type == "cuda"):
            res["gpu"] = bench_gpu(args, device)
        elif not args.skip_gpu:
            say(f"gpu: skipped, no CUDA here ({device}); `--device cpu --gpu_config tiny` runs its code here")
    finally:
        transformers.logging.set_verbosity(verbosity)
    meta.update(load_avg_end=os.getloadavg()[0], wall_s=time.perf_counter() - t0)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(format_table(res))
    print(NOTES)
    print(f"{meta['cpu']}, {meta['cores']} cores; 1-min load average {meta['load_avg_start']:.2f} at the "
          f"start, {meta['load_avg_end']:.2f} at the end; took {meta['wall_s']:.0f} s; wrote {args.out}")
    return res


if __name__ == "__main__":
    main()
