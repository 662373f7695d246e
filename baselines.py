"""
baselines.py: the other rows of the paper's Table 1, beside bs_unlearn.py's four objectives (GA, NPO, BS-T,
BS-S), as open-unlearning defines them and at its defaults. Every loss is minimised; WGA's and SimNPO's are
pure functions of log-probs, and RMU's two terms run the model for its hidden states (rmu_forget,
rmu_retain). bs_unlearn.forget_loss calls forget_loss (--method wga / simnpo / rmu), and its retain_loss calls
rmu_retain (--retain_loss embed, RMU's default).

    WGA    (the paper's Eq. 4) GA with each answer token's log-prob weighted by its probability to the power a:
           L = E[ sum_i w_i log pi(y_i | x, y_<i) ],  w_i = sg[pi(y_i | x, y_<i)]^a      a = 1; a = 0 is GA
    SimNPO NPO without the reference model, on the length-normalised NLL:
           L = -(2/beta) E[ logsigmoid( beta * (-log pi(y|x) / |y| - delta) ) ]      beta 4.5, delta 0, gamma 0.125
    RMU    representation misdirection (Li et al., "The WMDP Benchmark", 2024): the hidden state after one
           decoder layer is pushed towards a fixed random vector c u on the forget answers, and held where the
           frozen starting model puts it on the retain answers ("EMBED_DIFF"), each a mean squared error:
           L_forget = E[ mean over answer tokens of mean_d (h_L(x_u) - c u)^2 ]
           L_retain = E[ mean over answer tokens of mean_d (h_L(x_r) - h_L^o(x_r))^2 ]   layer 7 of 16, c = 2
           u is torch.rand, normalised; every weight trains (open-unlearning's TOFU setting).
Units (the README's choice 4): WGA sums over answer tokens like GA (open-unlearning takes a token mean, for
its retain NLL too, so the balance of the two terms is the same). SimNPO, like NPO, is one number per
sequence, while the retain NLL here is a sum over the answer's tokens, so against open-unlearning (token-mean
retain NLL) its retain term weighs about |y_r| times more at the same gamma and alpha. RMU's terms are
distances, token means per sequence, as open-unlearning computes them.
"""
import math

import torch
import torch.nn.functional as F

from plumbing import autocast, fail, number


def add_args(p):
    """The baselines' flags, at open-unlearning's defaults."""
    p.add_argument("--wga_a", type=number(float, 0), default=1.0, help="WGA's exponent a (0: GA)")
    p.add_argument("--simnpo_beta", type=number(float, 0, above=True), default=4.5,
                   help="SimNPO's inverse temperature")
    p.add_argument("--simnpo_delta", type=number(float, -math.inf), default=0.0, help="SimNPO's reward margin")
    p.add_argument("--rmu_layer", type=number(int, 0), default=None,
                   help="RMU: the decoder layer steered (default: 7/16 of the depth, as open-unlearning)")
    p.add_argument("--rmu_c", type=number(float, 0, above=True), default=2.0,
                   help="RMU: the control vector's norm c")


METHODS = ["wga", "simnpo", "rmu"]


def forget_loss(model, batch, method, args, forward, token_logps):
    """A baseline's forget term on one batch, its forward included. bs_unlearn.forget_loss hands in its own
    `forward` and `token_logps`, so WGA and SimNPO score the answers exactly as its objectives do."""
    if method == "rmu":  # hidden states, not log-probs
        return rmu_forget(model, batch, args)
    labels = batch["labels"]
    logps = token_logps(forward(model, batch), labels)  # (B, T-1): each answer token's log-prob, 0 elsewhere
    if method == "wga":
        return wga_loss(logps, args.wga_a)
    if method == "simnpo":
        return simnpo_loss(logps.sum(-1), (labels[:, 1:] != -100).sum(-1), args.simnpo_beta, args.simnpo_delta)
    raise ValueError(f"no baseline {method!r}")


