"""
bench.py: measured speed and memory of GA, NPO, BS-T and BS-S, side by side, in one run.

Two sections, one printed table, the same numbers as JSON:
  cpu  the embedded example (`python bs_unlearn.py --method ...`): cold build of the toy models, each
       method's unlearning run, eval.py on one model, peak resident memory
  gpu  a Llama-3.2-1B-shaped model built from its config (random weights: nothing is downloaded; bf16) on
       TOFU-shaped data (forget10: 400 rows of ~50 prompt + ~60 answer tokens; effective batch 8 x 4 = 32):
       each method's optimizer step, BS-S's belief generation for N = 1, 3, 5, 10, eval.py at TOFU's size.
       Runs when CUDA is present; `--device cpu --gpu_config tiny` runs the same code on a scaled-down Llama

Run:
    python bench.py                              # both sections (gpu only with CUDA); 2.5 min on 2 cores
    python bench.py --skip_build --repeats 1     # quick: no cold start, one timed repeat
    python bench.py --skip_cpu --eval_repeats 1  # on a GPU box: the 1B figures only
    python bench.py --skip_cpu --device cpu --gpu_config tiny --max_rows 16   # the gpu path, on a CPU
Writes --out (default bench_results.json, gitignored) and nothing else: the cold build and every run go to
temporary directories, so the user's toy-model cache and runs/ are untouched.

Columns of the table:
  wall s    wall-clock seconds of the row's whole job (a build, an unlearning run, generation, an eval)
  ms/step   median milliseconds per optimizer step, device-synchronised (bs.train's per-step log)
  mean ms   ms per step with the one-off costs spread over the steps. cpu: the mean over the run's steps,
            BS-S's belief sampling included where it happens. gpu: ms/step plus one round of BS-S belief
            generation on forget10 every --bss_regen epochs (2: the target's setting)
  x GA      mean ms / GA's mean ms (targets: BS-T <= 1.3x; BS-S at N = 3, regenerating every 2 epochs, <= 2x)
  tok/s     tokens through forward + backward per second (real tokens; padding is not counted);
            on a generation row, new tokens sampled per second
  MFU       model FLOPs per second / the measured matmul rate of the same device (see below)
  peak MiB  gpu: torch.cuda.max_memory_allocated during the row (weights, grads, AdamW state, activations).
            cpu: one row, the process's peak resident set (ru_maxrss only grows, so it is not per method)
Every timed figure is the median of --repeats timed repeats after --warmup untimed ones (of a step, a run,
a generation round); eval.py's of --eval_repeats, after a warm-up on 8 rows per split. Take cpu figures
on an idle machine (the last line prints the load average): when other processes hold the cores, torch's
OpenMP threads wait for each other and the toy model's steps get up to 10x slower.

FLOP accounting (MFU), N = the model's parameter count with the tied embedding counted once (the input
embedding is a lookup and the output head a matmul, so N is about the matmul weights):
  1. A trained token costs 6N (forward 2N, backward 4N): every real token of every sequence that goes
     through forward and backward in a step, i.e. the forget batch, the retain batch and BS-S's beliefs.
  2. GA and BS-T: nothing else (BS-T's top-k target comes from the same forward). NPO: nothing else (its
     reference log-probs are computed once before training, deviation 5 of bs_unlearn.py).
  3. BS-S's generation: 2N per prompt token (prefilled once per sampled sequence) and per new token. It has
     its own row; its time goes into BS-S's mean ms, not into the step's MFU.
  4. Not counted: attention scores (4 * layers * T * hidden per token: under 1% at T ~ 110), the fp32
     softmax / top-k over the 128k vocabulary, the optimizer. So MFU is useful model FLOPs over a peak
     that is the device's own dense matmul rate in the model's dtype, measured in this run (square
     --matmul_size matmuls). That rate is below the datasheet's (H100 SXM: 989 bf16 TFLOP/s), so these
     MFUs read higher than datasheet-based ones.

Choices:
1. The gpu rows are random words from a word-level tokenizer built here (`tokenizers` library) whose
   vocabulary is exactly the model's 128256 ids: one word is one token, so every row has exactly the token
   lengths we ask for and the ids cover the whole vocabulary. Cost depends on token counts and vocabulary
   size, not on which tokens. Prompts are ~50 tokens (Llama-3's chat template around a TOFU question),
   answers ~60; real_authors / world_facts answers ~4 tokens with 3 perturbed ones, as in TOFU.
2. A random-weight model never says EOS, so its greedy answers would all run to eval.py's 200-token cap;
   we cap them at the longest reference answer, where a fine-tuned model stops.
3. bs.train samples BS-S's beliefs itself, inside its first step. On the gpu we time bs.sample_beliefs on
   its own and hand its beliefs to bs.train (its `beliefs` argument), so step times and peak memory are
   those of training alone; on the cpu the runs are the real thing, sampling included.
"""
import argparse
import contextlib
import gc
import json
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import bs_unlearn as bs
import toy_world

