"""Tests for dev/bench.py, with tiny settings: the bench's gpu code path on a CPU with a tiny Llama, its cpu
section on the cached toy model (one repeat, one epoch) and its thread-held child processes. They check the
JSON's shape, the token and parameter accounting behind tok/s and MFU, and that every figure is a positive
finite number; never the speeds themselves. (dev/grid.py: tests/test_grid.py.)

    BS_UNLEARN_CACHE=/tmp/bscache python -m pytest tests/test_bench.py -q
"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from dev import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def one_thread():
    """No speed is checked here, and on a busy 2-core machine two OpenMP threads that wait for each other
    make the tiny model's ops ~10x slower; one thread keeps these tests fast whatever the load."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def leaves(d, path=""):
    """(path, value) of every leaf of nested dicts and lists."""
    items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else None
    if items is None:
        yield path, d
        return
    for k, v in items:
        yield from leaves(v, f"{path}.{k}")


def assert_positive_finite(section, skip=("device", "dtype", "config", "card", "others_cores")):
    for path, v in leaves(section):
        if path.rsplit(".", 1)[-1] in skip:
            continue
        assert isinstance(v, (int, float)) and not isinstance(v, bool), f"{path} = {v!r}"
        assert math.isfinite(v) and v > 0, f"{path} = {v!r}"


def tiny_param_count():
    """Llama parameters by hand: tied embedding once; per layer q, k, v, o, gate/up/down, two norms."""
    c = bench.GPU_CONFIGS["tiny"]
    d, head = c["hidden_size"], c["hidden_size"] // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * head
    layer = d * d + 2 * d * kv + d * d + 3 * d * c["intermediate_size"] + 2 * d
    return c["vocab_size"] * d + c["num_hidden_layers"] * layer + d


# -----------------------------------------------------------------------------------------------------
# dev/bench.py


def test_word_tokenizer_has_exactly_the_model_vocabulary():
    tok = bench.word_tokenizer(2048)
    assert len(tok) == 2048 and tok.convert_tokens_to_ids("w2047") == 2047
    assert tok("Question: w9 w10?")["input_ids"] == [tok.convert_tokens_to_ids(w) for w in
                                                      ["Question", ":", "w9", "w10", "?"]]
    assert len({tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id}) == 4


def test_gpu_path_with_lora(tmp_path):
    # --train_flags reaches every row: with --lora_r the rows time a model with adapters
    out = tmp_path / "bench.json"
    bench.main(["--skip_cpu", "--device", "cpu", "--gpu_config", "tiny", "--max_rows", "8", "--repeats", "1",
                "--methods", "ga", "--batch_size", "4", "--grad_accum", "1", "--train_flags", "--lora_r 4",
                "--out", str(out)])
    row = json.loads(out.read_text())["gpu"]["methods"]["ga"]
    assert row["n_params"] > tiny_param_count()  # the frozen model plus its adapters
    assert row["ms_step"] > 0 and math.isfinite(row["mfu"])


