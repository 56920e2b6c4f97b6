"""Confidence of an exit's next-token distribution, in [0, 1]; an exit is taken when it is >= tau."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def confidence(logits: jax.Array, kind: str) -> jax.Array:
  """logits [..., V] -> [...]: max_prob (top-1 probability), margin (top-1 minus top-2 probability,
  CALM) or entropy (1 - H(p) / log V)."""
  return confidence_from_log_probs(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), kind)


def confidence_from_log_probs(log_probs: jax.Array, kind: str) -> jax.Array:
  """The same from log-probabilities [..., V] float32 (decoders have them at hand)."""
  if kind == "max_prob":
    return jnp.exp(log_probs.max(axis=-1))
  if kind == "margin":
    top2 = jnp.exp(jax.lax.top_k(log_probs, 2)[0])
    return top2[..., 0] - top2[..., 1]
  if kind == "entropy":
    entropy = -(jnp.exp(log_probs) * log_probs).sum(axis=-1)
    return 1.0 - entropy / jnp.log(log_probs.shape[-1])
  raise ValueError(f"Unknown confidence {kind!r}.")