def wga_loss(token_logps, a=1.0):
    """WGA from the answer tokens' log-probs (B, T), 0 off the answer. The weight pi^a is detached, so a token
    the model no longer predicts stops pulling: GA that lets go. With a = 0 it is exactly GA."""
    return (token_logps.detach().exp() ** a * token_logps).sum(-1).mean()


def simnpo_loss(policy_logps, n_tokens, beta=4.5, delta=0.0):
    """SimNPO from the summed answer log-probs (B,) and answer lengths (B,). Equals (2/beta) ln 2 where the
    per-token NLL is delta; like NPO it flattens out once an answer is unlikely."""
    return -(2 / beta) * F.logsigmoid(beta * (-policy_logps / n_tokens - delta)).mean()


# -----------------------------------------------------------------------------------------------------
# RMU: hidden states. forget_loss calls rmu_forget for --method rmu, and bs_unlearn.retain_loss calls
# rmu_retain for its retain term (--retain_loss embed)


def rmu_forget(model, batch, args):
    """RMU's forget term on one batch: the answers' hidden states at its layer pushed towards c * u."""
    h = hidden_states(model, batch, rmu_layer(model, args))
    return rmu_forget_loss(h, batch["labels"], control_vector(h.shape[-1], args.rmu_c, args.seed))


def rmu_retain(model, ref_model, batch, args):
    """RMU's retain term on one batch: the answers' hidden states held where the frozen start puts them."""
    layer = rmu_layer(model, args)
    with torch.no_grad():
        h_ref = hidden_states(ref_model, batch, layer)
    return rmu_retain_loss(hidden_states(model, batch, layer), h_ref, batch["labels"])


def hidden_states(model, batch, layer):
    """h_L, the output of decoder layer L (B, T, d): the model run as bs_unlearn.forward runs it, asking for
    one position's logits only (RMU never reads the (B, T, V) logits)."""
    device = next(model.parameters()).device
    with autocast(model):
        out = model(input_ids=batch["input_ids"].to(device), position_ids=batch["position_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device), output_hidden_states=True, logits_to_keep=1)
    return out.hidden_states[layer + 1]  # ([0] is the embeddings)


def rmu_layer(model, args):
    """RMU's layer: --rmu_layer, else open-unlearning's relative depth; one line if the model has no such one."""
    n = model.config.num_hidden_layers
    layer = default_layer(n) if args.rmu_layer is None else args.rmu_layer
    if layer > n - 2:  # (HF's hidden state after the last layer is already normed)
        fail(f"--rmu_layer {layer}: the model has {n} decoder layers, so it must be at most {n - 2}")
    return layer


def default_layer(n_layers):
    """The decoder layer RMU steers: open-unlearning's 7 of 16, at the same relative depth (Llama-3.2-1B: 7;
    SmolLM2-135M's 30 layers: 13; the toy model's 2: 0, the first)."""
    return n_layers * 7 // 16


def control_vector(hidden_size, c=2.0, seed=0):
    """c * u, with u uniform on [0, 1)^d and normalised: the same for the whole run (and for a seed)."""
    u = torch.rand(hidden_size, generator=torch.Generator().manual_seed(seed))
    return c * u / u.norm()


def answer_mse(h, target, labels):
    """Mean over each sequence's answer tokens of mean_d (h - target)^2, then the mean over sequences.
    h (B, T, d); target (B, T, d) or (d,); labels (B, T), -100 off the answer. Not shifted: the hidden state
    at a token is the model's reading of that token."""
    mask = (labels != -100).float()  # (B, T)
    per_token = (h.float() - target.float()).pow(2).mean(-1)  # (B, T)
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()


def rmu_forget_loss(h, labels, control):
    """Push the forget answers' hidden states towards the control vector c * u."""
    return answer_mse(h, control.to(h.device), labels)


def rmu_retain_loss(h, h_ref, labels):
    """Hold the retain answers' hidden states where the frozen starting model puts them."""
    return answer_mse(h, h_ref.detach(), labels)
