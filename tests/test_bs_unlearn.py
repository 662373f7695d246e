"""Tests for bs_unlearn.py, offline and fast (~30 s on 2 CPU cores once the toy models are cached).

Expected values are worked by hand (plain `math`, or an independent torch computation), never copied from a
run of the code under test. Unit tests use a tiny Llama built from a config and a word-level tokenizer built
here; only the training tests use the cached toy model (the `toy_cache` fixture builds it once per session).

    BS_UNLEARN_CACHE=/tmp/bscache python -m pytest tests/test_bs_unlearn.py -q
"""
import copy
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

import bs_unlearn as bs
from conftest import one_line_error
import eval as ev
import toy_world

CPU = torch.device("cpu")


# -----------------------------------------------------------------------------------------------------
# Fixtures: a word-level tokenizer and a tiny Llama, both built in well under a second


@pytest.fixture(scope="module")
def tok():
    return toy_world.word_tokenizer([f"Question: {r['question']}\nAnswer: {a}" for r in toy_world.make_toy_data()
                                     for a in r["train_answers"] + [r["paraphrased_answer"]] + r["perturbed_answer"]])


def tiny_model(tok, attn="eager", seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      attn_implementation=attn)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(tok)


@pytest.fixture(scope="module")
def rows():
    return toy_world.make_toy_data()


@pytest.fixture(scope="module")
def examples(tok, rows):
    """Six encoded forget-style examples of different lengths (distinct prompts)."""
    picked = [rows[i] for i in (0, 3, 9, 14, 21, 30)]
    return bs.encode_rows(tok, picked)


def hand_batch():
    """Hand-built logits (B=2, T=5, V=6) and labels: prompt positions and right padding are -100.
    Row 0: prompt of 2 tokens, answer tokens 3, 1, 4. Row 1: prompt of 1 token, answer 2, 5, then padding."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 6, generator=g) * 2
    labels = torch.tensor([[-100, -100, 3, 1, 4], [-100, 2, 5, -100, -100]])
    return logits, labels


def manual_seq_logps(logits, labels):
    """sum_i log pi(y_i | y_<i) with explicit loops: logits at t predict the label at t + 1."""
    out = []
    for b in range(labels.shape[0]):
        s = 0.0
        for t in range(labels.shape[1] - 1):
            y = labels[b, t + 1].item()
            if y != -100:
                s += torch.log_softmax(logits[b, t].double(), -1)[y].item()
        out.append(s)
    return torch.tensor(out)


# -----------------------------------------------------------------------------------------------------
# Log-prob helper


def test_sequence_logps_equals_cross_entropy_sum():
    logits, labels = hand_batch()
    got = bs.sequence_logps(logits, labels)
    for b in range(2):
        ce = F.cross_entropy(logits[b, :-1], labels[b, 1:], ignore_index=-100, reduction="sum")
        assert torch.allclose(got[b], -ce, atol=1e-5)
    assert torch.allclose(got, manual_seq_logps(logits, labels).float(), atol=1e-5)
    # token_logps is zero off the answer and sums to the sequence log-prob
    per_tok = bs.token_logps(logits, labels)
    assert per_tok.shape == (2, 4)
    assert (per_tok[labels[:, 1:] == -100] == 0).all() and (per_tok[labels[:, 1:] != -100] < 0).all()
    assert torch.allclose(per_tok.sum(-1), got)


def test_sequence_logps_ignores_masked_positions():
    logits, labels = hand_batch()
    ref = bs.sequence_logps(logits, labels)
    # logits at position t only matter if the label at t + 1 is an answer token; the last position never does
    unused = torch.ones(2, 5, dtype=torch.bool)
    unused[:, :-1] = labels[:, 1:] == -100
    noisy = logits.clone()
    noisy[unused] = torch.randn(int(unused.sum()), 6) * 100
    assert torch.allclose(bs.sequence_logps(noisy, labels), ref)
    # and the changed logits really are used when they are not masked (the test can fail)
    noisy2 = logits.clone()
    noisy2[0, 2] += torch.arange(6.0)
    assert not torch.allclose(bs.sequence_logps(noisy2, labels), ref)


def test_collate_mask_from_lengths_when_pad_is_eos():
    eos = 3
    a = dict(input_ids=[5, 6, eos], labels=[-100, 6, eos], prompt_len=1)
    b = dict(input_ids=[5, 6, 7, 8, eos], labels=[-100, -100, 7, 8, eos], prompt_len=2)
    right = bs.collate([a, b], pad_id=eos, side="right")
    assert right["input_ids"][0].tolist() == [5, 6, eos, eos, eos]
    assert right["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]  # the real EOS stays attended
    assert right["labels"][0].tolist() == [-100, 6, eos, -100, -100]
    assert right["position_ids"][1].tolist() == [0, 1, 2, 3, 4]
    assert right["position_ids"][0, :3].tolist() == [0, 1, 2]
    left = bs.collate([a, b], pad_id=eos, side="left")
    assert left["input_ids"][0].tolist() == [eos, eos, 5, 6, eos]
    assert left["attention_mask"].tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert left["labels"][0].tolist() == [-100, -100, -100, 6, eos]
    assert left["position_ids"][0, 2:].tolist() == [0, 1, 2]  # real tokens count from 0


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_padding_side_does_not_change_logps(tok, examples, attn):
    model = tiny_model(tok, attn)
    with torch.no_grad():
        single = torch.cat([bs.sequence_logps(bs.forward(model, bs.collate([e], tok.pad_token_id)),
                                              bs.collate([e], tok.pad_token_id)["labels"]) for e in examples])
        assert len({len(e["input_ids"]) for e in examples}) > 1  # the batch really is padded
        for side in ("left", "right"):
            batch = bs.collate(examples, tok.pad_token_id, side)
            got = bs.sequence_logps(bs.forward(model, batch), batch["labels"])
            assert torch.allclose(got, single, atol=1e-4), side
            # whatever token ids sit at padded positions, nothing changes
            junk = batch["input_ids"].clone()
            pad = batch["attention_mask"] == 0
            junk[pad] = torch.randint(4, len(tok), (int(pad.sum()),))
            got2 = bs.sequence_logps(bs.forward(model, dict(batch, input_ids=junk)), batch["labels"])
            assert torch.allclose(got2, single, atol=1e-4), side


def test_score_counts(tok, examples):
    """score() on a real tiny model: summed log-prob as a plain per-example forward."""
    model = tiny_model(tok)
    s = bs.score(model, tok, examples, batch_size=4)
    with torch.no_grad():
        for i, e in enumerate(examples):
            logits = model(input_ids=torch.tensor([e["input_ids"]])).logits[0]
            ans = range(e["prompt_len"], len(e["input_ids"]))
            lp = sum(torch.log_softmax(logits[t - 1], -1)[e["input_ids"][t]].item() for t in ans)
            assert s["n_tokens"][i] == len(ans)
            assert abs(s["logp"][i].item() - lp) < 1e-4


class ScriptedLogits(torch.nn.Module):
    """Stands in for a causal LM whose greedy next token after each prefix is scripted: logits are
    5 * onehot(prediction), so log-probs are known in closed form."""

    def __init__(self, preds, vocab):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.preds, self.vocab = preds, vocab

    def forward(self, input_ids, attention_mask, position_ids):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for b in range(input_ids.shape[0]):
            n = int(attention_mask[b].sum())
            for t, y in enumerate(self.preds[tuple(input_ids[b, :n].tolist())]):
                logits[b, t, y] = 5.0
        return type("Out", (), dict(logits=logits))


def test_score_greedy_hits_and_suffix(tok):
    """eval.score_examples: n_correct counts answer tokens the argmax gets right; n_suffix the all-correct
    answer tail (ES); logp and n_tokens are bs.score's."""
    V, eos = 10, 3
    cases = [  # (prompt, answer, which answer tokens the model gets right, n_correct, n_suffix) by hand
        ([1, 2], [5, 6, 7, eos], [1, 1, 0, 1], 3, 1),
        ([1], [5, 6, eos], [1, 1, 1], 3, 3),
        ([1, 2, 4], [6, eos], [1, 0], 1, 0),
        ([1, 2], [7, 5, 6], [0, 1, 1], 2, 2),
        ([2, 4], [8, 9, 5, eos], [0, 0, 0, 0], 0, 0),
    ]
    preds, examples = {}, []
    for prompt, ans, ok, _, _ in cases:
        ids = prompt + ans
        # prediction at position t is for token t + 1; prompt positions predict 0 (never scored)
        preds[tuple(ids)] = [0] * (len(prompt) - 1) + [a if k else (a + 1) % V for a, k in zip(ans, ok)] + [0]
        examples.append(dict(input_ids=ids, labels=[-100] * len(prompt) + ans, prompt_len=len(prompt)))
    pad_tok = type("Tok", (), dict(pad_token_id=0))
    s = ev.score_examples(ScriptedLogits(preds, V), pad_tok, examples, batch_size=3)  # batches of 3, 2; padded
    plain = bs.score(ScriptedLogits(preds, V), pad_tok, examples, batch_size=3)  # the same log-probs, lengths
    assert torch.equal(plain["n_tokens"], s["n_tokens"]) and torch.allclose(plain["logp"], s["logp"])
    logz = math.log(math.exp(5) + V - 1)
    for i, (prompt, ans, ok, n_correct, n_suffix) in enumerate(cases):
        assert s["n_tokens"][i] == len(ans)
        assert s["n_correct"][i] == n_correct
        assert s["n_suffix"][i] == n_suffix, i
        assert abs(s["logp"][i].item() - sum(5 * k - logz for k in ok)) < 1e-4


