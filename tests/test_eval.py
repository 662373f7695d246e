"""Tests for eval.py, offline and fast (~30 s on 2 CPU cores once the toy models are cached).

Each metric is checked against a hand computation or the reference library (rouge_score, scipy) on tiny
inputs; the pipeline runs end to end on a tiny random model over a few real TOFU rows (skipped without the
files) and on the embedded example's cached models, where the numbers must say what they mean.

    BS_UNLEARN_CACHE=/tmp/bscache python -m pytest tests/test_eval.py -q
"""
import copy
import errno
import json
import math
import os
import shutil
import types

import numpy as np
import pytest
import torch
from rouge_score import rouge_scorer
from scipy.stats import ks_2samp

import bs_unlearn as bs
import plumbing
from conftest import one_line_error
import toy_world
import eval as ev

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread, as bs.load_model runs the toy model: tiny matmuls, numbers independent of the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def quick_args(*extra):
    return ev.get_args(["--max_new_tokens", "48", "--n_beliefs", "6", *extra])


# -----------------------------------------------------------------------------------------------------
# Metrics on tiny inputs, against hand computations


def test_norm_prob():
    assert ev.norm_prob([-2.0], [4])[0] == pytest.approx(math.exp(-0.5))
    assert ev.norm_prob([0.0], [0])[0] == 1.0  # an empty answer does not divide by zero


def test_truth_ratio_geometric_and_arithmetic():
    # p_true 0.5; perturbed 0.1 and 0.4: geometric mean 0.2 -> R = 0.4; arithmetic mean 0.25 -> R = 0.5
    assert ev.truth_ratio([0.5], [[0.1, 0.4]], "geo")[0] == pytest.approx(0.4)
    assert ev.truth_ratio([0.5], [[0.1, 0.4]], "arith")[0] == pytest.approx(0.5)
    # tiny probabilities do not underflow: the ratio is formed in logs
    tiny = math.exp(-700)
    assert ev.truth_ratio([tiny], [[tiny / 2, tiny / 8]], "geo")[0] == pytest.approx(0.25)


def test_truth_ratio_aggregates():
    R = [0.5, 2.0]
    assert ev.tr_forget(R) == pytest.approx(0.5)  # min(0.5, 2) and min(2, 0.5)
    assert ev.tr_keep(R) == pytest.approx((0.5 + 0.0) / 2)  # max(0, 1 - R)
    assert ev.tr_mem(R) == pytest.approx((1 / 1.5 + 1 / 3) / 2)  # p_true / (p_true + p_pert)
    assert ev.tr_mem([1.0]) == 0.5 and ev.tr_forget([1.0]) == 1.0


def test_option_prob_real_authors_normalisation():
    # p_true 0.5 against perturbed 0.25, 0.15, 0.1 -> 0.5 / 1.0
    assert ev.option_prob([0.5], [[0.25, 0.15, 0.1]])[0] == pytest.approx(0.5)
    # from log-probs and lengths, as evaluate_split forms it: p = exp(logp / n)
    p = ev.norm_prob([-3.0, -8.0, -2.0, -6.0], [3, 4, 1, 2])  # e^-1, e^-2, e^-2, e^-3
    want = math.exp(-1) / (math.exp(-1) + 2 * math.exp(-2) + math.exp(-3))
    assert ev.option_prob(p[:1], p[None, 1:])[0] == pytest.approx(want)


def test_hmean():
    assert ev.hmean([0.5, 0.25]) == pytest.approx(1 / 3)  # 2 / (2 + 4)
    assert ev.hmean([0.9, 0.0, 0.8]) == 0.0  # one zero zeroes the mean
    assert ev.hmean([0.7]) == pytest.approx(0.7)
    assert ev.hmean([]) is None


