"""Confidence of an exit's next-token distribution, in [0, 1]; an exit is taken when it is >= tau."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def confidence(logits: jax.Array, kind: str) -> jax.Array:
  """logits [..., V] float32 -> [...]: max_prob (top-1 probability), margin (top-1 minus top-2
  probability, CALM) or entropy (1 - H(p) / log V)."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  if kind == "max_prob":
    return probs.max(axis=-1)
  if kind == "margin":
    top2 = jax.lax.top_k(probs, 2)[0]
    return top2[..., 0] - top2[..., 1]
  if kind == "entropy":
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    entropy = -(probs * log_probs).sum(axis=-1)
    return 1.0 - entropy / jnp.log(logits.shape[-1])
  raise ValueError(f"Unknown confidence {kind!r}.")