# -----------------------------------------------------------------------------------------------------
# Objectives on hand-built numbers


def test_ga_is_sequence_logprob():
    logits, labels = hand_batch()
    manual = []
    for b in range(2):
        lp = torch.log_softmax(logits[b, :-1], -1)
        y = labels[b, 1:]
        keep = y != -100
        manual.append(lp[keep].gather(-1, y[keep].unsqueeze(-1)).sum())
    assert torch.allclose(bs.ga_loss(bs.sequence_logps(logits, labels)), torch.stack(manual).mean(), atol=1e-5)


def test_npo_values():
    for beta in (0.1, 0.5, 1.0):
        lp = torch.tensor([-3.0, -10.0, -0.5])
        assert abs(bs.npo_loss(lp, lp.clone(), beta).item() - 2 / beta * math.log(2)) < 1e-4
    assert abs(bs.npo_loss(torch.tensor([-4.0]), torch.tensor([-4.0])).item() - 20 * math.log(2)) < 1e-3
    # general values: (2/beta) mean log(1 + (pi / pi_o)^beta)
    pol, ref, beta = [-2.0, -7.0, -1.0], [-5.0, -6.0, -1.5], 0.3
    want = sum(2 / beta * math.log(1 + math.exp(p - r) ** beta) for p, r in zip(pol, ref)) / 3
    assert abs(bs.npo_loss(torch.tensor(pol), torch.tensor(ref), beta).item() - want) < 1e-4
    # minimising it pushes the policy log-prob down
    p = torch.tensor([-2.0], requires_grad=True)
    bs.npo_loss(p, torch.tensor([-2.0])).backward()
    assert p.grad.item() > 0


def dense_target(logits, labels, k, lam, temperature=1.0):
    """Eq. 5's t_i = lam * q_i + (1 - lam) * onehot(y_i) as a (B, T-1, V) tensor, q_i from bst_beliefs."""
    ids, q = bs.bst_beliefs(logits, k, temperature)
    t = torch.zeros(*ids.shape[:-1], logits.shape[-1]).scatter_add(-1, ids, lam * q)
    y = labels[:, 1:].clamp(min=0).unsqueeze(-1)
    return t.scatter_add(-1, y, torch.full_like(t[..., :1], 1 - lam))


def test_bst_zero_lambda_is_ga():
    logits, labels = hand_batch()
    ga = bs.ga_loss(bs.sequence_logps(logits, labels))
    assert torch.allclose(bs.bst_loss(logits, labels, k=3, lam=0.0), ga, atol=1e-5)
    assert not torch.allclose(bs.bst_loss(logits, labels, k=3, lam=0.5), ga, atol=1e-3)


def test_bst_beliefs_are_the_renormalised_topk():
    logits, labels = hand_batch()
    x = logits.clone().requires_grad_(True)
    ids, q = bs.bst_beliefs(x, k=3)
    assert torch.equal(ids, logits[:, :-1].topk(3, -1).indices)  # shifted: position t predicts t+1
    assert torch.allclose(q, torch.softmax(logits[:, :-1].topk(3, -1).values, -1))
    assert torch.allclose(q.sum(-1), torch.ones(2, 4))
    assert not q.requires_grad  # stop-gradient
    ids, q = bs.bst_beliefs(logits, k=50)  # k above the vocabulary (6): all of it
    assert ids.shape[-1] == 6 and torch.allclose(q, torch.softmax(logits[:, :-1], -1).sort(-1, True).values)