def test_rouge_recall_matches_rouge_score_and_hand_lcs():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    pairs = [("the cat sat on the mat", "the cat lay on a mat"),
             ("Oona Falk was born in Leipzig.", "Leipzig is where Oona Falk was born, in 1927."),
             ("cats running fast", "the cat runs"), ("a b c", "")]
    for target, pred in pairs:
        assert ev.rouge_recall(target, pred) == scorer.score(target, pred)["rougeL"].recall
    # hand LCS: the, cat, on, mat = 4 of 6 target words
    assert ev.rouge_recall("the cat sat on the mat", "the cat lay on a mat") == pytest.approx(4 / 6)
    # stemming: cats -> cat, running / runs -> run; LCS cat, run = 2 of 3
    assert ev.rouge_recall("cats running fast", "the cat runs") == pytest.approx(2 / 3)
    assert ev.rouge_recall("a b c", "") == 0.0


def test_forget_quality_is_scipy_ks_pvalue():
    rng = np.random.default_rng(0)
    a, b = rng.lognormal(0, 1, 50), rng.lognormal(0.5, 1, 60)
    assert ev.forget_quality(a, b) == ks_2samp(a, b).pvalue
    assert ev.forget_quality(a, a) == 1.0
    assert ev.forget_quality(np.arange(20) + 100.0, np.arange(20)) < 1e-9  # disjoint samples


def test_extraction_strength_and_exact_match():
    # answer of 10 tokens all correct; answer of 12 with a correct suffix of 3 and 7 correct overall
    assert ev.extraction_strength([10, 3], [10, 12]).tolist() == pytest.approx([1.0, 0.25])
    assert ev.exact_match([10, 7], [10, 12]).tolist() == pytest.approx([1.0, 7 / 12])


def test_fact_leak():
    assert ev.fact_leak(["Born in LISBON.", "No idea.", "The Hollow Lantern, of course"],
                        ["Lisbon", "Oslo", "the hollow lantern"]) == pytest.approx(2 / 3)


def test_belief_bands():
    # ranks 0 | 1 2 | 3 4 of five: top 20% high, next 40% mid, the rest low
    assert ev.belief_bands([-1, -5, -2, -4, -3]) == ["high", "low", "mid", "low", "mid"]
    assert ev.belief_bands([-3.0]) == ["high"]
    assert ev.belief_bands([-2, -1, -3]) == ["mid", "high", "low"]


def test_belief_deltas():
    d = ev.belief_deltas(["high", "mid", "mid", "low"], [-1, -2, -3, -4], [-1.5, -1, -5, -4])
    assert d["high"] == pytest.approx(-0.5) and d["mid"] == pytest.approx((1 - 2) / 2) and d["low"] == 0
    assert (d["n_high"], d["n_mid"], d["n_low"]) == (1, 2, 1)
    assert ev.belief_deltas(["high"], [0], [1])["low"] is None


def fake_result(fluency=None):
    forget = dict(prob=0.3, rouge=0.4, tr=0.7, es=0.2, em=0.5, para_prob=0.25, tr_mem=0.6, fact_hit=0.1,
                  beliefs=dict(target=-5.0, high=-1.0, mid=-2.0, low=-3.0), rows=dict(R=[0.5, 1.0, 2.0]))
    retain = dict(prob=0.8, rouge=0.9, tr=0.5)
    return dict(splits=dict(forget=forget, retain=retain), fluency=fluency)


def test_summarise_by_hand():
    s = ev.summarise(fake_result(), retain_R=[0.5, 1.0, 2.0])
    mu = 3 / (1 / 0.8 + 1 / 0.9 + 1 / 0.5)
    mem = 4 / (1 / 0.8 + 1 / 0.5 + 1 / 0.75 + 1 / 0.4)  # HM(1-ES, 1-EM, 1-ParaProb, 1-TR_mem)
    assert s["mu"] == pytest.approx(mu) and s["mu_n"] == 3
    assert s["mem"] == pytest.approx(mem)
    assert s["util"] == pytest.approx(mu)  # no fluency: Util = MU
    assert s["agg"] == pytest.approx(2 / (1 / mem + 1 / mu))
    assert s["fq"] == 1.0 and s["d_high"] == -1.0 and s["fact_leak"] == 0.1
    s = ev.summarise(fake_result(fluency=0.5))
    assert s["util"] == pytest.approx(2 / (1 / mu + 1 / 0.5)) and s["fq"] is None