def test_8b_shape_is_llama_3_1_8b():
    shape = bench.GPU_CONFIGS["8b"]
    h, f, L, kv, v = (shape[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                         "num_key_value_heads", "vocab_size"))
    per_layer = 2 * h * h + 2 * h * (h // shape["num_attention_heads"] * kv) + 3 * h * f + 2 * h  # attn, MLP, norms
    total = L * per_layer + v * h + h  # tied embedding once, final norm
    assert 7.4e9 < total + v * h < 8.1e9  # the real (untied) Llama-3.1-8B has 8.03B parameters


def test_gpu_path_on_cpu_tiny(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["--skip_cpu", "--device", "cpu", "--gpu_config", "tiny", "--max_rows", "8", "--repeats", "1",
                "--bss_ns", "1,3", "--batch_size", "4", "--grad_accum", "2", "--out", str(out)])
    res = json.loads(out.read_text())
    assert set(res) == {"meta", "gpu"}
    gpu = res["gpu"]
    assert set(gpu["methods"]) == {"ga", "npo", "bs_t", "bs_s N=1", "bs_s N=3"}
    for name, row in gpu["methods"].items():
        assert {"ms_step", "ms_mean", "x_ga", "tok_s", "mfu", "peak_mib", "tokens_step"} <= set(row), name
        if name.startswith("bs_s"):
            gen = {"gen_s", "gen_tok_s", "gen_mfu", "gen_peak_mib", "n_beliefs", "belief_tokens"}
            assert gen <= set(row), name
            assert row["ms_mean"] > row["ms_step"]  # generation is spread over the steps
    assert {"beliefs_s", "model_s", "n_beliefs", "peak_mib"} <= set(gpu["eval"])
    assert gpu["eval"]["rows"] == dict(forget=8, retain=8, real_authors=8, world_facts=8)
    assert_positive_finite(gpu)
    # the accounting behind tok/s and MFU: TOFU-shaped rows, the tied head counted once, beliefs added
    assert 45 <= gpu["data"]["prompt_tokens"] <= 55 and 100 <= gpu["data"]["tokens"] <= 120
    assert gpu["n_params"] == tiny_param_count()
    m = gpu["methods"]
    assert m["ga"]["x_ga"] == 1 and m["ga"]["tokens_step"] == m["bs_t"]["tokens_step"]
    for n in (1, 3):
        bss = m[f"bs_s N={n}"]
        assert 0 < bss["n_beliefs"] <= 8 * n  # (a sample that is EOS at once is dropped)
        extra = bss["tokens_step"] - m["ga"]["tokens_step"]
        assert math.isclose(extra, 4 * 2 * n * bss["belief_tokens"])  # batch x accum x N beliefs
    # the table is printed with one row per figure
    table = capsys.readouterr().out
    assert "bs_s N=3: step" in table and "eval: one model" in table and "TFLOP/s" in table


def test_cpu_section(toy_cache, tmp_path, capsys):
    cache, _, _ = toy_cache
    out = tmp_path / "bench.json"
    bench.main(["--skip_build", "--cache_dir", cache, "--skip_gpu", "--cpu_epochs", "1", "--max_rows", "8",
                "--repeats", "1", "--out", str(out)])
    res = json.loads(out.read_text())
    assert set(res) == {"meta", "cpu"}
    cpu = res["cpu"]
    assert set(cpu["methods"]) == {"ga", "npo", "bs_t", "bs_s", "bs_s regen 2"}
    for name, row in cpu["methods"].items():
        assert set(row) == {"wall_s", "ms_step", "ms_mean", "x_ga", "steps"}, name
        assert row["steps"] == 4  # one epoch of the toy forget set: 64 examples / 16
    assert not {"startup_s", "quick_start_s"} & set(cpu)  # --skip_build
    # the BS-S run on 1 thread and on 2, alone and beside a second (no build rows with --skip_build)
    assert list(cpu["threads"]) == [f"bs_s run, {t}, {n}" for t in ("1 thread", "2 threads")
                                    for n in ("alone", "beside a second")]
    assert all(r["others_cores"] is None or r["others_cores"] >= 0 for r in cpu["threads"].values())
    assert {"beliefs_s", "model_s", "n_beliefs", "peak_mib", "rows"} <= set(cpu["eval"])
    assert_positive_finite(cpu)
    table = capsys.readouterr().out
    assert "peak resident memory" in table and "bs_s run, 2 threads, beside a second" in table


def test_build_child_is_held_at_its_thread_count(toy_cache):
    """The build job on a cache that already holds the model: the child only loads it, and bs.load_model
    asks for one thread; run_children fails unless the child still ran on two."""
    cache, _, _ = toy_cache
    secs, others = bench.run_children("toy build", 2, [[cache]])
    assert secs > 0 and (others is None or others >= 0)


def test_scripts_run_from_the_repository_root():
    for script in ("dev/bench.py", "dev/grid.py", "dev/real_model.py"):
        done = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0 and "usage:" in done.stdout, done.stderr
