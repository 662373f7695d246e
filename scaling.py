"""
scaling.py: what bigger runs need that is not the method, kept out of bs_unlearn.py (as plumbing.py is):
many processes through torch.distributed (launched by torchrun; data-parallel, or sharded with FSDP2) and
LoRA adapters through peft. Without torchrun and without --lora_r nothing here does any work.

Data parallel, as bs_unlearn.py uses it: every rank draws the same global batch (the same seeded order) and
takes its own share, gradients are averaged once per optimizer step (one all-reduce per parameter, or FSDP2's
reduce-scatter in each backward), so K ranks at --batch_size b step like one process at K * b. Two
differences from one process: a global batch that K does not divide is padded with repeats (as
DistributedSampler does), and each rank samples BS-S's beliefs for its own share of the forget set, so
they differ from a 1-process run's.

Under FSDP2 every forward and backward is a collective, so all ranks must run the same number of them. A
training micro-step runs the same forwards on every rank (equal shares); `lockstep` pads the scoring batches
and `fsdp` sets up synced generation; `fsdp` also frees the root's gathered weights after no-grad passes.
"""
import contextlib
import copy
import functools
import os

import torch
import torch.distributed as dist

from plumbing import fail, first_line, number

LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"  # Llama-style attention and MLP


def add_args(p):
    """bs_unlearn.py's flags for bigger models: many processes (launched by torchrun) and LoRA."""
    p.add_argument("--fsdp", action="store_true",
                   help="under torchrun: shard weights, grads and AdamW state over the ranks (FSDP2)")
    p.add_argument("--lora_r", type=number(int, 0), default=0, help="LoRA rank (0: train all weights)")
    p.add_argument("--lora_alpha", type=number(float, 0, above=True), default=None,
                   help="LoRA's alpha: the adapters' output is scaled by alpha / r (default: alpha = 2 r)")
    p.add_argument("--lora_targets", default=LORA_TARGETS, help="comma-separated module names")
    p.add_argument("--save_adapter", action="store_true", help="also save the adapters, in <out_dir>/adapter")


def check_args(args):
    if args.fsdp and args.lora_r:
        fail("--fsdp with --lora_r is not supported; LoRA's adapters and their AdamW state are small anyway")
    if args.save_adapter and not args.lora_r:
        fail("--save_adapter needs --lora_r")
    args.lora_alpha = args.lora_alpha or 2 * args.lora_r

# -----------------------------------------------------------------------------------------------------
# Many processes


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def world():
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main():
    return rank() == 0


def setup(device, fsdp=False):
    """Join the process group when torchrun launched us (it sets RANK); plain `python` runs alone. Returns
    the device this process works on: cuda:LOCAL_RANK on GPUs."""
    if "RANK" not in os.environ or dist.is_initialized():
        if fsdp and world() == 1:
            fail("--fsdp shards over several processes; launch with torchrun --nproc_per_node=K")
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
    the same number of them (see the module's docstring). Two more things are set up here:
    - generate() keeps every rank stepping until all ranks' sequences have ended (synced_gpus);
    - the root keeps its weights gathered after a forward, and after a no-grad one (scoring, generating) no
      backward frees them: the next training step's gradients for them (embeddings, final norm, head) then
      came out wrong in our tests (torch 2.13, gloo). So a no-grad forward frees them at once (generation
      gathers them again at each token, as FSDP does for every decoder layer anyway);
    - BS-S's checkpointed belief chunks (bs_unlearn.belief_term) run the whole model's forward again inside the
      backward, and FSDP2 keeps a layer gathered after a forward run there (it expects that layer's backward
      next): every layer would be whole at once. So a decoder layer frees its gathered weights after such a
      forward too, and its backward gathers them again."""
    from torch.distributed.fsdp import fully_shard

    def reshard_after_recompute(layer, args, output):  # see the docstring's last point
        if torch._C._current_graph_task_id() != -1:  # (a forward run inside a backward)
            layer.reshard()
    for layer in model.model.layers:
        fully_shard(layer)
        layer.register_forward_hook(reshard_after_recompute)
    fully_shard(model)
    model.generate = functools.partial(model.generate, synced_gpus=True)

    def reshard_after_no_grad_forward(module, args, output):
        if not torch.is_grad_enabled():
            module.reshard()
    model.register_forward_hook(reshard_after_no_grad_forward)
    return model


def share(items):
    """This rank's share of a list, items[rank::world], padded to ceil(n / world) with its first item, so every
    rank gets the same number (DistributedSampler does the same; exact only when world divides n)."""
    if world() == 1:
        return items
    mine, n = items[rank()::world()], -(-len(items) // world())
    return mine + mine[:1] * (n - len(mine)) if mine else items[:1] * n


def shares(global_batches):
    """This rank's share of each global batch of an iterator (the whole batch in one process)."""
    for batch in global_batches:
        yield share(batch)


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


@contextlib.contextmanager
def seeded(seed, model):
    """Random numbers from their own stream, seeded with `seed` on rank 0 (another on each other rank: their
    beliefs differ), leaving the global random state (the training's) as it was."""
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed + 1_000_003 * rank())
        yield


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