def test_format_table_marks_missing_numbers():
    s = ev.summarise(fake_result())
    text = ev.format_table({"base": s, "a_long_model_name": s})
    lines = text.splitlines()
    assert len(lines) == 3 and lines[0].split()[1:] == [h for _, h, _ in ev.COLUMNS]
    assert lines[1].split()[ev.COLUMNS.index(("fq", "FQ", ".2g")) + 1] == "-"  # no retain model: no FQ


# -----------------------------------------------------------------------------------------------------
# Bad input: one-line errors


def fake_model_dir(path, run_config=None):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"model_type": "llama"}, f)
    if run_config is not None:
        with open(os.path.join(path, "run_config.json"), "w") as f:
            json.dump(run_config, f)
    return str(path)


def test_missing_run_dir(tmp_path):
    with pytest.raises(SystemExit, match="run directory not found"):
        ev.main([str(tmp_path / "nope")])


def test_run_dir_without_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="not a model directory"):
        ev.main([str(tmp_path / "empty")])


def test_runs_disagree_on_split(tmp_path):
    a = fake_model_dir(tmp_path / "a", dict(data="toy", forget_split="forget10"))
    b = fake_model_dir(tmp_path / "b", dict(data="toy", forget_split="forget05"))
    with pytest.raises(SystemExit, match="disagree on --forget_split"):
        ev.main([a, b])


def test_tofu_needs_a_base_model(tmp_path):
    with pytest.raises(SystemExit, match="needs the starting model"):
        ev.main(["--data", "tofu"])


def test_fluency_classifier_unavailable_is_one_line():
    with pytest.raises(SystemExit, match="--fluency could not load"):
        ev.load_fluency("/nonexistent/gibberish-classifier")


class Evaluated(Exception):
    """What the `no_work` fixture raises in place of the first real work: drawing the beliefs."""


@pytest.fixture
def no_work(monkeypatch):
    """A check that should come first fails the test by letting main reach the evaluation."""
    def started(*args, **kwargs):
        raise Evaluated("main started the evaluation")
    monkeypatch.setattr(ev, "draw_beliefs", started)


@pytest.mark.parametrize("flag, value", [
    ("--max_rows", "-1"), ("--max_new_tokens", "0"), ("--n_beliefs", "0"), ("--belief_temp", "0"),
    ("--belief_temp", "nan"), ("--batch_size", "0"), ("--threads", "-1"), ("--seed", "1.5"),
    ("--tr_mean", "median")])
def test_bad_flag_is_one_line_naming_it(flag, value):
    one_line_error(lambda: ev.get_args([flag, value]), flag, value)


def test_flags_accept_their_bounds():
    args = ev.get_args(["--max_rows", "0", "--max_new_tokens", "1", "--n_beliefs", "1",
                        "--belief_temp", "1e-3", "--batch_size", "1", "--threads", "0"])
    assert (args.max_rows, args.max_new_tokens, args.belief_temp, args.threads) == (0, 1, 1e-3, 0)


def test_bad_device_is_one_line(tmp_path, no_work):
    one_line_error(lambda: ev.main(["--device", "gpu", "--out_dir", str(tmp_path)]), "--device", "gpu")


@pytest.mark.parametrize("under", [False, True])
def test_out_dir_that_is_a_file(tmp_path, no_work, under):
    """Refused at once (before the toy models are even looked at), and the file is left alone."""
    f = tmp_path / "results"
    f.write_text("mine")
    out = f / "eval" if under else f
    one_line_error(lambda: ev.main(["--out_dir", str(out)]), "--out_dir", "is a file")
    assert f.read_text() == "mine"


def test_out_dir_that_cannot_be_written(tmp_path, no_work):
    outs = ["/proc/bs_unlearn_eval"] if os.path.isdir("/proc/self") else []
    if os.geteuid() != 0:  # root writes into read-only folders anyway
        (tmp_path / "ro").mkdir(mode=0o500)
        outs.append(str(tmp_path / "ro" / "eval"))
    if not outs:
        pytest.skip("no folder here that refuses files")
    for out in outs:
        one_line_error(lambda: ev.main(["--out_dir", out]), "cannot write", "--out_dir")
        assert not os.path.exists(out)


