"""Many processes (scaling.py), on the CPU with gloo: 2 ranks under torchrun, on the cached toy model.

One optimizer step on 2 ranks at --batch_size b (a global batch of 2b) must give the weights of one process at
--batch_size 2b, data-parallel and with FSDP2, for GA, BS-S, NPO with the KL retain term and RMU. The comparison
steps with SGD (the test swaps it in for AdamW): AdamW's first step is lr * sign(grad), which turns the
last-bit differences of a different summation order into 2 lr wherever a gradient is near zero; SGD keeps
them at lr times that difference, so the weights compare to float tolerance. This file is also the ranks'
script: `torchrun --nproc_per_node=2 tests/test_distributed.py OUT` runs `worker` on each.

    BS_UNLEARN_CACHE=/tmp/bscache python -m pytest tests/test_distributed.py -q     (~2 min on 2 CPU cores)
"""
import copy
import json
import os
import random
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import bs_unlearn as bs  # noqa: E402
import scaling  # noqa: E402
import toy_world  # noqa: E402

CPU = torch.device("cpu")
B = 4  # per rank; the one-process run takes 2 * B
N_FORGET = 2 * B  # one global batch: one step per epoch
CASES = {  # name: (bs_unlearn flags, fsdp)
    "ga": (["--method", "ga"], False),
    "bs_s": (["--method", "bs_s", "--bss_chunk", "5"], False),
    "npo_kl": (["--method", "npo", "--retain_loss", "kl"], False),
    "ga_fsdp": (["--method", "ga"], True),
    "bs_s_fsdp": (["--method", "bs_s", "--bss_chunk", "5"], True),  # (checkpointed chunks)
    "npo_kl_fsdp": (["--method", "npo", "--retain_loss", "kl"], True),
    "rmu": (["--method", "rmu"], False),  # hidden states, and the frozen model's for its retain term
    "rmu_fsdp": (["--method", "rmu"], True),
}


def step_args(flags, batch_size):
    return bs.get_args([*flags, "--batch_size", str(batch_size), "--epochs", "1", "--warmup_epochs", "0",
                        "--lr", "1e-2", "--seed", "0", "--sample_every", "1000"])


def sgd(model, args):
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=args.lr)


def toy_setup(cache):
    model, tok = bs.load_model(toy_world.toy_model_dir(cache, "full", 0), CPU)
    forget, retain = toy_world.split_toy(toy_world.make_toy_data(), "forget10")
    return model, tok, bs.encode_rows(tok, forget)[:N_FORGET], bs.encode_rows(tok, retain)


def one_step(model0, tok, forget_ex, retain_ex, flags, batch_size, beliefs, fsdp=False):
    """One optimizer step as main() sets it up: the reference model, then train (which scores NPO's log-probs)."""
    args = step_args(flags, batch_size)
    model, forget_ex = copy.deepcopy(model0), copy.deepcopy(forget_ex)
    ref = copy.deepcopy(model0).eval().requires_grad_(False) if bs.needs_ref_model(args) else None
    if fsdp:
        model, ref = scaling.fsdp(model), ref and scaling.fsdp(ref)
    bs.train(model, tok, forget_ex, retain_ex, args, ref_model=ref,
             beliefs=beliefs if args.method == "bs_s" else None)
    return scaling.unsharded(model)


def worker(out):
    """On each rank: every case on a global batch of 2 B (B per rank); rank 0 saves the weights."""
    scaling.setup(CPU)
    model0, tok, forget_ex, retain_ex = toy_setup(os.environ["BS_UNLEARN_CACHE"])
    beliefs = torch.load(os.path.join(out, "beliefs.pt"))
    bs.make_optimizer = sgd
    for name, (flags, fsdp) in CASES.items():
        model = one_step(model0, tok, forget_ex, retain_ex, flags, B, beliefs, fsdp)
        if scaling.is_main():
            torch.save(model.state_dict(), os.path.join(out, f"{name}.pt"))
    # BS-S sampling its own beliefs: each rank samples for its share of the forget examples only
    sizes, real = [], bs.sample_beliefs

    def recording(model, tok, forget_examples, *args, **kw):
        sizes.append(len(forget_examples))
        return real(model, tok, forget_examples, *args, **kw)
    bs.sample_beliefs = recording
    sampled = copy.deepcopy(model0)
    bs.train(sampled, tok, forget_ex, retain_ex, step_args(["--method", "bs_s"], B))
    with open(os.path.join(out, f"sampled{scaling.rank()}.json"), "w") as f:
        json.dump(dict(sizes=sizes), f)
    scaling.teardown()


