"""The exits' own modules: the per-layer adaptation between a decoder layer and the shared LM head,
and CALM's learned exit classifier."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from deed_jax.models.config import ModelConfig
from deed_jax.models.layers import param

Array = jax.Array


class ExitAdapter(nnx.Module):
  """Per-layer adaptation module between a decoder layer and the shared head.

  "none" is the identity; "linear" is h + h W + b; "bottleneck" is h + up(gelu(down(h))). The residual
  branch starts at zero, so every adapter is exactly the identity at initialisation.
  """

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    self.kind = config.adapter
    d, a, pd = config.d_model, config.adapter_dim, config.param_dtype
    self.dtype = jnp.dtype(config.dtype)
    if self.kind == "linear":
      self.w = param(None, (d, d), ("embed", None), "zeros", pd)
      self.b = param(None, (d,), ("embed",), "zeros", pd)
    elif self.kind == "bottleneck":
      self.down = param(rngs, (d, a), ("embed", "mlp"), dtype=pd)
      self.down_bias = param(None, (a,), ("mlp",), "zeros", pd)
      self.up = param(None, (a, d), ("mlp", "embed"), "zeros", pd)
      self.up_bias = param(None, (d,), ("embed",), "zeros", pd)

  def __call__(self, h: Array) -> Array:  # [..., D] -> [..., D]
    if self.kind == "none":
      return h
    x = h.astype(self.dtype)
    if self.kind == "linear":
      return h + (x @ self.w[...].astype(self.dtype) + self.b[...].astype(self.dtype))
    hidden = jax.nn.gelu(
      x @ self.down[...].astype(self.dtype) + self.down_bias[...].astype(self.dtype)
    )
    return h + (hidden @ self.up[...].astype(self.dtype) + self.up_bias[...].astype(self.dtype))


class ExitClassifier(nnx.Module):
  """Every exit's learned confidence (CALM's early-exit classifier): the probability that the exit's
  token equals the final exit's, from the exit features. Parameters are stacked over the L exits
  ([L, ...]), so `decoder/exit_classifier` is one subtree a run can train alone.

  "linear": sigmoid(f . w_j + b_j); "mlp": sigmoid(relu(f W_j + c_j) . w_j + b_j), W_j [D, A].
  """

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    self.kind = config.exit_classifier
    layers, d, a, pd = (
      config.decoder_layers,
      config.d_model,
      config.exit_classifier_dim,
      config.param_dtype,
    )
    inputs = d
    if self.kind == "mlp":
      self.hidden = param(rngs, (layers, d, a), (None, "embed", "mlp"), dtype=pd)
      self.hidden_bias = param(None, (layers, a), (None, "mlp"), "zeros", pd)
      inputs = a
    self.kernel = param(rngs, (layers, inputs), (None, None), dtype=pd)
    self.bias = param(None, (layers,), (None,), "zeros", pd)

  def logit(
    self, features: Array, layer: int | None = None, *, exits: Array | None = None
  ) -> Array:
    """Exit `layer`'s (0-based) logit from its features [..., D] -> [...] float32; with `layer`
    None, every exit's at once from features [L, ..., D] -> [L, ...], or the given `exits`' (0-based
    [E], may be traced) from their features [E, ..., D] -> [E, ...]."""
    weights = {
      name: getattr(self, name)[...].astype(jnp.float32)
      for name in ("hidden", "hidden_bias", "kernel", "bias")
      if hasattr(self, name)
    }
    if layer is not None:
      return _probe_logit(features.astype(jnp.float32), {k: v[layer] for k, v in weights.items()})
    if exits is not None:
      weights = {k: v[exits] for k, v in weights.items()}
    return jax.vmap(_probe_logit)(features.astype(jnp.float32), weights)

  def __call__(self, features: Array, layer: int | None = None) -> Array:
    """The probability in [0, 1] (float32); shapes as `logit`."""
    return jax.nn.sigmoid(self.logit(features, layer))


def _probe_logit(x: Array, weights: dict[str, Array]) -> Array:
  """One exit's probe: x [..., D] float32 -> [...]."""
  if "hidden" in weights:
    x = jax.nn.relu(x @ weights["hidden"] + weights["hidden_bias"])  # [..., A]
  return x @ weights["kernel"] + weights["bias"]
