"""
scaling.py: what bigger runs need that is not the method, kept out of bs_unlearn.py (as plumbing.py is):
many processes through torch.distributed (launched by torchrun; data-parallel, or sharded with FSDP2) and
LoRA adapters through peft. Without torchrun and without --lora_r nothing here does any work.

Data parallel, as bs_unlearn.py uses it: every rank draws the same global batch (the same seeded order) and
takes its own share, gradients are averaged once per optimizer step (one all-reduce per parameter, or FSDP2's
reduce-scatter in each backward), so K ranks at --batch_size b step like one process at K * b.
"""
import os

import torch
import torch.distributed as dist

LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"  # Llama-style attention and MLP

# -----------------------------------------------------------------------------------------------------
# Many processes


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def world():
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main():
    return rank() == 0


def setup(device):
    """Join the process group when torchrun launched us (it sets RANK); plain `python` runs alone. Returns
    the device this process works on: cuda:LOCAL_RANK on GPUs."""
    if "RANK" not in os.environ or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def teardown():
    if dist.is_initialized():
        dist.destroy_process_group()


def is_sharded(model):
    """True once fsdp() has sharded the model (FSDP2 renames its class FSDP<name>)."""
    return type(model).__name__.startswith("FSDP")


def fsdp(model):
    """FSDP2: shard each decoder layer, then the root (embeddings, final norm, head), so that weights, grads and
    AdamW state are split over the ranks. Every forward and backward is then a collective: all ranks must run
    the same number of them (bs_unlearn.py pads its shares and its belief chunks to make sure)."""
    from torch.distributed.fsdp import fully_shard
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def reshard(model):
    """After no-grad forwards (scoring, generating), free FSDP2's gathered weights. Needed, not only thrifty:
    the root module keeps its weights gathered after a forward, and the next training step's gradients for
    them (embeddings, final norm, head) then came out wrong in our tests (torch 2.13, gloo)."""
    if is_sharded(model):
        model.reshard()


def share(items):
    """This rank's share of a list, items[rank::world], padded to ceil(n / world) with its first item, so every
    rank gets the same number (DistributedSampler does the same; exact only when world divides n)."""
    if world() == 1:
        return items
    mine, n = items[rank()::world()], -(-len(items) // world())
    return mine + mine[:1] * (n - len(mine)) if mine else items[:1] * n


def gather(fn, items):
    """fn(list) -> list of results, one per item, run on this rank's share only and gathered, so every rank
    gets all results in order while each item's work (sampling, scoring) is done once in all."""
    if world() == 1:
        return fn(items)
    parts = [None] * world()
    dist.all_gather_object(parts, fn(share(items)))
    out = [None] * len(items)
    for r, part in enumerate(parts):
        out[r::world()] = part[:len(out[r::world()])]  # the padding's results are dropped
    return out


def _device():
    """Where collectives' tensors live: the GPU for NCCL, the CPU for gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"


def counts(n):
    """Every rank's n, in rank order (one all-reduce): how many sequences or batches each rank has."""
    if world() == 1:
        return [n]
    t = torch.zeros(world(), dtype=torch.long, device=_device())
    t[rank()] = n
    dist.all_reduce(t)
    return t.tolist()


def sync_grads(model):
    """Average the gradients over the ranks, once per optimizer step (FSDP2 already did, in backward). Not DDP:
    a step runs a different number of backward passes on each rank (BS-S's belief chunks), which DDP would try
    to sync one by one, and the model stays a plain HF model (generate, save_pretrained)."""
    if world() == 1 or is_sharded(model):
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:  # a parameter no loss touched still takes part, so the ranks' lists line up
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    for h in [dist.all_reduce(g, async_op=True) for g in grads]:
        h.wait()
    torch._foreach_div_(grads, world())


def average(*values):
    """Floats, averaged over the ranks (one collective): every rank logs and checks the same numbers."""
    if world() == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return (t / world()).tolist()


def full_tensor(x):
    """A DTensor (FSDP2's clipped gradient norm, say) as the whole tensor; any other tensor as it is."""
    return x.full_tensor() if hasattr(x, "full_tensor") else x


def unsharded(model):
    """The model whole, for saving: itself, or on rank 0 a plain copy built from the gathered full state
    dict (a collective: every rank calls it; the others get None)."""
    if not is_sharded(model):
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import AutoModelForCausalLM
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main():
        return None
    plain = AutoModelForCausalLM.from_config(model.config, dtype=next(iter(state.values())).dtype)
    plain.load_state_dict(state, strict=False)  # strict=False: a tied head is one tensor in `state`
    plain.tie_weights()
    return plain


# -----------------------------------------------------------------------------------------------------
# LoRA adapters (peft)


def add_lora(model, r, alpha, targets):
    """Freeze the model and add rank-r adapters (scale alpha / r) to the named linear layers."""
    from peft import LoraConfig, get_peft_model
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                     target_modules=[t.strip() for t in targets.split(",") if t.strip()])
    return get_peft_model(model, cfg)


def is_lora(model):
    return hasattr(model, "disable_adapter")


class AdaptersOff(torch.nn.Module):
    """The starting model without a second copy: a LoRA model run with its adapters disabled. Stands in for
    the frozen reference (NPO's log-probs, the KL retain term), wherever bs_unlearn.py takes a ref_model."""

    def __init__(self, lora_model):
        super().__init__()
        self.lora_model = lora_model

    def train(self, mode=True):  # eval()/train() on the reference must not switch the trained model's mode
        return self

    def forward(self, **batch):
        with self.lora_model.disable_adapter():
            return self.lora_model(**batch)


def merged(model, tok, adapter_dir=None):
    """The model to save: a LoRA model's adapters merged into its weights (a normal HF model, which eval.py and
    any tool load), the adapters alone written to adapter_dir first if given. Any other model as it is."""
    if not is_lora(model):
        return model
    if adapter_dir:
        model.save_pretrained(adapter_dir)
        tok.save_pretrained(adapter_dir)
    return model.merge_and_unload()