@pytest.mark.parametrize("content, words", [("{", "cannot read"), ("[1, 2]", "JSON list")])
def test_broken_run_config_is_one_line(tmp_path, content, words):
    run = fake_model_dir(tmp_path / "run")
    (tmp_path / "run" / "run_config.json").write_text(content)
    one_line_error(lambda: ev.main([run, "--out_dir", str(tmp_path / "eval")]), "run_config.json", words)


def test_no_paths_outside_the_repository(capsys):
    with pytest.raises(SystemExit):
        ev.get_args(["--help"])
    for text in (ev.__doc__, capsys.readouterr().out):
        assert "../" not in text and "shared/" not in text


def fake_results():
    return {"base.json": dict(name="base"), "summary.json": dict(summaries={})}


def test_write_outputs_whole_or_not_at_all(tmp_path, monkeypatch):
    out = tmp_path / "eval"
    with ev.output_dir(str(out)) as folder:
        ev.write_outputs(folder, fake_results())
    assert sorted(os.listdir(out)) == ["base.json", "summary.json"]
    assert json.load(open(out / "summary.json")) == dict(summaries={}, files=["base.json", "summary.json"])
    # Ctrl-C while the second file is written: the folder stays as it was, no temporary folder is left
    calls = []
    def interrupted(obj, f, **kwargs):
        calls.append(obj)
        f.write("{")
        if len(calls) == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(ev, "json", types.SimpleNamespace(dump=interrupted))
    with pytest.raises(KeyboardInterrupt):
        with ev.output_dir(str(out), overwrite=True) as folder:
            ev.write_outputs(folder, {"base.json": dict(name="new"), "summary.json": dict(summaries=1)})
    monkeypatch.undo()
    assert sorted(os.listdir(out)) == ["base.json", "summary.json"]
    assert json.load(open(out / "base.json")) == dict(name="base")
    assert os.listdir(tmp_path) == ["eval"]


# -----------------------------------------------------------------------------------------------------
# Real TOFU files (skipped without them)


def test_tofu_row_counts(tofu_dir):
    counts = dict(full=4000, forget10=400, retain90=3600, forget10_perturbed=400, retain_perturbed=400,
                  real_authors=100, real_authors_perturbed=100, world_facts=117, world_facts_perturbed=117)
    for split, n in counts.items():
        assert len(bs.load_tofu(split, tofu_dir)) == n, split
    data = ev.load_eval_data("tofu", "forget10", tofu_dir)
    sizes = {k: len(v) for k, v in data.items()}
    assert sizes == dict(forget=400, retain=400, real_authors=100, world_facts=117)
    assert all(len(r["perturbed_answer"]) == 5 and r["paraphrased_answer"] for r in data["forget"])
    assert all(len(r["perturbed_answer"]) == 3 for r in data["real_authors"] + data["world_facts"])


