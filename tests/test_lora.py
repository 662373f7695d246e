"""LoRA through peft (scaling.py, --lora_r), on the cached toy model: only the adapters train, the starting model
is the same model with its adapters off (no copy), and the saved folder is a plain HF model with them merged.

    BS_UNLEARN_CACHE=/tmp/bscache python -m pytest tests/test_lora.py -q     (~1 min on 2 CPU cores)
"""
import copy
import json
import os

import pytest
import torch

import bs_unlearn as bs
import scaling
import toy_world

CPU = torch.device("cpu")


def lora_args(method, *extra):
    # 1 epoch (4 steps of 16), no warmup; adapters start at zero and need a larger lr than full fine-tuning
    return bs.get_args(["--method", method, "--lr", "1e-2", "--epochs", "1", "--warmup_epochs", "0",
                        "--seed", "0", "--sample_every", "1000", "--lora_r", "4", *extra])


@pytest.fixture(scope="module")
def toy(toy_cache):
    model, tok = bs.load_model(toy_cache[1], CPU)
    forget, retain = toy_world.split_toy(toy_world.make_toy_data(), "forget10")
    return model, tok, bs.encode_rows(tok, forget), bs.encode_rows(tok, retain)


@pytest.fixture(scope="module")
def trained(toy):
    """NPO with the KL retain term on adapters: both references are the model with its adapters off."""
    model0, tok, forget_ex, retain_ex = toy
    args = lora_args("npo", "--retain_loss", "kl")
    model = scaling.add_lora(copy.deepcopy(model0), args.lora_r, args.lora_alpha, args.lora_targets)
    ref = scaling.AdaptersOff(model)
    forget_ex = copy.deepcopy(forget_ex)
    with bs.quiet():
        bs.train(model, tok, forget_ex, retain_ex, args, ref_model=ref)
    return model, ref, forget_ex


def test_defaults():
    args = bs.get_args(["--lora_r", "8"])
    assert args.lora_alpha == 16 and args.lora_targets.split(",") == [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_only_adapters_change(toy, trained):
    model0, model = toy[0], trained[0]
    start = dict(model0.named_parameters())
    names = [n for n, _ in model.named_parameters()]
    assert sum("lora_" in n for n in names) == 2 * 7 * model0.config.num_hidden_layers  # A and B, 7 targets
    for n, p in model.named_parameters():
        if "lora_" in n:
            assert p.requires_grad
            if "lora_B" in n:  # B starts at zero, so each must have moved
                assert p.abs().max() > 0, n
        else:
            base = n.replace("base_model.model.", "").replace(".base_layer", "")
            assert not p.requires_grad and torch.equal(p, start[base]), n


def test_adapters_off_is_the_starting_model(toy, trained):
    model0, tok, forget_ex, _ = toy
    model, ref, _ = trained
    model.train()
    off, start = bs.score(ref, tok, forget_ex)["logp"], bs.score(model0, tok, forget_ex)["logp"]
    torch.testing.assert_close(off, start, rtol=1e-5, atol=1e-4)
    assert model.training  # scoring the reference left the trained model's mode alone
    on = bs.score(model, tok, forget_ex)["logp"]
    assert on.sum() < start.sum() - 20  # and the adapters do lower the forget log-prob (NPO, 4 steps)


def test_merged_logits_equal_adapted(toy, trained):
    tok, forget_ex = toy[1], toy[2]
    model = trained[0]
    batch = bs.collate(forget_ex[:8], tok.pad_token_id)
    with torch.no_grad():
        adapted = bs.forward(model.eval(), batch)
        plain = scaling.merged(copy.deepcopy(model), tok)
        assert not any("lora_" in n for n in plain.state_dict())
        torch.testing.assert_close(bs.forward(plain.eval(), batch), adapted, rtol=1e-4, atol=1e-4)


def test_main_lora_saves_a_merged_model(toy_cache, toy, tmp_path):
    model0, _, forget_ex, _ = toy
    out = tmp_path / "run"
    with bs.quiet():
        bs.main(["--method", "bs_s", "--bss_base", "npo", "--lora_r", "4", "--lr", "1e-2", "--epochs", "1",
                 "--warmup_epochs", "0", "--save_adapter", "--cache_dir", toy_cache[0], "--out_dir", str(out)])
    from transformers import AutoModelForCausalLM
    plain = AutoModelForCausalLM.from_pretrained(str(out))  # a normal HF folder, no peft needed
    assert type(plain).__name__ == "LlamaForCausalLM" and not any("lora_" in n for n in plain.state_dict())
    assert os.path.isfile(out / "adapter" / "adapter_config.json")
    assert json.load(open(out / "run_config.json"))["lora_r"] == 4
    model, tok = bs.load_model(str(out), CPU)
    after, before = (bs.score(m, tok, forget_ex)["logp"].sum() for m in (model, model0))
    assert after < before - 5  # measured -66 -> -78 nats (BS-S on NPO, 4 steps)


def test_lora_flags_refused():
    for argv, words in ((["--save_adapter"], "--lora_r"), (["--lora_r", "4", "--fsdp"], "not supported")):
        with pytest.raises(SystemExit) as e:
            bs.get_args(argv)
        assert words in str(e.value)


def test_unknown_lora_targets_are_one_line(toy, tmp_path):
    model = copy.deepcopy(toy[0])
    args = bs.get_args(["--lora_r", "4", "--lora_targets", "foo_proj"])  # (a name no layer of the model has)
    with pytest.raises(SystemExit) as e:
        scaling.wrap(model, args, keep_ref=False)
    assert "--lora_targets foo_proj" in str(e.value) and "\n" not in str(e.value)
