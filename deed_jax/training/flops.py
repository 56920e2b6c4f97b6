"""Model FLOPs of a train step, counted from the shapes, and utilisation against the device's peak.

Model FLOPs follow PaLM's convention: 3x the forward pass's matmul and convolution FLOPs (the
backward pass computes two matmuls per forward one), with no credit for rematerialisation or the
chunked head loss's recomputed logits. They are counted from the step's own forward jaxpr, so they
cover whatever the step runs: the encoder, every decoder layer, and the LM head of each exit the
step supervises (all of them, one, or a sampled few). `scan` bodies count once per iteration.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
from jax.extend import core as jex_core

# Dense bf16 peak FLOP/s per chip, from the vendors' data sheets (no sparsity). float32 matmuls run
# below these (TF32 or slower), so utilisation of a float32 model is understated, never overstated.
PEAK_FLOPS = {
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,
  "TPU v5e": 197e12,
  "TPU v5p": 459e12,
  "TPU v5": 459e12,
  "TPU v6 lite": 918e12,
  "TPU v6e": 918e12,
  "NVIDIA H100 80GB HBM3": 989e12,
  "NVIDIA H100": 989e12,
  "NVIDIA H200": 989e12,
  "NVIDIA A100-SXM4-80GB": 312e12,
  "NVIDIA A100-SXM4-40GB": 312e12,
  "NVIDIA A100": 312e12,
}


def peak_flops(device: jax.Device) -> float | None:
  """The device's dense bf16 peak FLOP/s, or None where unknown (CPUs)."""
  kind = device.device_kind
  if kind in PEAK_FLOPS:
    return PEAK_FLOPS[kind]
  matches = [name for name in PEAK_FLOPS if kind.startswith(name)]
  return PEAK_FLOPS[max(matches, key=len)] if matches else None


def _eqn_flops(eqn) -> float:
  """Matmul / convolution FLOPs of one equation (2 per multiply-add); 0 for everything else."""
  if eqn.primitive.name == "dot_general":
    (contracting, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    out = eqn.outvars[0].aval.shape
    return 2.0 * math.prod(out) * math.prod(lhs[d] for d in contracting)
  if eqn.primitive.name == "conv_general_dilated":
    rhs = eqn.invars[1].aval.shape  # [O, I/groups, *window] in the dimension_numbers' layout
    out = eqn.outvars[0].aval.shape
    out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
    return 2.0 * math.prod(out) * math.prod(rhs) / out_features
  return 0.0


def jaxpr_flops(jaxpr: jex_core.Jaxpr) -> float:
  """Matmul and convolution FLOPs of a jaxpr, sub-jaxprs included (`scan` bodies times their
  length; of a `cond`, its costliest branch; a `while` body once, its trip count being unknown)."""
  total = 0.0
  for eqn in jaxpr.eqns:
    total += _eqn_flops(eqn)
    name = eqn.primitive.name
    if name == "scan":
      total += eqn.params["length"] * jaxpr_flops(eqn.params["jaxpr"].jaxpr)
    elif name == "cond":
      total += max(jaxpr_flops(branch.jaxpr) for branch in eqn.params["branches"])
    else:  # calls, remat, custom_vjp (its forward function): every (closed) jaxpr parameter
      for param in eqn.params.values():
        sub = getattr(param, "jaxpr", param)
        if isinstance(sub, jex_core.Jaxpr):
          total += jaxpr_flops(sub)
  return total


def model_flops_per_step(forward: Callable, *args) -> float:
  """3x the matmul FLOPs of `forward(*args)` (arrays or ShapeDtypeStructs): a train step's model
  FLOPs when `forward` is its loss function."""
  return 3.0 * jaxpr_flops(jax.make_jaxpr(forward)(*args).jaxpr)