def tiny_tofu_model(rows, path):
    """A word-level tokenizer over these rows and a tiny random Llama, saved like a real checkpoint."""
    from transformers import LlamaConfig, LlamaForCausalLM
    texts = [f"Question: {r['question']}\nAnswer: {a}" for r in rows
             for a in [r["answer"], r.get("paraphrased_answer", "")] + r["perturbed_answer"]]
    tok = toy_world.word_tokenizer(texts)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_tofu_pipeline_end_to_end(tofu_dir, tmp_path):
    data = ev.load_eval_data("tofu", "forget10", tofu_dir, max_rows=3)
    path = tiny_tofu_model([r for rows in data.values() for r in rows], tmp_path / "tiny")
    out = tmp_path / "eval"
    results = ev.main(["--data", "tofu", "--data_dir", tofu_dir, "--base_model", path, "--retain_model", path,
                       "--max_rows", "3", "--max_new_tokens", "8", "--n_beliefs", "3", "--out_dir", str(out),
                       "--device", "cpu"])
    assert sorted(os.listdir(out)) == ["base.json", "retain.json", "summary.json"]
    res = json.load(open(out / "base.json"))
    assert set(res["splits"]) == {"forget", "retain", "real_authors", "world_facts"}
    assert all(res["splits"][s]["n"] == 3 for s in res["splits"])
    s = res["summary"]
    assert s["mu_n"] == 9 and s["fact_leak"] is None  # TOFU rows have no key entity
    assert s["fq"] == 1.0  # the same model as its own retain reference
    for k in ("forget_prob", "forget_rouge", "forget_tr", "mu", "mem", "util", "agg"):
        assert 0 <= s[k] <= 1, k
    assert abs(s["d_target"]) < 1e-4  # the base against itself
    # real_authors Prob by hand: p = exp(logp / n) of the answer against its 3 perturbed answers
    model, tok = bs.load_model(path, CPU)
    row = data["real_authors"][0]
    answers = [row["answer"]] + row["perturbed_answer"]
    sc = bs.score(model, tok, [bs.encode(tok, row["question"], a) for a in answers])
    p = [math.exp(lp / n) for lp, n in zip(sc["logp"].tolist(), sc["n_tokens"].tolist())]
    assert res["splits"]["real_authors"]["rows"]["prob"][0] == pytest.approx(p[0] / sum(p), rel=1e-4)
    assert results["retain"]["summary"]["fq"] == 1.0


# -----------------------------------------------------------------------------------------------------
# The embedded example: the cached full and retain-only models


@pytest.fixture(scope="module")
def toy(toy_cache):
    """(data: 64 forget and 64 retain rows, the full model, its tokenizer, its beliefs, the retain path)."""
    cache, full, retain = toy_cache
    data = ev.load_eval_data("toy", "forget10", max_rows=64)
    model, tok = bs.load_model(full, CPU)
    beliefs = ev.draw_beliefs(model, tok, data["forget"], n=6, seed=0)
    return data, model, tok, beliefs, retain


def test_beliefs_drawn_once_distinct_and_banded(toy):
    data, model, tok, beliefs, _ = toy
    samples = beliefs["samples"]
    assert len(beliefs["target_logp"]) == len(data["forget"]) == 64
    assert len(samples) > 64  # the memorised model has more than one way to say each fact
    for i, row in enumerate(data["forget"]):
        mine = [b for b in samples if b["row"] == i]
        assert len({b["text"] for b in mine}) == len(mine)  # distinct
        target = bs.encode(tok, row["question"], row["answer"])
        assert all(bs.encode(tok, row["question"], b["text"]) != target for b in mine)  # not the target
        if mine:
            best = max(mine, key=lambda b: b["base_logp"])
            assert best["band"] == "high"
    again = ev.draw_beliefs(model, tok, data["forget"], n=6, seed=0)
    assert [b["text"] for b in again["samples"]] == [b["text"] for b in samples]  # seeded


def test_es_counts_match_a_hand_loop(toy):
    """ES rests on score_examples' n_suffix: check it against an explicit loop over positions."""
    data, model, tok, _, _ = toy
    rows = data["forget"][:6]
    examples = [bs.encode(tok, r["question"], a) for r in rows
                for a in (r["answer"], r["perturbed_answer"][0])]
    s = ev.score_examples(model, tok, examples, batch_size=5)
    for e, n_suffix, n_correct in zip(examples, s["n_suffix"].tolist(), s["n_correct"].tolist()):
        with torch.no_grad():
            pred = model(torch.tensor([e["input_ids"]])).logits[0].argmax(-1).tolist()
        ok = [pred[t - 1] == e["labels"][t] for t in range(e["prompt_len"], len(e["input_ids"]))]
        k = next(k for k in range(len(ok) + 1) if all(ok[k:]))  # the shortest prefix after which all match
        assert n_suffix == len(ok) - k and n_correct == sum(ok)