HERE = os.path.dirname(os.path.abspath(__file__))

# -----------------------------------------------------------------------------------------------------
# Config

# Llama-3.2-1B's shape (from its config.json) and a scaled-down copy with the same structure (GQA, tied head)
GPU_CONFIGS = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256),
    "tiny": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=2048),
}
TOFU_SIZES = dict(forget=400, retain=400, real_authors=100, world_facts=117)  # eval.py's *_perturbed splits
METHODS = ["ga", "npo", "bs_t", "bs_s"]


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawTextHelpFormatter)
    # what to run
    p.add_argument("--out", default="bench_results.json", help="where the JSON goes")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of ga,npo,bs_t,bs_s")
    p.add_argument("--skip_cpu", action="store_true", help="skip the embedded-example (cpu) section")
    p.add_argument("--skip_build", action="store_true",
                   help="cpu: skip the cold start (python start-up and the build of the toy models)")
    p.add_argument("--gpu_config", default="1b", choices=["1b", "tiny", "none"],
                   help="the gpu section's model: 1b needs CUDA, tiny runs anywhere (tests), none skips it")
    p.add_argument("--device", default="auto", help="the gpu section's device: auto | cuda | cpu")
    # repeats and sizes
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per figure (we report the median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed repeats before them")
    p.add_argument("--eval_repeats", type=int, default=2, help="timed repeats of eval.py")
    p.add_argument("--max_rows", type=int, default=0,
                   help="cap every eval split and the gpu's forget / retain sets at N rows (0: all; tests)")
    # cpu section
    p.add_argument("--cpu_epochs", type=float, default=10, help="epochs per cpu run (10: the quick start's)")
    p.add_argument("--cache_dir", default=bs.get_args([]).cache_dir,
                   help="toy-model cache of the cpu runs with --skip_build (built there once if missing)")
    # gpu section (TOFU settings of the paper)
    p.add_argument("--batch_size", type=int, default=8, help="gpu: forget examples per micro-step")
    p.add_argument("--grad_accum", type=int, default=4, help="gpu: micro-steps per optimizer step")
    p.add_argument("--bss_ns", default="1,3,5,10", help="gpu: BS-S beliefs per prompt, one row each")
    p.add_argument("--bss_regen", type=float, default=2,
                   help="gpu: BS-S's mean ms has a generation round every R epochs (0: one per 10 epochs)")
    p.add_argument("--matmul_size", type=int, default=0,
                   help="gpu: n of the n x n matmuls that measure the peak (0: 8192 on CUDA, else 512)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    if set(args.methods) - set(METHODS):
        bs.fail(f"--methods takes ga, npo, bs_t, bs_s; got {','.join(args.methods)}")
    args.bss_ns = [int(n) for n in args.bss_ns.split(",") if n]
    if args.repeats < 1 or args.eval_repeats < 1 or args.warmup < 0:
        bs.fail("--repeats and --eval_repeats must be >= 1, --warmup >= 0")
    return args


# -----------------------------------------------------------------------------------------------------
# Timing and memory


def sync(device):
    """Wait for the device: CUDA calls return before the work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats, warmup=1):
    """Run fn() warmup + repeats times; return the timed runs' seconds and fn's last result."""
    secs, out = [], None
    for i in range(warmup + repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        if i >= warmup:
            secs.append(time.perf_counter() - t0)
    return secs, out


def median(xs):
    return statistics.median(xs)


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device):
    """CUDA: peak allocated since reset_peak. CPU: the process's peak resident set (it only grows)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2 ** 20 if sys.platform == "darwin" else rss / 2 ** 10  # bytes on macOS, KiB on Linux


@contextlib.contextmanager
def quiet():
    """Swallow the step lines and progress bars of bs_unlearn and eval: the bench prints one table."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        yield


def say(msg):
    """Progress, on stderr, so that stdout is just the table."""
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def read_log(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# -----------------------------------------------------------------------------------------------------
# cpu: the embedded example, as a user runs it

CPU_RUNS = [  # (row, method, extra flags): BS-S twice, off-policy (its default) and the target's setting
    ("ga", "ga", []), ("npo", "npo", []), ("bs_t", "bs_t", []), ("bs_s", "bs_s", []),
    ("bs_s regen 2", "bs_s", ["--bss_regen", "2"])]


def bench_cpu(args):
    """Start-up, cold build, each method's bs_unlearn.main run (wall time; median and mean ms/step from its
    log), eval.py on the full toy model, peak RSS. Every run unlearns the same cached toy model afresh."""
    out = dict(threads=torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir
        if not args.skip_build:  # a first run: start-up, then the build, into a temporary cache
            say("cpu: start-up and cold build of the toy models")
            t0 = time.perf_counter()  # what `python bs_unlearn.py` pays before any work
            imports = "import bs_unlearn; from transformers import LlamaForCausalLM"
            subprocess.run([sys.executable, "-c", imports], cwd=HERE, check=True)
            out["startup_s"] = time.perf_counter() - t0
            cache = os.path.join(tmp, "cache")  # (the user's cache is left as it is)
            t0 = time.perf_counter()
            with quiet():
                toy_world.ensure_toy_models(cache, with_retain=False)  # what the quick start builds
                out["build_full_s"] = time.perf_counter() - t0
                toy_world.ensure_toy_models(cache)  # + the retain-only model, which eval.py builds on first use
            out["build_s"] = time.perf_counter() - t0
        with quiet():
            full, _ = toy_world.ensure_toy_models(cache)  # (--skip_build and no models yet: built there once)
            # warm-up: the first run in a process pays one-off costs (lazy imports, first allocations)
            bs.main(["--method", "ga", "--epochs", "1", "--cache_dir", cache, "--device", "cpu",
                     "--out_dir", os.path.join(tmp, "warmup")])
        runs = {}
        for name, method, extra in [r for r in CPU_RUNS if r[1] in args.methods]:
            walls, medians, means = [], [], []
            run_dir = os.path.join(tmp, name.replace(" ", "_"))
            for r in range(args.repeats):
                say(f"cpu: {name}, run {r + 1}/{args.repeats}")
                t0 = time.perf_counter()
                with quiet():
                    bs.main(["--method", method, "--cache_dir", cache, "--device", "cpu", "--out_dir",
                             run_dir, "--overwrite", "--epochs", str(args.cpu_epochs)] + extra)
                walls.append(time.perf_counter() - t0)
                ms = [rec["ms"] for rec in read_log(os.path.join(run_dir, "log.jsonl"))]
                medians.append(median(ms))
                means.append(sum(ms) / len(ms))  # with the belief sampling, in the steps where it happens
            runs[name] = dict(wall_s=median(walls), ms_step=median(medians), ms_mean=median(means),
                              steps=len(ms))
        for r in runs.values():
            r["x_ga"] = r["ms_mean"] / runs["ga"]["ms_mean"] if "ga" in runs else None
        out["methods"] = runs
        if "bs_s" in runs and "build_s" in out:  # the README's quick start: a first run, with no cache
            out["quick_start_s"] = out["startup_s"] + out["build_full_s"] + runs["bs_s"]["wall_s"]
        say("cpu: eval.py on one model")
        with quiet():
            model, tok = bs.load_model(full, torch.device("cpu"))
        out["eval"] = bench_eval(model, tok, None, args, "cpu")
    out["peak_rss_mib"] = peak_mib(torch.device("cpu"))
    return out


def bench_eval(model, tok, data, args, section):
    """eval.py's time for one model, through its public functions: drawing the beliefs from the starting
    model (once per eval run) and evaluate() (every metric on every split). data None: the toy splits."""
    try:
        import eval as ev
    except ImportError as e:
        say(f"{section}: eval.py is not importable ({e}); no eval figures")
        return dict(error=str(e))
    device = next(model.parameters()).device
    eargs = ev.get_args([])
    if data is None:
        data = ev.load_eval_data("toy", "forget10", max_rows=args.max_rows)
    else:  # choice 2: a random model never says EOS; one word is one token, + 1 for the EOS
        eargs.max_new_tokens = max(len(r["answer"].split()) for rows in data.values() for r in rows) + 1
    draw = lambda rows: ev.draw_beliefs(model, tok, rows, eargs.n_beliefs, eargs.belief_temp, eargs.seed,
                                        eargs.batch_size)
    small = {k: v[:8] for k, v in data.items()}
    with quiet():
        ev.evaluate(model, tok, small, draw(small["forget"]), eargs, "warmup")
        reset_peak(device)
        secs_b, beliefs = timed(lambda: draw(data["forget"]), device, args.eval_repeats, warmup=0)
        secs_e, _ = timed(lambda: ev.evaluate(model, tok, data, beliefs, eargs), device, args.eval_repeats,
                          warmup=0)
    return dict(beliefs_s=median(secs_b), model_s=median(secs_e), n_beliefs=len(beliefs["samples"]),
                peak_mib=peak_mib(device), rows={k: len(v) for k, v in data.items()})


# -----------------------------------------------------------------------------------------------------
# gpu: a Llama-3.2-1B-shaped model on TOFU-shaped data


def build_llama(shape, device, seed=0):
    """Random-weight Llama from a config, in the dtype bs.load_model gives (bf16 on CUDA, else fp32)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(**shape, tie_word_embeddings=True, max_position_embeddings=131072,
                         rms_norm_eps=1e-5, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    torch.manual_seed(seed)
    with torch.device(device):  # initialise on the device: 1.2B parameters are slow to fill on a CPU
        model = LlamaForCausalLM(config)
    return model.to(torch.bfloat16 if device.type == "cuda" else torch.float32)


def word_tokenizer(vocab_size):
    """Choice 1: a word-level tokenizer with exactly vocab_size ids: the specials, the prompt format's
    words, then 'w9' ... 'w<vocab_size - 1>'. No chat template, so bs.encode writes Question/Answer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    fixed = ["<pad>", "<unk>", "<s>", "</s>", "Question", "Answer", ":", "?", "."]
    vocab = {w: i for i, w in enumerate(fixed)} | {f"w{i}": i for i in range(len(fixed), vocab_size)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                  pre_tokenizers.Punctuation()])
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>")


def tofu_shaped(vocab_size, max_rows=0, seed=0):
    """{split: rows} in the schema of TOFU's *_perturbed splits, of random words. A prompt is 'Question :'
    + 41-51 words + 'Answer :' (~50 tokens); forget / retain answers (target, paraphrase, 5 perturbed) are
    49-69 words + EOS (~60 tokens); real_authors / world_facts answers 2-6 words, with 3 perturbed."""
    rng = random.Random(seed)
    words = lambda lo, hi: " ".join(f"w{rng.randrange(9, vocab_size)}" for _ in range(rng.randint(lo, hi)))
    data = {}
    for split, n in TOFU_SIZES.items():
        long = split in ("forget", "retain")
        answer = (lambda: words(49, 69)) if long else (lambda: words(2, 6))
        data[split] = [dict(question=words(41, 51), answer=answer(),
                            perturbed_answer=[answer() for _ in range(5 if long else 3)])
                       for _ in range(min(n, max_rows) if max_rows else n)]
        for r in data[split] if long else []:
            r["paraphrased_answer"] = answer()
    return data


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
        log = os.path.join(tmp, "log.jsonl")
        with quiet():
            bs.train(model, tok, forget_ex, retain_ex, targs, log_path=log, progress=True, beliefs=beliefs)
        return [rec["ms"] for rec in read_log(log)], peak_mib(device)


def mean_len(examples):
    return sum(len(e["input_ids"]) for e in examples) / len(examples)


def bench_row(method, n_beliefs, shape, device, tok, forget_ex, retain_ex, args, peak_flops):
    """One gpu row on a fresh model: ms/step, tok/s, MFU, peak memory; BS-S also its belief generation."""
    targs = bs.get_args(["--method", method, "--batch_size", str(args.batch_size), "--grad_accum",
                         str(args.grad_accum), "--lr", "1e-5", "--bss_n", str(n_beliefs or 3),
                         "--seed", str(args.seed)])
    model = build_llama(shape, device, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    seqs = args.batch_size * args.grad_accum  # forget examples per optimizer step
    tokens = seqs * (mean_len(forget_ex) + mean_len(retain_ex))  # a forget and a retain batch per micro-step
    row, beliefs = dict(n_params=n_params), None
    if method == "npo":  # as bs_unlearn.main does: the reference log-probs, once, before training
        forget_ex = [dict(e) for e in forget_ex]
        bs.attach_ref_logps(model, tok, forget_ex, targs.gen_batch_size)
    if method == "bs_s":  # generation on its own (choice 3), after a warm-up on one batch of prompts
        bs.sample_beliefs(model, tok, forget_ex[:targs.gen_batch_size], targs)
        reset_peak(device)
        secs, beliefs = timed(lambda: bs.sample_beliefs(model, tok, forget_ex, targs), device, args.repeats,
                              warmup=0)
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
    # one generation round every bss_regen epochs of this forget set (0: one per 10-epoch run)
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
               matmul_tflops=peak_flops / 1e12, batch_size=args.batch_size, grad_accum=args.grad_accum,
               bss_regen=args.bss_regen)
    if device.type == "cuda":
        out["card"] = torch.cuda.get_device_name(device)
    tok = word_tokenizer(shape["vocab_size"])
    data = tofu_shaped(shape["vocab_size"], args.max_rows, args.seed)
    forget_ex, retain_ex = [[dict(bs.encode(tok, r["question"], r["answer"]), question=r["question"])
                             for r in data[split]] for split in ("forget", "retain")]
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
            except torch.cuda.OutOfMemoryError:  # "BS-S at N = 10 fits" is a target: record it, go on
                rows[name] = dict(oom=True)
            gc.collect()  # free this row's model and optimizer before the next row's peak is measured
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for row in rows.values():
        if "ms_mean" in row:
            row["x_ga"] = row["ms_mean"] / rows["ga"]["ms_mean"] if "ms_mean" in rows.get("ga", {}) else None
    out["n_params"] = next((r["n_params"] for r in rows.values() if "n_params" in r), None)
    say("gpu: eval.py on the TOFU-shaped splits")
    out["eval"] = bench_eval(build_llama(shape, device, args.seed), tok, data, args, "gpu")
    return out


# -----------------------------------------------------------------------------------------------------
# The table and the targets

HEAD = ["section", "what", "wall s", "ms/step", "mean ms", "x GA", "tok/s", "MFU", "peak MiB"]
FORMATS = [None, None, ".1f", ".1f", ".1f", ".2f", ",.0f", ".1%", ",.0f"]


def table_rows(res):
    """The table's rows: lists of HEAD's cells, None where a number does not apply."""
    rows = []
    cpu, gpu = res.get("cpu"), res.get("gpu")
    only_wall = lambda section, what, s: [section, what, s] + [None] * 6
    if cpu:
        if "build_s" in cpu:
            rows.append(only_wall("cpu", "start-up (python, torch, transformers)", cpu["startup_s"]))
            rows.append(only_wall("cpu", "cold build of the 2 toy models", cpu["build_s"]))
        for name, r in cpu["methods"].items():
            rows.append(["cpu", f"{name} ({r['steps']} steps)", r["wall_s"], r["ms_step"], r["ms_mean"],
                         r["x_ga"], None, None, None])
        if "quick_start_s" in cpu:
            rows.append(only_wall("cpu", "quick start: start-up + build full + bs_s", cpu["quick_start_s"]))
        if "error" not in cpu["eval"]:
            e = cpu["eval"]
            rows.append(only_wall("cpu", f"eval: beliefs ({e['n_beliefs']})", e["beliefs_s"]))
            rows.append(only_wall("cpu", "eval: one model", e["model_s"]))
        rows.append(only_wall("cpu", f"peak resident memory ({cpu['threads']} threads)", None)[:-1]
                    + [cpu["peak_rss_mib"]])
    if gpu:
        tag = "gpu" if gpu["config"] == "1b" else f"gpu ({gpu['config']}, {gpu['device']})"
        rows.append([tag, f"{gpu['dtype']} matmul, {gpu['matmul_tflops']:.3g} TFLOP/s"] + [None] * 7)
        for name, r in gpu["methods"].items():
            if r.get("oom"):
                rows.append([tag, f"{name}: out of memory"] + [None] * 7)
                continue
            if "gen_s" in r:
                rows.append([tag, f"{name}: generate {r['n_beliefs']}", r["gen_s"], None, None, None,
                             r["gen_tok_s"], r["gen_mfu"], r["gen_peak_mib"]])
            rows.append([tag, f"{name}: step", None, r["ms_step"], r["ms_mean"], r["x_ga"], r["tok_s"],
                         r["mfu"], r["peak_mib"]])
        e = gpu["eval"]
        if "error" not in e:
            rows.append(only_wall(tag, f"eval: beliefs ({e['n_beliefs']})", e["beliefs_s"]))
            sizes = "/".join(str(v) for v in e["rows"].values())
            rows.append(only_wall(tag, f"eval: one model ({sizes} rows)", e["model_s"])[:-1]
                        + [e["peak_mib"]])
    return rows


def format_table(res):
    """Fixed-width text; '-' where a number does not apply."""
    cells = [HEAD] + [[c if f is None else "-" if c is None else f"{c:{f}}" for c, f in zip(row, FORMATS)]
                      for row in table_rows(res)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(HEAD))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    return "\n".join(lines[:1] + ["-" * len(lines[0])] + lines[1:])


def targets(res):
    """The issue's targets next to what was measured (reported, never asserted)."""
    lines, c, g = [], res.get("cpu", {}), res.get("gpu", {})
    tag = "gpu" if g.get("config", "1b") == "1b" else f"gpu ({g['config']}, {g['device']})"
    if "quick_start_s" in c:
        lines.append(f"cpu: quick start {c['quick_start_s']:.0f} s (target: about 60 s on 2 CPU cores)")
    for where, rows, bss, regen in (("cpu", c.get("methods", {}), "bs_s regen 2", 2),
                                    (tag, g.get("methods", {}), "bs_s N=3", g.get("bss_regen"))):
        if rows.get("bs_t", {}).get("x_ga"):
            lines.append(f"{where}: BS-T {rows['bs_t']['x_ga']:.2f}x GA (target <= 1.3x)")
        if rows.get(bss, {}).get("x_ga"):
            lines.append(f"{where}: BS-S N=3 regenerating every {regen:g} epochs "
                         f"{rows[bss]['x_ga']:.2f}x GA (target <= 2x, regenerating every 2 epochs)")
    rows = g.get("methods", {})
    mfu = [f"{m} {rows[m]['mfu']:.0%}" for m in ("ga", "npo", "bs_t") if "mfu" in rows.get(m, {})]
    if mfu:
        lines.append(f"{tag}: MFU {', '.join(mfu)} (target >= 35% on an H100 at 1B)")
    if "bs_s N=10" in rows:
        lines.append(f"{tag}: BS-S N=10 {'ran out of memory' if rows['bs_s N=10'].get('oom') else 'fits'} "
                     "(the paper's implementation ran out of memory on an 80 GB GPU)")
    return lines


# -----------------------------------------------------------------------------------------------------
# main


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


@contextlib.contextmanager
def hf_quiet():
    """No transformers warnings or "Loading weights" bars between the progress lines; restored after."""
    from transformers.utils import logging as hf_logging
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def main(argv=None):
    t0 = time.perf_counter()
    args = get_args(argv)
    import transformers
    device = bs.pick_device(args.device)
    meta = dict(argv=sys.argv[1:] if argv is None else list(argv), cpu=cpu_model(), cores=os.cpu_count(),
                python=platform.python_version(), torch=torch.__version__,
                transformers=transformers.__version__, load_avg_start=os.getloadavg()[0])
    res = dict(meta=meta)
    with hf_quiet():
        if not args.skip_cpu:
            res["cpu"] = bench_cpu(args)
        if args.gpu_config == "tiny" or args.gpu_config == "1b" and device.type == "cuda":
            res["gpu"] = bench_gpu(args, device)
        elif args.gpu_config == "1b":
            say(f"gpu: skipped, no CUDA here ({device}); `--gpu_config tiny` runs its code path here")
    res["targets"] = targets(res)
    meta.update(load_avg_end=os.getloadavg()[0], wall_s=time.perf_counter() - t0)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(format_table(res))
    print("\n".join(res["targets"]))
    print(f"{meta['cpu']}, {meta['cores']} cores; 1-min load average {meta['load_avg_start']:.2f} at the "
          f"start, {meta['load_avg_end']:.2f} at the end; took {meta['wall_s']:.0f} s; wrote {args.out}")
    return res


if __name__ == "__main__":
    main()
