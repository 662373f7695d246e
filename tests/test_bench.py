"""Tests for bench.py: the gpu code path run on a CPU with a tiny Llama, and the cpu section on the cached
toy models, each with one timed repeat. They check the JSON's shape, the token and parameter accounting
behind tok/s and MFU, and that every figure is a positive finite number; never the speeds themselves.

    BS_UNLEARN_CACHE=/tmp/bscache python -m pytest tests/test_bench.py -q
"""
import json
import math

import pytest
import torch

import bench


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


def assert_positive_finite(section, skip=("device", "dtype", "config", "card")):
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


def test_gpu_path_on_cpu_tiny(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["--skip_cpu", "--device", "cpu", "--gpu_config", "tiny", "--max_rows", "8", "--repeats", "1",
                "--eval_repeats", "1", "--bss_ns", "1,3", "--batch_size", "4", "--grad_accum", "2",
                "--out", str(out)])
    res = json.loads(out.read_text())
    assert set(res) == {"meta", "gpu", "targets"}
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
    bench.main(["--skip_build", "--cache_dir", cache, "--gpu_config", "none", "--cpu_epochs", "1",
                "--max_rows", "8", "--repeats", "1", "--eval_repeats", "1", "--out", str(out)])
    res = json.loads(out.read_text())
    assert set(res) == {"meta", "cpu", "targets"}
    cpu = res["cpu"]
    assert set(cpu["methods"]) == {"ga", "npo", "bs_t", "bs_s", "bs_s regen 2"}
    for name, row in cpu["methods"].items():
        assert set(row) == {"wall_s", "ms_step", "ms_mean", "x_ga", "steps"}, name
        assert row["steps"] == 4  # one epoch of the toy forget set: 64 examples / 16
    assert not {"startup_s", "build_s", "quick_start_s"} & set(cpu)  # --skip_build
    assert {"beliefs_s", "model_s", "n_beliefs", "peak_mib", "rows"} <= set(cpu["eval"])
    assert_positive_finite(cpu)
    assert "peak resident memory" in capsys.readouterr().out