def test_starting_model(toy):
    data, model, tok, beliefs, _ = toy
    res = ev.evaluate(model, tok, data, beliefs, quick_args(), name="base")
    f, s = res["splits"]["forget"], res["summary"]
    assert f["prob"] > 0.9 and f["rouge"] > 0.8 and f["fact_hit"] > 0.9  # it knows the forget set
    assert f["es"] > 0.8 and f["em"] > 0.9
    assert res["splits"]["retain"]["prob"] > 0.9
    for k in ("d_target", "d_high", "d_mid", "d_low"):  # itself against itself
        assert abs(s[k]) < 1e-3, k


def test_retain_only_model(toy):
    data, _, _, beliefs, retain_path = toy
    model, tok = bs.load_model(retain_path, CPU)
    res = ev.evaluate(model, tok, data, beliefs, quick_args(), name="retain")
    f = res["splits"]["forget"]
    assert f["prob"] < 0.5 and f["fact_hit"] < 0.3  # it never saw the forget authors
    assert res["splits"]["retain"]["prob"] > 0.9
    assert res["summary"]["d_target"] < -5
    assert ev.summarise(res, f["rows"]["R"])["fq"] == 1.0  # forget quality against itself


def test_ga_lowers_forget_prob(toy):
    data, model0, tok, beliefs, _ = toy
    model = copy.deepcopy(model0)
    forget, retain = toy_world.split_toy(toy_world.make_toy_data(), "forget10")
    # 8 steps at lr 1e-3, no warmup: a short run that clearly moves the toy model
    args = bs.get_args(["--method", "ga", "--lr", "1e-3", "--epochs", "2", "--warmup_epochs", "0",
                        "--sample_every", "1000"])
    bs.train(model, tok, bs.encode_rows(tok, forget), bs.encode_rows(tok, retain), args)
    before = ev.evaluate(model0, tok, data, beliefs, quick_args())["summary"]
    after = ev.evaluate(model, tok, data, beliefs, quick_args())["summary"]
    assert after["forget_prob"] < before["forget_prob"] - 0.2, (before["forget_prob"], after["forget_prob"])
    assert after["d_target"] < -1 and after["mem"] > before["mem"]


@pytest.fixture(scope="module")
def ga_run(toy_cache, tmp_path_factory):
    """A short GA run of the embedded example, by bs_unlearn.main (tests copy it before changing it)."""
    run = str(tmp_path_factory.mktemp("runs") / "ga")
    bs.main(["--method", "ga", "--lr", "1e-3", "--epochs", "1", "--warmup_epochs", "0", "--out_dir", run,
             "--cache_dir", toy_cache[0], "--sample_every", "1000"])
    return run


def test_cli_on_a_run(toy_cache, ga_run, tmp_path):
    cache, run = toy_cache[0], ga_run
    out = tmp_path / "eval"
    results = ev.main([run, "--max_rows", "16", "--max_new_tokens", "32", "--n_beliefs", "4",
                       "--out_dir", str(out), "--cache_dir", cache])
    assert list(results) == ["base", "retain", "ga"]
    assert sorted(os.listdir(out)) == ["base.json", "ga.json", "retain.json", "summary.json"]
    summary = json.load(open(out / "summary.json"))["summaries"]
    assert summary["retain"]["fq"] == 1.0 and summary["base"]["fq"] < summary["retain"]["fq"]
    assert summary["ga"]["forget_prob"] < summary["base"]["forget_prob"]
    assert summary["base"]["mu_n"] == 3  # the toy data has only the retain split for utility


# -----------------------------------------------------------------------------------------------------
# Runs that would give wrong or no results: refused in one line before any work


def copy_run(run, dst):
    shutil.copytree(run, dst)
    return str(dst)


def eval_main(toy_cache, tmp_path, *argv):
    """eval.main on the embedded example's cached models, writing into tmp_path/eval."""
    return ev.main([*argv, "--out_dir", str(tmp_path / "eval"), "--cache_dir", toy_cache[0]])


