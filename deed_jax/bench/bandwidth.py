"""The weight-streaming floor of batch-1 decoding: bytes one token reads / measured memory bandwidth.

At batch 1 every decoder layer's weights, the LM head and the caches are read once per token and
reused for almost nothing, so no decoder can beat reading them at the machine's memory bandwidth.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from deed_jax.checkpoint import flat_params
from deed_jax.models import MultiExitEncoderDecoder
from deed_jax.timing import median_seconds


def memory_bandwidth(nbytes: int = 1 << 30, repeats: int = 5) -> float:
  """Read bandwidth in bytes/s: the median time of a jitted sum over `nbytes` of float32."""
  x = jnp.ones((nbytes // 4,), jnp.float32)
  return nbytes / median_seconds(jax.jit(jnp.sum), x, repeats=repeats)


def static_bytes_per_token(
  model: MultiExitEncoderDecoder, source_length: int, new_tokens: int
) -> int:
  """What full-depth decoding reads per token at batch 1: every decoder layer's weights, the last
  exit's adapter and norms, the LM head (and its bias), the cross-attention K/V and, on average, half
  of the self-attention cache."""
  cfg = model.config
  params = flat_params(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  last_adapter = f"decoder/adapters/{cfg.decoder_layers - 1}/"
  weights = sum(
    v.size * v.dtype.itemsize
    for k, v in params.items()
    if k.startswith(("decoder/layers/", last_adapter, "decoder/final_norm/"))
    or k in ("decoder/token_embedding/embedding", "lm_head", "logits_bias")
  )
  kv_width = cfg.num_heads * cfg.resolved_head_dim
  itemsize = jnp.dtype(cfg.dtype).itemsize
  cross = cfg.decoder_layers * 2 * source_length * kv_width * itemsize
  self_attention = cfg.decoder_layers * 2 * (new_tokens // 2) * kv_width * itemsize
  return int(weights + cross + self_attention)