def torchrun(*argv, cache, timeout=600):
    """Two ranks on this machine, with the session's toy-model cache (the workers read it from the
    environment, which need not have it set: the toy_cache fixture may have built into a temporary folder)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               BS_UNLEARN_CACHE=cache)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *argv]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def two_ranks(toy_cache, tmp_path_factory):
    """The weights after one step of every case on 2 ranks, and one process's on the same data."""
    out = tmp_path_factory.mktemp("dist")
    model0, tok, forget_ex, retain_ex = toy_setup(toy_cache[0])
    beliefs = bs.sample_beliefs(model0, tok, forget_ex, step_args(["--method", "bs_s"], 2 * B))
    torch.save(beliefs, out / "beliefs.pt")
    run = torchrun(os.path.abspath(__file__), str(out), cache=toy_cache[0])
    if run.returncode:
        pytest.fail(f"torchrun failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    real_make_optimizer, bs.make_optimizer = bs.make_optimizer, sgd
    try:
        single = {name: one_step(model0, tok, forget_ex, retain_ex, flags, 2 * B, beliefs).state_dict()
                  for name, (flags, _) in CASES.items()}
    finally:
        bs.make_optimizer = real_make_optimizer
    return out, run, model0.state_dict(), single


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_step_like_one_process(two_ranks, name):
    out, run, start, single = two_ranks
    dist = torch.load(out / f"{name}.pt")
    assert dist.keys() == single[name].keys()
    moved = max((single[name][k] - start[k]).abs().max().item() for k in start)
    assert moved > 1e-4  # the step did something (so the comparison means something)
    for k, p in single[name].items():
        torch.testing.assert_close(dist[k], p, rtol=1e-5, atol=1e-6, msg=f"{name}: {k}")
    if name.startswith("rmu"):  # its loss ends at the toy's first layer: the second stays as it was
        above = [k for k in start if ".layers.1." in k]
        assert above and all(torch.equal(dist[k], start[k]) for k in above)


def test_one_log_line_per_step(two_ranks):
    # every case is one step, and only rank 0 prints it; plus the 1-step run that samples its own beliefs
    _, run, _, _ = two_ranks
    lines = [l for l in run.stdout.splitlines() if l.startswith("step")]
    assert len(lines) == len(CASES) + 1, run.stdout
    assert all(l.startswith("step    1/1 ") for l in lines)


def test_each_rank_samples_its_own_share(two_ranks):
    out = two_ranks[0]
    for r in range(2):
        assert json.load(open(out / f"sampled{r}.json"))["sizes"] == [N_FORGET // 2]


def test_share_and_gather_pad_unequal_splits(monkeypatch):
    # 5 items on 2 ranks: shares of 3, the short one padded with its own first item; gather drops the padding
    monkeypatch.setattr(scaling, "world", lambda: 2)
    items = list("abcde")
    monkeypatch.setattr(scaling, "rank", lambda: 0)
    assert scaling.share(items) == ["a", "c", "e"]
    monkeypatch.setattr(scaling, "rank", lambda: 1)
    assert scaling.share(items) == ["b", "d", "b"]
    parts = [["A", "C", "E"], ["B", "D", "B"]]

    def fake_all_gather(out, mine):
        out[:] = parts
    monkeypatch.setattr(scaling.dist, "all_gather_object", fake_all_gather)
    assert scaling.gather(lambda xs: [x.upper() for x in xs], items) == list("ABCDE")


def test_sync_grads_leaves_untouched_parameters_out(monkeypatch):
    # RMU's loss never reaches the layers above its own: in one process their .grad stays None and AdamW
    # skips them; on K ranks they must not come back as zeros, which AdamW's weight decay would still move.
    # A parameter that some rank's loss reached keeps a gradient on every rank, even a zero one.
    monkeypatch.setattr(scaling, "world", lambda: 2)

    def step(other_rank, zero_second=False):  # a fake all_reduce adds the other rank's tensor, other_rank(g)
        def all_reduce(g, async_op=False):
            g += other_rank(g)
            return type("Handle", (), {"wait": lambda self: None})()
        monkeypatch.setattr(scaling.dist, "all_reduce", all_reduce)
        monkeypatch.setattr(scaling, "_device", lambda: "cpu")
        model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
        out = model[0](torch.ones(3))  # this rank's loss reaches the first layer
        (out.sum() + (model[1](out) * 0).sum() if zero_second else out.sum()).backward()
        g0 = model[0].weight.grad.clone()
        scaling.sync_grads(model)
        return model, g0

    # the other rank: the same gradients, so no rank reached the second layer
    model, g0 = step(lambda g: g.clone())
    torch.testing.assert_close(model[0].weight.grad, g0)
    assert all(p.grad is None for p in model[1].parameters())
    # the other rank reached every parameter, with gradient 1
    model, g0 = step(lambda g: torch.ones_like(g))
    torch.testing.assert_close(model[0].weight.grad, (g0 + 1) / 2)
    assert all((p.grad == 0.5).all() for p in model[1].parameters())
    # the other rank reached the second layer with a zero gradient (its flags all 1, its gradients 0): here
    # too it keeps a zero gradient, so both ranks step it alike; and the mirror case, reached here with zeros
    for zero_second in (False, True):
        model, g0 = step(lambda g: torch.ones_like(g) if g.dtype == torch.int32 else torch.zeros_like(g),
                         zero_second)
        torch.testing.assert_close(model[0].weight.grad, g0 / 2)
        assert all(p.grad is not None and not p.grad.any() for p in model[1].parameters())


def test_main_under_torchrun_fsdp(toy_cache, tmp_path):
    # the whole script on 2 ranks with FSDP2: BS-S on NPO (reference log-probs split over the ranks, confident
    # beliefs scored in step) with the KL term (a sharded reference); one log, one saved full model on rank 0
    out = tmp_path / "run"
    run = torchrun("bs_unlearn.py", "--method", "bs_s", "--bss_base", "npo", "--bss_keep", "2",
                   "--retain_loss", "kl", "--fsdp", "--epochs", "1", "--cache_dir", toy_cache[0],
                   "--out_dir", str(out), cache=toy_cache[0])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    steps = [l for l in run.stdout.splitlines() if l.startswith("step")]
    assert len(steps) == 2 and steps[-1].startswith("step    2/2 ")  # 64 forget examples, 2 x 16 a step
    assert len(open(out / "log.jsonl").read().splitlines()) == 2
    assert json.load(open(out / "run_config.json"))["world_size"] == 2
    assert not [p for p in os.listdir(tmp_path) if p != "run"]  # no second folder from rank 1
    model, tok = bs.load_model(str(out), CPU)
    start, _ = bs.load_model(toy_cache[1], CPU)
    forget, _ = toy_world.split_toy(toy_world.make_toy_data(), "forget10")
    forget_ex = bs.encode_rows(tok, forget)
    assert bs.score(model, tok, forget_ex)["logp"].sum() < bs.score(start, tok, forget_ex)["logp"].sum()


def test_fsdp_needs_torchrun(tmp_path):
    run = subprocess.run([sys.executable, "bs_unlearn.py", "--fsdp", "--out_dir", str(tmp_path / "x")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "torchrun" in run.stderr and not os.path.exists(tmp_path / "x")


def gathered_layers_probe(chunk):
    """On each rank: one BS-S micro-step of an 8-layer Llama under FSDP2, counting how many of its 9 FSDP groups
    (8 layers and the root) hold their whole weights at once, in the forward and in the backward. (Through
    FSDP2's internal FSDPParamGroup: torch 2.13's layout.)"""
    from transformers import LlamaConfig, LlamaForCausalLM
    from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup
    scaling.setup(CPU, fsdp=True)
    torch.manual_seed(0)
    rng = random.Random(0)
    cfg = LlamaConfig(vocab_size=500, hidden_size=64, intermediate_size=128, num_hidden_layers=8,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128)
    model = scaling.fsdp(LlamaForCausalLM(cfg).train())

    def example(length=40, prompt=8):
        ids = [rng.randrange(1, 500) for _ in range(length)]
        return dict(input_ids=ids, labels=[-100] * prompt + ids[prompt:], prompt_len=prompt)
    whole, most = set(), dict(forward=0, backward=0)
    unshard, reshard = FSDPParamGroup.unshard, FSDPParamGroup.reshard

    def counting_unshard(group, *a, **k):
        out = unshard(group, *a, **k)
        whole.add(id(group))
        phase = "backward" if torch._C._current_graph_task_id() != -1 else "forward"
        most[phase] = max(most[phase], len(whole))
        return out

    def counting_reshard(group, *a, **k):
        whole.discard(id(group))
        return reshard(group, *a, **k)
    FSDPParamGroup.unshard, FSDPParamGroup.reshard = counting_unshard, counting_reshard
    tok = type("Tok", (), dict(pad_token_id=0))
    args = bs.get_args(["--method", "bs_s", "--bss_chunk", str(chunk)])
    bs.micro_step(model, tok, [example() for _ in range(2)], [example() for _ in range(12)], None, args)
    FSDPParamGroup.unshard, FSDPParamGroup.reshard = unshard, reshard
    torch.distributed.barrier()
    if scaling.is_main():
        print(json.dumps(most), flush=True)
    # (leaving without tearing down: about 1 run in 4, with one chunk too, rank 0 aborted at exit after
    # printing, 'terminate called without an active exception'; the train-and-save workers above never have)
    os._exit(0)


@pytest.mark.parametrize("chunk", [1000, 5])
def test_fsdp_checkpointed_chunks_gather_one_layer_at_a_time(chunk, toy_cache):
    # BS-S's belief chunks rerun the whole model inside the backward (activation checkpointing); FSDP2 keeps a
    # layer whole after a forward there, so without scaling.fsdp's reshard hook all 9 groups were whole at once
    run = torchrun(os.path.abspath(__file__), "--probe", str(chunk), cache=toy_cache[0], timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    most = json.loads(run.stdout.strip().splitlines()[-1])
    assert most["forward"] <= 3 and most["backward"] <= 3, most


if __name__ == "__main__":
    if sys.argv[1] == "--probe":
        gathered_layers_probe(int(sys.argv[2]))
    else:
        worker(sys.argv[1])
