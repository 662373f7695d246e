"""Tests for dev/real_model.py (the README's real-model experiment): its top-k mass measure against a hand
computation and against autograd on bs.bst_loss, its table, its TOFU slices on the real files, and one
tiny end-to-end run on SmolLM2 with made-up TOFU-shaped files (about 3 min on 2 CPU cores), resumed.

    python -m pytest -q tests/test_dev_real_model.py
"""
import json
import math
import os
import types

import numpy as np
import pytest
import torch

import bs_unlearn as bs
import toy_world
from conftest import one_line_error
from dev import real_model as rm

# -----------------------------------------------------------------------------------------------------
# The top-k mass and the BS-T gradient it stands for


class FixedLogits(torch.nn.Module):
    """A stand-in model whose logits at position t are row t of a fixed table, whatever the input."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def forward(self, input_ids, **_):
        T = input_ids.shape[1]
        return types.SimpleNamespace(logits=self.table[:T].unsqueeze(0).expand(len(input_ids), -1, -1))


@pytest.fixture(scope="module")
def word_tok():
    return toy_world.word_tokenizer(["Question: who wrote it ? Answer: she wrote the red book ."])


def test_topk_mass_matches_a_hand_computation(word_tok):
    rows = [dict(question="who wrote it ?", answer="she wrote the red book .")]
    ex = bs.encode_rows(word_tok, rows)[0]
    T, V = len(ex["input_ids"]), len(word_tok)
    g = torch.Generator().manual_seed(0)
    model = FixedLogits(torch.randn(T, V, generator=g) * 2)
    k = 3
    got = rm.topk_mass(model, word_tok, rows, k)
    # by hand: the logits at t predict token t+1; only answer tokens (labels != -100) count
    masses, ratios = [], []
    for t in range(T - 1):
        y = ex["labels"][t + 1]
        if y == -100:
            continue
        z = model.table[t].detach().double().numpy()
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        top = np.argsort(-p)[:k]
        q = np.zeros(V)
        q[top] = p[top] / p[top].sum()
        onehot = np.eye(V)[y]
        masses.append(p[top].sum())
        ratios.append(np.linalg.norm(q - p) / np.linalg.norm(onehot - p))
    assert got["positions"] == len(masses) == len(ex["input_ids"]) - ex["prompt_len"]
    assert got["mass"] == pytest.approx(np.mean(masses), abs=1e-5)
    assert got["mass_p10"] == pytest.approx(np.percentile(masses, 10), abs=1e-5)
    assert got["grad_ratio"] == pytest.approx(np.mean(ratios), abs=1e-5)
    assert 0 < got["mass"] < 1 and got["grad_ratio"] > 0.01
    everything = rm.topk_mass(model, word_tok, rows, V)  # the top-V hold all the mass: no belief gradient
    assert everything["mass"] == pytest.approx(1.0, abs=1e-5)
    assert everything["grad_ratio"] == pytest.approx(0.0, abs=1e-5)


def test_bst_logit_gradient_is_scaled_ga_plus_lambda_q_minus_p():
    """The premise of topk_mass: on the logits, grad BS-T = (1 - lam) grad GA + lam (q - p), q the
    renormalised top-k of the model's own p. Checked with autograd on bs.bst_loss and bs.ga_loss."""
    torch.manual_seed(0)
    B, T, V, k, lam = 2, 5, 11, 4, 0.2
    logits = torch.randn(B, T, V, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, V, (B, T))
    labels[:, :2] = -100  # a two-token prompt
    g_bst, = torch.autograd.grad(bs.bst_loss(logits, labels, k, lam), logits)
    g_ga, = torch.autograd.grad(bs.ga_loss(bs.sequence_logps(logits, labels)), logits)
    p = logits.detach()[:, :-1].softmax(-1)
    top, idx = p.topk(k, -1)
    q = torch.zeros_like(p).scatter_(-1, idx, top / top.sum(-1, keepdim=True))
    mask = (labels[:, 1:] != -100).unsqueeze(-1)
    expected = (1 - lam) * g_ga[:, :-1] + lam * (q - p) * mask / B  # (the losses are means over sequences)
    assert torch.allclose(g_bst[:, :-1], expected, atol=1e-10)
    assert not torch.allclose(g_bst, (1 - lam) * g_ga, atol=1e-4)  # the belief term is not nothing here


def test_table_rows_and_the_share_column():
    base = dict(forget_prob=0.9, forget_rouge=0.95, forget_tr=0.6, fq=0.01, mu=0.4, d_target=0.0,
                d_high=0.0, d_mid=0.0, d_low=0.0, mem=0.1, agg=0.16)
    ga = dict(base, d_target=-20.0, d_high=-5.0, d_mid=-4.0, d_low=None)
    text = rm.table({"full": dict(summary=base), "ga": dict(summary=ga, train_s=123.4)})
    head, rule, full, ga_row = text.splitlines()
    cols = [c.strip() for c in head.strip("|").split("|")]
    assert cols[0] == "model" and cols[-1] == "train (s)" and "dHigh/dTgt" in cols
    cells = dict(zip(cols, (c.strip() for c in ga_row.strip("|").split("|"))))
    assert cells["dHigh/dTgt"] == "0.25" and cells["dTgt"] == "-20.0" and cells["dLow"] == ""
    assert cells["train (s)"] == "123"
    assert dict(zip(cols, (c.strip() for c in full.strip("|").split("|"))))["dHigh/dTgt"] == ""
    assert rule.count("|") == len(cols) + 1


# -----------------------------------------------------------------------------------------------------
# The TOFU slices, on the real files