def lockstep(batches, model):
    """The batches of a no-grad pass; under FSDP, followed by copies of the first until this rank has run as
    many forwards as the busiest rank (the caller drops their results: they come after its own)."""
    extra = max(counts(len(batches))) - len(batches) if is_sharded(model) else 0
    return batches + batches[:1] * extra


def sync_grads(model):
    """Average the gradients over the ranks, once per optimizer step (FSDP2 already did, in backward). Not DDP:
    one all-reduce per optimizer step, not per backward (--grad_accum's micro-steps), without DDP's no_sync,
    and the model stays a plain HF model (generate, save_pretrained)."""
    if world() == 1 or is_sharded(model):
        return
    params = [p for p in model.parameters() if p.requires_grad]
    touched = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=_device())
    dist.all_reduce(touched)  # which parameters some rank's loss reached: the same answer on every rank
    # the others (RMU: the layers above its own) keep a None gradient and stay out of AdamW's step, as in one
    # process (a zero gradient would still be decayed)
    params = [p for p, t in zip(params, touched.tolist()) if t]
    for p in params:
        if p.grad is None:  # reached on another rank, not here: a zero, so the ranks' lists line up
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    for h in [dist.all_reduce(g, async_op=True) for g in grads]:
        h.wait()
    torch._foreach_div_(grads, world())


def average(*values):
    """Numbers (floats, tensors, FSDP's DTensors) as floats, averaged over the ranks (one collective): every
    rank logs and checks the same numbers."""
    values = [float(full_tensor(v)) for v in values]
    if world() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return (t / world()).tolist()


def full_tensor(x):
    """A DTensor (FSDP2's clipped gradient norm, say) as the whole tensor; any other tensor as it is."""
    return x.full_tensor() if hasattr(x, "full_tensor") else x


def for_saving(model, tok, adapter_dir=None):
    """The model to save, on rank 0 (None on the others): FSDP's shards gathered, LoRA's adapters merged."""
    model = unsharded(model)
    return merged(model, tok, adapter_dir) if is_main() else None


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
    names = [t.strip() for t in targets.split(",") if t.strip()]
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, task_type="CAUSAL_LM", target_modules=names)
    try:
        return get_peft_model(model, cfg)
    except ValueError as e:  # peft: no module of the model has one of these names
        fail(f"--lora_targets {targets}: {first_line(e)}")


def wrap(model, args, keep_ref):
    """(the model to train, pi_o or None): pi_o, the frozen starting model, only if keep_ref. A plain run trains
    the model and keeps a copy; with --lora_r only the adapters train and pi_o is the same model with them off
    (no copy); with --fsdp both are sharded over torchrun's ranks."""
    if args.lora_r:
        model, ref_model = lora(model, args, keep_ref)
    else:
        ref_model = copy.deepcopy(model).eval().requires_grad_(False) if keep_ref else None
    if args.fsdp:  # weights, gradients and AdamW state split over the ranks
        model, ref_model = fsdp(model), ref_model and fsdp(ref_model)
    return model, ref_model


def lora(model, args, keep_ref):
    """(model with adapters, reference or None). Only the adapters train, so the starting model pi_o is this
    same model with its adapters off: no second copy."""
    torch.manual_seed(args.seed)  # the adapters' random initialisation
    model = add_lora(model, args.lora_r, args.lora_alpha, args.lora_targets)
    return model, AdaptersOff(model) if keep_ref else None


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