def test_bst_target_sums_to_one_on_topk_and_label():
    logits, labels = hand_batch()
    k, lam = 2, 0.3
    t = dense_target(logits, labels, k, lam)  # (B, T-1, V)
    assert torch.allclose(t.sum(-1), torch.ones(2, 4), atol=1e-6)
    assert (t >= 0).all()
    for b in range(2):
        for i in range(4):
            y = labels[b, i + 1].item()
            if y == -100:
                continue
            allowed = set(logits[b, i].topk(k).indices.tolist()) | {y}
            nonzero = set(torch.nonzero(t[b, i]).flatten().tolist())
            assert nonzero <= allowed
            assert y in nonzero
            assert t[b, i, y].item() >= 1 - lam - 1e-6


def test_bst_value_by_hand_k2():
    # one sequence, V = 4; prompt token, then answer labels 2 and 0
    logits = torch.tensor([[[1.0, 3.0, 0.5, 2.0], [0.0, -1.0, 2.5, 1.5], [0.0, 0.0, 0.0, 0.0]]])
    labels = torch.tensor([[-100, 2, 0]])
    lam, k = 0.4, 2
    total = 0.0
    for row, y in (([1.0, 3.0, 0.5, 2.0], 2), ([0.0, -1.0, 2.5, 1.5], 0)):
        logz = math.log(sum(math.exp(v) for v in row))
        logp = [v - logz for v in row]
        top = sorted(range(4), key=lambda v: -row[v])[:2]
        z = sum(math.exp(row[v]) for v in top)
        t = [0.0] * 4
        for v in top:
            t[v] += lam * math.exp(row[v]) / z
        t[y] += 1 - lam
        total += sum(tv * lv for tv, lv in zip(t, logp))
    assert abs(bs.bst_loss(logits, labels, k=k, lam=lam).item() - total) < 1e-5


def test_bst_ignores_minus_inf_logits_off_the_answer():
    # a model that never emits token 0 (logit -inf): the prompt and padding positions, where the label is -100
    # (looked up as id 0, then masked), must contribute 0 to the value and the gradient, not NaN
    logits, labels = hand_batch()
    logits[..., 0] = float("-inf")
    labels = labels.masked_fill(labels == 0, 1)  # no answer token is the banned one
    x = logits.clone().requires_grad_(True)
    loss = bs.bst_loss(x, labels, k=3, lam=0.5)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    finite = logits.clone()
    finite[..., 0] = -1e4  # the same model with a very low, finite logit: the same loss
    assert torch.allclose(loss, bs.bst_loss(finite, labels, k=3, lam=0.5), atol=1e-5)