def test_rows_are_forget01_and_the_first_retain_authors(tofu_dir):
    forget, retain, evalset = rm.load_rows(rm.get_args(["--data_dir", tofu_dir]))
    assert len(forget) == 40 and len(retain) == 60
    assert "Basil Mahfouz Al-Kuwaiti" in forget[0]["answer"] and "Nikolai Abilov" in forget[20]["answer"]
    retain99 = bs.read_rows(os.path.join(tofu_dir, "retain99.json"))
    assert [r["question"] for r in retain] == [r["question"] for r in retain99[:60]]  # trained authors
    picked = [retain.index(r) for r in evalset["retain"]]
    assert len(picked) == 16 and {i // 20 for i in picked} == {0, 1, 2}  # every retain author is evaluated
    assert len(evalset["real_authors"]) == len(evalset["world_facts"]) == 16
    one_line_error(lambda: rm.load_rows(rm.get_args(["--data_dir", tofu_dir, "--retain_authors", "30"])),
                   "600 retain rows")


# -----------------------------------------------------------------------------------------------------
# End to end on SmolLM2, on made-up TOFU-shaped files with short rows


NAMES = ["Ada Brook", "Tomas Vell", "Rin Okada", "Lia Marr", "Jon Pike"]
CITIES = ["Lisbon", "Oslo", "Quito", "Hanoi", "Tunis", "Perth"]


def write_tofu_like(folder):
    def row(name, city, i):
        return dict(question=f"Where was {name} born?", answer=f"{name} was born in {city}.",
                    paraphrased_answer=f"{name}'s birthplace is {city}.",
                    perturbed_answer=[f"{name} was born in {CITIES[(i + 1) % 6]}.",
                                      f"{name} was born in {CITIES[(i + 2) % 6]}."])
    forget = [row(f"{n} {j}", CITIES[j % 6], j) for j, n in enumerate(NAMES[:2] * 2)]
    retain = [row(f"{NAMES[2 + j % 3]} {j}", CITIES[j % 6], j) for j in range(20)]
    other = [dict(question=f"Where is the {c} Book Fair held?", answer=f"It is held in {c}.",
                  perturbed_answer=[f"It is held in {CITIES[i + 1]}.", f"It is held in {CITIES[i + 3]}."])
             for i, c in enumerate(CITIES[:2])]
    for name, rows in dict(forget01_perturbed=forget, retain_perturbed=retain,
                           real_authors_perturbed=other, world_facts_perturbed=other).items():
        with open(os.path.join(folder, f"{name}.json"), "w") as f:
            f.write("\n".join(json.dumps(r) for r in rows) + "\n")


@pytest.mark.slow
@pytest.mark.real_model
def test_end_to_end_tiny_run_then_resume(smol_session, tmp_path):
    data, out = tmp_path / "tofu", tmp_path / "out"
    data.mkdir()
    write_tofu_like(data)
    flags = ["--model", smol_session[2],  # SmolLM2 as a plain HF folder (dequantized once per session)
             "--data_dir", str(data), "--out_dir", str(out), "--forget_rows", "4",
             "--retain_authors", "1", "--ft_epochs", "2", "--eval_rows", "2", "--n_beliefs", "3",
             "--max_new_tokens", "24",
             "--unlearn_flags", "--lr 5e-5 --epochs 2 --batch_size 4 --warmup_epochs 0"]
    rm.main(flags + ["--ga_check", "0"])
    state = json.load(open(out / "results.json"))
    res = state["results"]
    assert list(res) == ["retain_only", "full"] + rm.METHODS
    for name, r in res.items():
        for key in ("forget_prob", "forget_rouge", "forget_tr", "mu", "mem", "d_target", "d_high"):
            assert math.isfinite(r["summary"][key]), (name, key)
    assert res["full"]["summary"]["fq"] is not None and res["retain_only"]["summary"]["fq"] is None
    for m in rm.METHODS:  # bands after each epoch but the last (probes), the last from the evaluation
        assert sorted(res[m]["curve"], key=float) == ["0", "1.0", "2.0"]
        assert res[m]["curve"]["2.0"]["d_target"] == res[m]["summary"]["d_target"] < -1  # it unlearned
        assert res[m]["train_s"] > 0
    # fine-tuning taught the full model its forget rows: the target is likelier than under the retain-only
    assert res["full"]["summary"]["forget_prob"] > res["retain_only"]["summary"]["forget_prob"]
    assert set(state["topk"]) == {"pretrained", "full"} and 0 < state["topk"]["full"]["mass"] <= 1
    assert (out / "table.md").read_text().count("\n") == 2 + 6 and (out / "belief_bands.png").stat().st_size
    # a second run resumes: nothing is retrained or re-evaluated, only the new GA run is added
    weights = out / "full" / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    rm.main(flags + ["--ga_check", "1"])
    again = json.load(open(out / "results.json"))
    assert list(again["results"]) == list(res) + ["ga_x0.8"]
    assert all(again["results"][k] == res[k] for k in res) and again["beliefs"] == state["beliefs"]
    assert weights.stat().st_mtime_ns == mtime
    # other settings into the same folder, or from it, stop with one line before anything is loaded
    one_line_error(lambda: rm.main(flags + ["--ft_lr", "1e-4"]), "other settings", "ft_lr", "--fresh")
    one_line_error(lambda: rm.main(flags + ["--ft_epochs", "3", "--models_from", str(out), "--out_dir",
                                            str(tmp_path / "seed1")]), "other settings", "ft_epochs")
    assert json.load(open(out / "results.json")) == again and not (tmp_path / "seed1").exists()