def test_unfinished_run_refused(ga_run, toy_cache, tmp_path, no_work):
    """bs_unlearn.py writes run_config.json last: log.jsonl without it is a run that was stopped."""
    killed = copy_run(ga_run, tmp_path / "ga")
    os.remove(os.path.join(killed, "run_config.json"))
    early = tmp_path / ".ga.tmp-x1y2"  # killed during training: what atomic_dir leaves behind
    early.mkdir()
    shutil.copy(os.path.join(ga_run, "log.jsonl"), early)
    for run in (killed, str(early)):
        one_line_error(lambda: eval_main(toy_cache, tmp_path, run), run, "did not finish")


def test_plain_saved_model_still_accepted(ga_run, toy_cache, tmp_path, no_work):
    plain = copy_run(ga_run, tmp_path / "plain")
    for f in ("run_config.json", "log.jsonl"):
        os.remove(os.path.join(plain, f))
    assert ev.read_run(plain) == {}
    with pytest.raises(Evaluated):  # every check passes
        eval_main(toy_cache, tmp_path, plain)


@pytest.mark.parametrize("damage", ["missing", "cut"])
def test_missing_or_cut_weights_refused_first(ga_run, toy_cache, tmp_path, no_work, damage):
    run = copy_run(ga_run, tmp_path / "ga")
    weights = os.path.join(run, "model.safetensors")
    if damage == "missing":
        os.remove(weights)
    else:
        os.truncate(weights, os.path.getsize(weights) // 2)
    msg = one_line_error(lambda: eval_main(toy_cache, tmp_path, run), "cannot load model", run)
    assert damage == "missing" or "model.safetensors" in msg


def edit_json(path, change):
    with open(path) as f:
        spec = json.load(f)
    change(spec)
    with open(path, "w") as f:
        json.dump(spec, f)


def swap_token_ids(run, a="was", b="the"):
    """Give two words each other's id in tokenizer.json: the weights now read one as the other."""
    def swap(spec):
        vocab = spec["model"]["vocab"]
        vocab[a], vocab[b] = vocab[b], vocab[a]
    edit_json(os.path.join(run, "tokenizer.json"), swap)


@pytest.mark.parametrize("change, words", [("ids", "token ids"), ("eos", "EOS id")])
def test_tokenizer_mismatch_refused(ga_run, toy_cache, tmp_path, no_work, change, words):
    run = copy_run(ga_run, tmp_path / "ga_other_tokenizer")
    if change == "ids":
        swap_token_ids(run)
    else:  # the same ids, but another token ends the answers
        edit_json(os.path.join(run, "tokenizer_config.json"), lambda cfg: cfg.update(eos_token="<unk>"))
    one_line_error(lambda: eval_main(toy_cache, tmp_path, run), run, words, "--allow_tokenizer_mismatch")


def test_tokenizer_mismatch_allowed_and_why_it_is_refused(ga_run, toy_cache, tmp_path, capsys):
    """With the flag the run is evaluated (and a warning says so); its swapped ids make it look like the
    best forgetting of the table, which is why it is refused by default."""
    shuffled = copy_run(ga_run, tmp_path / "shuffled")
    swap_token_ids(shuffled)
    results = eval_main(toy_cache, tmp_path, ga_run, shuffled, "--allow_tokenizer_mismatch",
                        "--max_rows", "16", "--max_new_tokens", "24", "--n_beliefs", "2")
    assert "warning: the tokenizer of " + shuffled in capsys.readouterr().out
    assert results["shuffled"]["summary"]["forget_prob"] < results["ga"]["summary"]["forget_prob"]


def test_threads_is_an_explicit_override(ga_run, toy_cache, tmp_path, monkeypatch):
    """--threads N holds while the models run (load_model puts the toy model on one); 0 leaves torch alone."""
    seen = []
    def record(*args, **kwargs):
        seen.append(torch.get_num_threads())
        raise Evaluated
    monkeypatch.setattr(ev, "draw_beliefs", record)
    try:
        for threads in ("2", "0"):
            with pytest.raises(Evaluated):
                eval_main(toy_cache, tmp_path, ga_run, "--threads", threads)
    finally:
        torch.set_num_threads(1)
    assert seen == [2, 1]


def earlier_evaluation(out):
    """A folder as eval.py leaves it (summary.json listing the files), with recognisable contents."""
    out.mkdir()
    (out / "base.json").write_text("old base")
    (out / "summary.json").write_text(json.dumps(dict(summaries={}, files=["base.json", "summary.json"])))
    return out


def test_write_failure_is_one_line_and_keeps_old_results(ga_run, toy_cache, tmp_path, monkeypatch):
    """A disk that fills up while the third file is written: one line, and the previous results stay."""
    out = earlier_evaluation(tmp_path / "eval")
    old_summary = (out / "summary.json").read_text()
    calls = []
    def full_disk(obj, f, **kwargs):
        calls.append(obj)
        if len(calls) == 3:
            f.write('{"name": "ga", "spl')
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        json.dump(obj, f, **kwargs)
    monkeypatch.setattr(ev, "json", types.SimpleNamespace(dump=full_disk, load=json.load))
    argv = [ga_run, "--max_rows", "8", "--max_new_tokens", "16", "--n_beliefs", "2", "--overwrite"]
    one_line_error(lambda: eval_main(toy_cache, tmp_path, *argv), "cannot write", os.strerror(errno.ENOSPC))
    assert sorted(os.listdir(out)) == ["base.json", "summary.json"]
    assert (out / "base.json").read_text() == "old base"
    assert (out / "summary.json").read_text() == old_summary
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # no temporary folder left either


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_out_dir_holding_other_files_is_refused(ga_run, toy_cache, tmp_path, no_work, overwrite):
    """A folder with anything but an earlier evaluation in it is refused, with --overwrite too, and untouched."""
    out = tmp_path / "eval"
    out.mkdir()
    (out / "summary.json").write_text("my notes")
    (out / "base.json").write_text("keep")
    one_line_error(lambda: eval_main(toy_cache, tmp_path, ga_run, *overwrite), "--out_dir", str(out),
                   "--overwrite replaces only a finished evaluation")  # (not "pass --overwrite", which would fail)
    assert (out / "summary.json").read_text() == "my notes" and (out / "base.json").read_text() == "keep"


def test_the_out_dir_is_claimed_before_the_evaluation(ga_run, toy_cache, tmp_path, monkeypatch):
    # a second evaluation into the same folder is refused at its start, not after all its work
    def started(*args, **kwargs):
        assert plumbing.writer_of(str(tmp_path / "eval"))
        raise Evaluated
    monkeypatch.setattr(ev, "draw_beliefs", started)
    with pytest.raises(Evaluated):
        eval_main(toy_cache, tmp_path, ga_run)
    assert os.listdir(tmp_path) == []  # (interrupted: nothing left, hidden or not)


def test_the_current_folder_is_not_an_out_dir(ga_run, toy_cache, tmp_path, monkeypatch, no_work):
    # the folder is replaced whole, which would pull the shell's folder from under it
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    one_line_error(lambda: ev.main([ga_run, "--out_dir", ".", "--cache_dir", toy_cache[0]]), "current folder")


def test_an_earlier_evaluation_is_replaced_whole_only_with_overwrite(ga_run, toy_cache, tmp_path):
    out = earlier_evaluation(tmp_path / "eval")
    (out / "old_run.json").write_text("{}")  # a model of the earlier evaluation, not of this one
    summary = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps(dict(summary, files=summary["files"] + ["old_run.json"])))
    argv = [copy_run(ga_run, tmp_path / "summary"), "--max_rows", "8", "--max_new_tokens", "16", "--n_beliefs", "2"]
    one_line_error(lambda: eval_main(toy_cache, tmp_path, *argv), "not empty", "--overwrite")
    results = eval_main(toy_cache, tmp_path, *argv, "--overwrite")
    assert list(results) == ["base", "retain", "summary_0"]  # a run named summary keeps its own file
    assert sorted(os.listdir(out)) == ["base.json", "retain.json", "summary.json", "summary_0.json"]
    saved = json.loads((out / "summary.json").read_text())
    assert sorted(saved["files"]) == sorted(os.listdir(out)) and "summary_0" in saved["summaries"]
    assert oct(os.stat(out / "base.json").st_mode & 0o777) == oct(0o666 & ~current_umask())


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