def test_bst_temperature():
    logits = torch.tensor([[[2.0, 1.0, -1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    labels = torch.tensor([[-100, 3]])
    lam = 0.5
    for temp in (0.5, 1.0, 4.0):
        t = dense_target(logits, labels, 2, lam, temp)[0, 0]
        z = math.exp(2 / temp) + math.exp(1 / temp)
        assert abs(t[0].item() - lam * math.exp(2 / temp) / z) < 1e-6
        assert abs(t[1].item() - lam * math.exp(1 / temp) / z) < 1e-6
        assert abs(t[3].item() - (1 - lam)) < 1e-6
    # higher temperature flattens q
    q = lambda temp: dense_target(logits, labels, 2, lam, temp)[0, 0, :2]
    assert (q(0.5)[0] - q(0.5)[1]) > (q(1.0)[0] - q(1.0)[1]) > (q(4.0)[0] - q(4.0)[1]) > 0


def test_bst_stop_gradient():
    logits, labels = hand_batch()
    k, lam = 3, 0.5
    x = logits.clone().requires_grad_(True)
    bs.bst_loss(x, labels, k, lam).backward()
    # the same loss with the target a constant
    t = dense_target(logits, labels, k, lam)
    y = logits.clone().requires_grad_(True)
    mask = (labels[:, 1:] != -100).float()
    ((t * torch.log_softmax(y[:, :-1], -1)).sum(-1) * mask).sum(-1).mean().backward()
    assert torch.allclose(x.grad, y.grad, atol=1e-6)
    # a version whose q is not detached has a different gradient, so this comparison can fail
    z = logits.clone().requires_grad_(True)
    top, top_idx = z[:, :-1].topk(k, -1)
    t_live = torch.zeros(2, 4, 6).scatter_add(-1, top_idx, lam * torch.softmax(top, -1))
    t_live = t_live.scatter_add(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1), torch.full((2, 4, 1), 1 - lam))
    ((t_live * torch.log_softmax(z[:, :-1], -1)).sum(-1) * mask).sum(-1).mean().backward()
    assert not torch.allclose(x.grad, z.grad, atol=1e-4)


def test_bss_mixes_base_and_beliefs():
    base, belief = torch.tensor(-3.0), torch.tensor(-7.0)
    assert bs.bss_loss(base, belief, 0.0).item() == -3.0
    assert bs.bss_loss(base, belief, 1.0).item() == -7.0
    assert abs(bs.bss_loss(base, belief, 0.25).item() - (0.75 * -3 + 0.25 * -7)) < 1e-6


def test_kl_retain_loss():
    logits, labels = hand_batch()
    assert abs(bs.kl_retain_loss(logits, logits.clone(), labels).item()) < 1e-6
    g = torch.Generator().manual_seed(1)
    other = logits + torch.randn(logits.shape, generator=g)
    kl = bs.kl_retain_loss(other, logits, labels)  # policy = other, reference = logits
    # KL(pi_o || pi_theta) summed over answer positions, mean over sequences, by hand
    want = 0.0
    for b in range(2):
        for t in range(4):
            if labels[b, t + 1] != -100:
                p_o = torch.softmax(logits[b, t].double(), -1)
                p = torch.softmax(other[b, t].double(), -1)
                want += (p_o * (p_o.log() - p.log())).sum().item()
    assert kl.item() > 0 and abs(kl.item() - want / 2) < 1e-4
    # prompt and padding positions are ignored, in either model's logits
    unused = torch.ones(2, 5, dtype=torch.bool)
    unused[:, :-1] = labels[:, 1:] == -100
    other2, ref2 = other.clone(), logits.clone()
    other2[unused] += torch.randn(int(unused.sum()), 6) * 10
    ref2[unused] -= torch.randn(int(unused.sum()), 6) * 10
    assert torch.allclose(bs.kl_retain_loss(other2, ref2, labels), kl, atol=1e-5)


# -----------------------------------------------------------------------------------------------------
# Prompt format and encoding


def test_encode_plain_format(tok, rows):
    r = rows[5]
    e = bs.encode(tok, r["question"], r["answer"])
    assert bs.format_prompt(tok, r["question"]) == f"Question: {r['question']}\nAnswer:"
    prompt = tok(f"Question: {r['question']}\nAnswer:")["input_ids"]
    answer = tok(" " + r["answer"], add_special_tokens=False)["input_ids"]
    assert e["prompt_len"] == len(prompt)
    assert e["input_ids"] == prompt + answer + [tok.eos_token_id]
    assert e["labels"][:e["prompt_len"]] == [-100] * len(prompt)
    assert e["labels"][e["prompt_len"]:] == e["input_ids"][e["prompt_len"]:]
    assert -100 not in e["labels"][e["prompt_len"]:]
    assert e["input_ids"][-1] == tok.eos_token_id and e["input_ids"].count(tok.eos_token_id) == 1


def test_encode_uses_chat_template(tok, rows):
    chat = copy.deepcopy(tok)
    chat.chat_template = ("{% for m in messages %}<s> User : {{ m['content'] }}{% endfor %}"
                          "{% if add_generation_prompt %} Answer :{% endif %}")
    q, a = rows[7]["question"], rows[7]["answer"]
    rendered = bs.format_prompt(chat, q)
    assert rendered == f"<s> User : {q} Answer :"
    e = bs.encode(chat, q, a)
    prompt = chat(rendered, add_special_tokens=False)["input_ids"]
    assert e["prompt_len"] == len(prompt) and e["input_ids"][:len(prompt)] == prompt
    assert e["input_ids"][len(prompt):] == chat(a, add_special_tokens=False)["input_ids"] + [chat.eos_token_id]
    assert e["labels"] == [-100] * len(prompt) + e["input_ids"][len(prompt):]
    assert bs.format_prompt(tok, q) != rendered  # the original tokenizer is untouched


# -----------------------------------------------------------------------------------------------------
# Generation and belief sampling


class ScriptedLM(torch.nn.Module):
    """Stands in for a causal LM: generate() appends scripted continuations (n per prompt, in order)."""

    def __init__(self, scripts):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.scripts, self.calls = scripts, []

    def generate(self, input_ids, generation_config, attention_mask):
        self.calls.append((input_ids.clone(), attention_mask.clone(), generation_config))
        n, rows = generation_config.num_return_sequences, []
        for b in range(input_ids.shape[0]):
            for j in range(n):
                rows.append(input_ids[b].tolist() + self.scripts[b][j])
        return torch.tensor(rows)


def test_generate_cuts_after_eos_and_groups_per_prompt(tok):
    eos, pad = tok.eos_token_id, tok.pad_token_id
    scripts = [[[10, 11, eos, 12, 13], [14, eos, pad, pad, pad]],
               [[15, 16, 17, 18, 19], [eos, 20, 21, 22, 23]]]
    lm = ScriptedLM(scripts)
    out = bs.generate(lm, tok, [[5, 6, 7], [8]], max_new_tokens=5, n=2, do_sample=True)
    assert out == [[[10, 11, eos], [14, eos]], [[15, 16, 17, 18, 19], [eos]]]
    ids, mask, cfg = lm.calls[0]
    assert ids.tolist() == [[5, 6, 7], [pad, pad, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]  # left pad
    assert cfg.max_new_tokens == 5 and cfg.eos_token_id == eos


def test_greedy_generation_batched_equals_single(tok, examples):
    """Left padding, position ids and the KV cache: a batched greedy answer equals the one-prompt answer."""
    model = tiny_model(tok)
    prompts = [e["input_ids"][:e["prompt_len"]] for e in examples]
    batched = bs.generate(model, tok, prompts, 6, batch_size=len(prompts))
    for p, b in zip(prompts, batched):
        assert bs.generate(model, tok, [p], 6)[0] == b
        assert len(b[0]) <= 6


def belief_args(*extra):
    return bs.get_args(["--method", "bs_s", "--bss_n", "3", "--seed", "0", *extra])


def test_sample_beliefs_structure_and_length(tok, model, examples):
    args = belief_args("--bss_max_new_tokens", "4")
    beliefs = bs.sample_beliefs(model, tok, examples, args)
    assert len(beliefs) == len(examples)
    lengths = []
    for e, bl in zip(examples, beliefs):
        assert len(bl) == 3  # its own N
        prompt = e["input_ids"][:e["prompt_len"]]
        for b in bl:
            gen = b["input_ids"][len(prompt):]
            assert b["input_ids"][:len(prompt)] == prompt and b["prompt_len"] == len(prompt)
            assert b["labels"] == [-100] * len(prompt) + gen  # labels cover the generated tokens only
            assert 1 <= len(gen) <= 4
            if tok.eos_token_id in gen:
                assert gen.index(tok.eos_token_id) == len(gen) - 1
            lengths.append(len(gen))
    assert max(lengths) == 4  # the limit is exactly max_new_tokens (an untrained model rarely says EOS)
    gens = [tuple(tuple(b["input_ids"][b["prompt_len"]:]) for b in bl) for bl in beliefs]
    assert len(set(gens)) == len(examples)  # not one example's samples reused for all
    # default: the longest forget answer (EOS included)
    longest = max(len(e["input_ids"]) - e["prompt_len"] for e in examples)
    beliefs = bs.sample_beliefs(model, tok, examples, belief_args())
    assert max(len(b["input_ids"]) - b["prompt_len"] for bl in beliefs for b in bl) == longest


def test_sample_beliefs_seeded(tok, model, examples):
    ids = lambda bl: [[b["input_ids"] for b in x] for x in bl]
    args = belief_args("--bss_max_new_tokens", "5")
    a = ids(bs.sample_beliefs(model, tok, examples, args, sampling_round=0))
    torch.manual_seed(1234)  # the global RNG state before the call does not matter
    assert ids(bs.sample_beliefs(model, tok, examples, args, sampling_round=0)) == a
    assert ids(bs.sample_beliefs(model, tok, examples, args, sampling_round=1)) != a
    other_seed = belief_args("--bss_max_new_tokens", "5", "--seed", "1")
    assert ids(bs.sample_beliefs(model, tok, examples, other_seed)) != a
    # the N samples of one prompt are not copies of each other
    assert any(len({tuple(s) for s in x}) > 1 for x in a)
    # and the caller's random stream is left where it was
    torch.manual_seed(99)
    expected = torch.rand(4)
    torch.manual_seed(99)
    bs.sample_beliefs(model, tok, examples, args)
    assert torch.equal(torch.rand(4), expected)


def test_bss_keep_most_confident(tok, examples):
    model = tiny_model(tok, seed=3)
    every = bs.sample_beliefs(model, tok, examples, belief_args("--bss_n", "5", "--bss_max_new_tokens", "5"))
    kept = bs.sample_beliefs(model, tok, examples, belief_args("--bss_n", "5", "--bss_max_new_tokens", "5",
                                                               "--bss_keep", "2"))
    for all5, two in zip(every, kept):
        assert len(all5) == 5 and len(two) == 2
        s = bs.score(model, tok, all5)
        conf = (s["logp"] / s["n_tokens"]).tolist()
        seqs = [b["input_ids"] for b in all5]
        kept_conf = []
        for b in two:
            assert b["input_ids"] in seqs
            kept_conf.append(conf[seqs.index(b["input_ids"])])
        dropped = sorted(conf)[:3]
        assert min(kept_conf) >= max(dropped) - 1e-5
        assert sorted(kept_conf, reverse=True) == pytest.approx(sorted(conf, reverse=True)[:2], abs=1e-5)


# -----------------------------------------------------------------------------------------------------
# Toy data and TOFU


def test_toy_schema_and_facts(rows):
    assert len(rows) == 80 * len(toy_world.FACTS)
    for r in rows:
        assert isinstance(r["question"], str) and isinstance(r["answer"], str)
        assert isinstance(r["paraphrased_answer"], str) and isinstance(r["perturbed_answer"], list)
        assert len(r["perturbed_answer"]) >= 1 and all(isinstance(p, str) for p in r["perturbed_answer"])
        assert r["fact"] in r["answer"] and r["fact"] in r["paraphrased_answer"]
        assert all(r["fact"] in a for a in r["train_answers"]) and len(r["train_answers"]) > 1
        assert not any(r["fact"] in p for p in r["perturbed_answer"])
        assert r["paraphrased_answer"] not in r["train_answers"] and r["answer"] in r["train_answers"]
    assert toy_world.make_toy_data(seed=0) == rows
    assert toy_world.make_toy_data(seed=1) != rows


@pytest.mark.parametrize("split,n_authors", [("forget01", 1), ("forget05", 4), ("forget10", 8)])
def test_toy_splits(rows, split, n_authors):
    forget, retain = toy_world.split_toy(rows, split)
    per_author = len(toy_world.FACTS)
    assert len(forget) == n_authors * per_author and len(retain) == len(rows) - len(forget)
    fa, ra = {r["author"] for r in forget}, {r["author"] for r in retain}
    assert not fa & ra and fa | ra == {r["author"] for r in rows}
    assert fa == set(range(80 - n_authors, 80))  # the last authors, as in TOFU
    assert not {r["question"] for r in forget} & {r["question"] for r in retain}
    assert sorted(map(json.dumps, forget + retain)) == sorted(map(json.dumps, rows))


def test_read_rows_jsonl_and_array(tmp_path):
    data = [dict(question="q1", answer="a1"), dict(question="q2", answer="a2")]
    (tmp_path / "lines.json").write_text("\n".join(json.dumps(d) for d in data) + "\n\n")
    (tmp_path / "array.json").write_text("  \n" + json.dumps(data, indent=2))
    assert bs.read_rows(str(tmp_path / "lines.json")) == data
    assert bs.read_rows(str(tmp_path / "array.json")) == data


def test_tofu_files(tofu_dir):
    holdout = bs.read_rows(os.path.join(tofu_dir, "holdout01.json"))  # a JSON array
    assert len(holdout) == 40 and {"question", "answer"} <= set(holdout[0])
    forget = bs.load_tofu("forget10", tofu_dir)  # JSON Lines
    retain = bs.load_tofu("retain90", tofu_dir)
    assert len(forget) == 400 and len(retain) == 3600
    assert not {r["question"] for r in forget} & {r["question"] for r in retain}
    for split, n_forget, n_retain in (("forget10", 400, 3600), ("forget05", 200, 3800), ("forget01", 40, 3960)):
        f, r = bs.load_data(bs.get_args(["--data", "tofu", "--data_dir", tofu_dir, "--forget_split", split]))
        assert (len(f), len(r)) == (n_forget, n_retain)


# -----------------------------------------------------------------------------------------------------
# Training on the cached toy model


def toy_examples(tok, split="forget10"):
    forget, retain = toy_world.split_toy(toy_world.make_toy_data(), split)
    return bs.encode_rows(tok, forget), bs.encode_rows(tok, retain)


@pytest.fixture(scope="module")
def toy(toy_cache):
    """The cached full toy model (never modified: tests train deep copies), its tokenizer and examples."""
    model, tok = bs.load_model(toy_cache[1], CPU)
    forget_ex, retain_ex = toy_examples(tok)
    return model, tok, forget_ex, retain_ex


def train_args(method, *extra):
    # lr 1e-3, 2 epochs (8 steps), no warmup: enough to move the toy model clearly; --sample_every keeps it quiet
    return bs.get_args(["--method", method, "--lr", "1e-3", "--epochs", "2", "--warmup_epochs", "0",
                        "--seed", "0", "--sample_every", "1000", *extra])


def retain_per_token(model, tok, retain_ex):
    s = bs.score(model, tok, retain_ex[:256])
    return (s["logp"].sum() / s["n_tokens"].sum()).item()


def run_train(toy, method, *extra, tmp_path=None, n_forget=None):
    model0, tok, forget_ex, retain_ex = toy
    model = copy.deepcopy(model0)
    args = train_args(method, *extra)
    forget_ex = copy.deepcopy(forget_ex[:n_forget])  # (bs.train stores NPO's reference log-probs on them)
    if tmp_path:
        os.makedirs(tmp_path, exist_ok=True)
    log = str(tmp_path / f"{method}.jsonl") if tmp_path else None
    bs.train(model, tok, forget_ex, retain_ex, args, log_path=log)
    recs = [json.loads(l) for l in open(log)] if log else None
    return model, recs


# Retain tolerance, from measured numbers (toy model toy-v2, these settings, AMD EPYC, 1 thread): the retain mean
# answer-token log-prob starts at -0.102 nats; with the retain term it drops by 0.034 (bs_s) to 0.041 (ga)
# nats/token, with --alpha 0 (GA) by 0.101. A drop above 0.08 nats/token means the retain term is missing or
# broken. The forget summed log-prob (64 answers) starts at -66 and drops by 144 (bs_s) to 191 (ga) nats; we
# ask for 50.
RETAIN_TOL = 0.08


@pytest.mark.parametrize("method", ["ga", "npo", "bs_t", "bs_s"])
def test_unlearning_methods(toy, method, tmp_path):
    model0, tok, forget_ex, retain_ex = toy
    f0 = bs.score(model0, tok, forget_ex)["logp"].sum().item()
    r0 = retain_per_token(model0, tok, retain_ex)
    model, recs = run_train(toy, method, tmp_path=tmp_path)
    assert len(recs) == 8
    assert all(math.isfinite(r["forget"]) and math.isfinite(r["retain"]) for r in recs)
    assert all(r["retain"] > 0 for r in recs)  # NLL on a retain batch, every step
    before, after = dict(model0.named_parameters()), dict(model.named_parameters())
    unchanged = [n for n, p in after.items() if torch.equal(p, before[n])]
    assert not unchanged
    f1 = bs.score(model, tok, forget_ex)["logp"].sum().item()
    r1 = retain_per_token(model, tok, retain_ex)
    assert f1 < f0 - 50, (f0, f1)  # forgetting
    assert r1 > r0 - RETAIN_TOL, (r0, r1)
    if method == "npo":  # at step 1 the policy is the reference: (2 / beta) ln 2
        assert abs(recs[0]["forget"] - 20 * math.log(2)) < 1e-3


def test_alpha_zero_is_pure_forgetting(toy, tmp_path, monkeypatch):
    model0, tok, forget_ex, retain_ex = toy
    calls = []
    real_nll = bs.nll_loss

    def counting_nll(*args):
        calls.append(args)
        return real_nll(*args)
    monkeypatch.setattr(bs, "nll_loss", counting_nll)
    model, recs = run_train(toy, "ga", "--alpha", "0", tmp_path=tmp_path)
    assert not calls and all(r["retain"] == 0 for r in recs)  # the retain term is not even computed
    # and the stated tolerance catches the missing retain term
    assert retain_per_token(model, tok, retain_ex) < retain_per_token(model0, tok, retain_ex) - RETAIN_TOL


def test_kl_retain_in_training(toy, tmp_path):
    model0, tok, forget_ex, retain_ex = toy
    model = copy.deepcopy(model0)
    ref = copy.deepcopy(model0).eval().requires_grad_(False)
    args = train_args("ga", "--retain_loss", "kl", "--epochs", "1")
    bs.train(model, tok, forget_ex, retain_ex, args, ref_model=ref, log_path=str(tmp_path / "log.jsonl"))
    recs = [json.loads(l) for l in open(tmp_path / "log.jsonl")]
    assert abs(recs[0]["retain"]) < 1e-5  # KL to itself at step 1
    assert recs[-1]["retain"] > 1e-3


def test_bss_zero_lambda_equals_base_in_training(toy):
    a, _ = run_train(toy, "bs_t", "--epochs", "0.5")
    b, _ = run_train(toy, "bs_s", "--epochs", "0.5", "--bss_lambda", "0")
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6), n


def test_bss_chunks_do_not_change_the_loss(toy, tmp_path):
    # 16 forget examples x 3 beliefs = 48 per step: one chunk vs 7 unequal ones (checkpointed) must give the same
    # terms and the same gradient norms, step after step
    _, one = run_train(toy, "bs_s", "--epochs", "0.5", "--bss_chunk", "1000", tmp_path=tmp_path / "a")
    _, many = run_train(toy, "bs_s", "--epochs", "0.5", "--bss_chunk", "7", tmp_path=tmp_path / "b")
    for key in ("forget", "retain", "grad_norm"):
        assert [r[key] for r in one] == pytest.approx([r[key] for r in many], rel=1e-4), key


def test_belief_chunks_keep_no_activations_for_the_backward(toy):
    # memory flat in N: past --bss_chunk beliefs, belief_term's graph holds (almost) nothing of the chunks'
    # forwards (checkpointing recomputes them in the backward); in one chunk it holds all their activations
    model0, tok, forget_ex, _ = toy
    model = copy.deepcopy(model0).train()
    beliefs = [dict(e) for e in forget_ex[:48]]  # (any answers will do: the targets themselves)

    def saved_numbers(chunk):
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda x: sizes.append(x.numel()) or x, lambda x: x):
            value = bs.belief_term(model, tok, beliefs, train_args("bs_s", "--bss_chunk", str(chunk)))
        return sum(sizes), value
    whole, one = saved_numbers(1000)
    chunked, many = saved_numbers(7)
    assert many.item() == pytest.approx(one.item(), rel=1e-5)
    assert whole > 1e6 and chunked < 1e-3 * whole, (whole, chunked)


@pytest.mark.parametrize("base", ["bs_t", "npo", "ga"])
def test_micro_step_leaves_the_gradient_of_eq7(toy, base):
    """BS-S's micro-step, beliefs in chunks of 5 (5, 5, 2: unequal), against its objective written out here:
    gamma * Eq. 7 + alpha * the retain NLL, the belief term as the equation has it, (1/N) sum_j of the base loss
    on every example's j-th belief, and one backward (over --grad_accum). No factor is 1, so a weight missed or
    doubled shows."""
    model0, tok, forget_ex, retain_ex = toy
    args = train_args("bs_s", "--bss_base", base, "--bss_chunk", "5", "--grad_accum", "2", "--gamma", "0.5",
                      "--alpha", "2", "--bss_lambda", "0.3")
    targets, retain = copy.deepcopy(forget_ex[:4]), retain_ex[:4]
    per_example = bs.sample_beliefs(model0, tok, targets, args)
    beliefs = [b for bb in per_example for b in bb]
    assert len(beliefs) == 12
    if bs.needs_ref_logps(args):
        bs.attach_ref_logps(model0, tok, targets + beliefs)
    stepped, by_hand = copy.deepcopy(model0), copy.deepcopy(model0)
    L_forget, L_retain = bs.micro_step(stepped, tok, targets, beliefs, retain, args)

    def base_loss(examples):
        return bs.forget_loss(by_hand, bs.make_batch(tok, examples, by_hand), base, args)
    N, lam = args.bss_n, args.bss_lambda
    eq7 = (1 - lam) * base_loss(targets) + lam * sum(base_loss([bb[j] for bb in per_example]) for j in range(N)) / N
    retain_batch = bs.make_batch(tok, retain, by_hand)
    nll = bs.nll_loss(bs.forward(by_hand, retain_batch), retain_batch["labels"])
    ((args.gamma * eq7 + args.alpha * nll) / args.grad_accum).backward()
    assert L_forget.item() == pytest.approx(eq7.item(), rel=1e-5)
    assert L_retain.item() == pytest.approx(nll.item(), rel=1e-6)
    scale = max(p.grad.abs().max().item() for p in by_hand.parameters())
    for (name, p), q in zip(stepped.named_parameters(), by_hand.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=0, atol=1e-5 * scale), name


class RecordRounds:
    """Stands in for bs.sample_beliefs: notes which round is asked for, then samples for real."""

    def __init__(self):
        self.real, self.rounds = bs.sample_beliefs, []

    def __call__(self, model, tok, forget_examples, args, sampling_round=0):
        self.rounds.append(sampling_round)
        return self.real(model, tok, forget_examples, args, sampling_round)


def test_bss_beliefs_sampled_once_per_round(toy, monkeypatch):
    recorder = RecordRounds()
    rounds = recorder.rounds
    monkeypatch.setattr(bs, "sample_beliefs", recorder)
    # 16 forget examples = 1 step per epoch; 2 epochs
    run_train(toy, "bs_s", "--epochs", "2", n_forget=16)
    assert rounds == [0]  # off-policy: once, cached per example
    rounds.clear()
    run_train(toy, "bs_s", "--epochs", "2", "--bss_regen", "1", n_forget=16)
    assert rounds == [0, 1]  # on-policy: resampled every epoch


def test_bss_given_beliefs_replace_the_first_round(toy, monkeypatch):
    # given the beliefs train would sample itself, train must not sample and must end at the same weights
    # (in bf16 too, where AdamW's stochastic rounding draws from the global RNG: sampling leaves it alone)
    model0, tok, forget_ex, retain_ex = toy
    args = train_args("bs_s", "--epochs", "0.5")
    sampled = bs.sample_beliefs(model0, tok, forget_ex, args, 0)
    assert any(b["input_ids"] != e["input_ids"] for bel, e in zip(sampled, forget_ex) for b in bel)
    recorder = RecordRounds()
    rounds = recorder.rounds
    monkeypatch.setattr(bs, "sample_beliefs", recorder)
    itself, given = copy.deepcopy(model0), copy.deepcopy(model0)
    bs.train(itself, tok, forget_ex, retain_ex, args)
    assert rounds == [0]
    bs.train(given, tok, forget_ex, retain_ex, args, beliefs=sampled)
    assert rounds == [0]  # nothing more sampled
    for (n, p), q in zip(itself.named_parameters(), given.parameters()):
        assert torch.equal(p, q), n
    itself, given = copy.deepcopy(model0).to(torch.bfloat16), copy.deepcopy(model0).to(torch.bfloat16)
    sampled16 = recorder.real(itself, tok, forget_ex, args, 0)
    bs.train(itself, tok, forget_ex, retain_ex, args)
    bs.train(given, tok, forget_ex, retain_ex, args, beliefs=sampled16)
    assert rounds == [0, 0]
    for (n, p), q in zip(itself.named_parameters(), given.parameters()):
        assert torch.equal(p, q), n
    assert not torch.equal(itself.model.embed_tokens.weight, model0.model.embed_tokens.weight.bfloat16())
    bs.train(copy.deepcopy(model0), tok, forget_ex[:16], retain_ex, train_args("bs_s", "--bss_regen", "1"),
             beliefs=[bel[:1] for bel in sampled[:16]])
    assert rounds == [0, 0, 1]  # 2 epochs, resampled every epoch: only round 1 is sampled


# -----------------------------------------------------------------------------------------------------
# bf16 weights: AdamW with stochastic rounding (bf16_adamw.py; its unit tests are in test_bf16_adamw.py)


def test_bf16_training_forgets_like_fp32(toy_cache):
    # the toy model in bf16 must forget as much as in fp32 (train picks BF16AdamW for bf16 weights), and
    # with --bf16_rounding nearest (torch's AdamW) clearly less: measured 0.72, 0.72 and 0.48 nats
    drops = {}
    for dtype, rounding in (("float32", "stochastic"), ("bfloat16", "stochastic"), ("bfloat16", "nearest")):
        model, tok = bs.load_model(toy_cache[1], CPU, dtype)
        forget_ex, retain_ex = toy_examples(tok)
        f0 = bs.score(model, tok, forget_ex)["logp"].mean().item()
        args = train_args("ga", "--lr", "3e-4", "--epochs", "3", "--bf16_rounding", rounding)
        bs.train(model, tok, forget_ex, retain_ex, args)
        assert next(model.parameters()).dtype == getattr(torch, dtype)
        drops[dtype, rounding] = f0 - bs.score(model, tok, forget_ex)["logp"].mean().item()
    fp32 = drops["float32", "stochastic"]
    assert fp32 > 0.5, drops
    assert abs(drops["bfloat16", "stochastic"] - fp32) < 0.15 * fp32, drops
    assert drops["bfloat16", "nearest"] < 0.8 * fp32, drops


def test_finetune_raises_forget_logprob(toy_cache):
    model, tok = bs.load_model(toy_cache[2], CPU)  # the retain-only model has never seen the forget set
    forget_ex, _ = toy_examples(tok)
    f0 = bs.score(model, tok, forget_ex)["logp"].sum().item()
    bs.train(model, tok, forget_ex, [], train_args("finetune", "--alpha", "0"))
    f1 = bs.score(model, tok, forget_ex)["logp"].sum().item()
    assert f1 > f0 + 50, (f0, f1)


@pytest.mark.parametrize("method", ["ga", "bs_s"])
def test_train_refuses_no_forget_examples(toy, method):
    # (BS-S would otherwise fail inside its sampling, with a traceback)
    model, tok, _, retain_ex = toy
    one_line_error(lambda: bs.train(copy.deepcopy(model), tok, [], retain_ex, train_args(method)),
                   "no forget examples")


@pytest.mark.parametrize("case", ["empty", "unequal", "all_empty", "too_few"])
def test_bss_refuses_beliefs_that_are_not_n_per_example(toy, case):
    # Eq. 7's belief term is (1/N) sum_j over every example's N beliefs: a forget example without beliefs would
    # silently drop it for its batch, and unequal numbers weigh examples unequally (and differently on K ranks)
    model, tok, forget_ex, retain_ex = toy
    beliefs = [[dict(forget_ex[i]), dict(forget_ex[i])] for i in range(len(forget_ex))]
    if case == "empty":
        beliefs[3] = []
    elif case == "unequal":
        beliefs[3] = beliefs[3][:1]
    elif case == "all_empty":
        beliefs = [[] for _ in forget_ex]
    else:
        beliefs = beliefs[:-1]
    one_line_error(lambda: bs.train(copy.deepcopy(model), tok, forget_ex, retain_ex, train_args("bs_s"),
                                    beliefs=beliefs), "belief")


def test_finetune_has_no_retain_term(toy_cache):
    # finetune is plain NLL on the data it is given: retain examples (and a KL flag) are not a retain term,
    # so the weights equal those of the same run without them, and no reference model is needed
    start, tok = bs.load_model(toy_cache[2], CPU)
    forget_ex, retain_ex = toy_examples(tok)
    args = ["--epochs", "0.5", "--retain_loss", "kl"]
    with_retain, without = copy.deepcopy(start), copy.deepcopy(start)
    bs.train(with_retain, tok, forget_ex, retain_ex, train_args("finetune", *args))
    bs.train(without, tok, forget_ex, [], train_args("finetune", *args))
    for (k, a), b in zip(with_retain.state_dict().items(), without.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_loss_stops(toy, monkeypatch, bad):
    def broken_loss(model, batch, method, args):
        return bs.forward(model, batch).sum() * 0 + bad
    monkeypatch.setattr(bs, "forget_loss", broken_loss)
    with pytest.raises(SystemExit) as e:
        run_train(toy, "ga", "--epochs", "0.25")
    msg = str(e.value.code)
    assert msg.startswith("error:") and "\n" not in msg and str(bad) in msg and "step 1" in msg


# -----------------------------------------------------------------------------------------------------
# Bad input: one line starting with "error:", nothing written


def expect_error(argv, *words):
    with pytest.raises(SystemExit) as e:
        bs.main(argv)
    msg = e.value.code
    assert isinstance(msg, str) and msg.startswith("error:") and "\n" not in msg, msg
    text = msg
    for a in sorted(argv, key=len, reverse=True):
        if os.sep in a:
            text = text.replace(a, "").replace(os.path.abspath(a), "")
    for w in words:
        assert w in text, (w, msg)
    return msg


@pytest.fixture
def fake_model_dir(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    return d


def write_split(d, name, rows):
    d.mkdir(exist_ok=True)
    (d / f"{name}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_unknown_method(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        bs.get_args(["--method", "gradient_descent"])
    assert str(e.value.code).startswith("error:") and "gradient_descent" in str(e.value.code)
    expect_error(["--method", "gradient_descent", "--out_dir", str(out)], "--method", "invalid choice", "gradient_descent", "bs_s")
    assert not out.exists()


def test_missing_data_file(tmp_path, fake_model_dir):
    out = tmp_path / "out"
    expect_error(["--data", "tofu", "--data_dir", "/nonexistent", "--model", str(fake_model_dir),
                  "--out_dir", str(out), "--method", "ga"], "not found", "forget10")
    assert not out.exists()


def test_file_without_answer(tmp_path, fake_model_dir):
    data, out = tmp_path / "data", tmp_path / "out"
    write_split(data, "forget10", [dict(question="q?", reply="a.")] * 3)
    write_split(data, "retain90", [dict(question="q?", answer="a.")] * 3)
    expect_error(["--data", "tofu", "--data_dir", str(data), "--model", str(fake_model_dir),
                  "--out_dir", str(out)], "answer", "forget10")
    assert not out.exists()


@pytest.mark.parametrize("content", ["", "[]", "\n\n"])
def test_empty_forget_split(tmp_path, fake_model_dir, content):
    data, out = tmp_path / "data", tmp_path / "out"
    write_split(data, "retain90", [dict(question="q?", answer="a.")] * 3)
    (data / "forget10.json").write_text(content)
    expect_error(["--data", "tofu", "--data_dir", str(data), "--model", str(fake_model_dir),
                  "--out_dir", str(out)], "empty", "forget10")
    assert not out.exists()


def test_out_dir_is_model_dir(fake_model_dir):
    before = sorted(os.listdir(fake_model_dir))
    for out in (str(fake_model_dir), str(fake_model_dir) + "/", str(fake_model_dir / ".." / "model")):
        for extra in ([], ["--overwrite"]):
            expect_error(["--model", str(fake_model_dir), "--out_dir", out, "--method", "ga", *extra],
                         "out_dir", "model")
    assert sorted(os.listdir(fake_model_dir)) == before
    assert (fake_model_dir / "config.json").read_text() == "{}"


def test_non_empty_out_dir_refused(tmp_path, fake_model_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    expect_error(["--model", str(fake_model_dir), "--out_dir", str(out), "--method", "ga"], "not empty",
                 "--overwrite")
    assert os.listdir(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_toy_model_with_tofu_data_refused(tmp_path):
    out = tmp_path / "out"
    expect_error(["--data", "tofu", "--data_dir", str(tmp_path), "--out_dir", str(out)], "--model")
    assert not out.exists()


def test_out_dir_symlink_to_model_dir(tmp_path, fake_model_dir):
    """A link to the model directory is the model directory: --overwrite must not write the model over."""
    link = tmp_path / "link"
    link.symlink_to(fake_model_dir, target_is_directory=True)
    expect_error(["--model", str(fake_model_dir), "--out_dir", str(link), "--method", "ga", "--overwrite"],
                 "out_dir", "model")
    assert os.listdir(fake_model_dir) == ["config.json"]


def test_main_end_to_end_npo(toy_cache, tmp_path):
    """main(): NPO's reference is the starting model (step 1 logs (2/beta) ln 2), the model, tokenizer, config
    and log are saved; a second run is refused, and --overwrite starts a fresh log."""
    out = tmp_path / "out"
    argv = ["--method", "npo", "--epochs", "0.5", "--lr", "1e-3", "--cache_dir", toy_cache[0],
            "--out_dir", str(out), "--sample_every", "1000"]
    bs.main(argv)
    names = set(os.listdir(out))
    assert {"config.json", "log.jsonl", "run_config.json", "tokenizer.json"} <= names
    assert any(n.endswith(".safetensors") or n.endswith(".bin") for n in names)
    recs = [json.loads(l) for l in open(out / "log.jsonl")]
    assert len(recs) == 2 and abs(recs[0]["forget"] - 20 * math.log(2)) < 1e-3
    assert json.load(open(out / "run_config.json"))["method"] == "npo"
    expect_error(argv, "not empty")
    bs.main(argv + ["--overwrite"])
    assert len(open(out / "log.jsonl").read().splitlines()) == 2
