"""Confidence of an exit, in [0, 1]; an exit is taken when it is >= tau.

Two families. Head confidences read the exit's next-token distribution, so the LM head runs at every
layer a row may exit at: `max_prob` (top-1 probability), `margin` (top-1 minus top-2 probability,
CALM) and `entropy` (1 - H(p) / log V). Head-free confidences let the head run once per token, at the
exit: `state` (CALM's hidden-state saturation) compares layer j's output with its input at the
current position, (1 + cos(h_j, h_{j-1})) / 2 with h_0 the token's embedding; `classifier` is the
model's learned exit classifier (CALM's "meta" measure: the probability that the exit's token is the
final exit's, from the exit features; `ModelConfig.exit_classifier`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

HEAD_CONFIDENCES = ("max_prob", "margin", "entropy")
HEAD_FREE = ("state", "classifier")
CONFIDENCES = HEAD_CONFIDENCES + HEAD_FREE
_NORM_FLOOR = 1e-12  # A zero state (never produced by a real layer) gives cos 0, not NaN.


def needs_head(kind: str) -> bool:
  """Whether the confidence reads the exit's logits."""
  return kind not in HEAD_FREE


def confidence(logits: jax.Array, kind: str) -> jax.Array:
  """A head confidence from logits [..., V] -> [...]."""
  return confidence_from_log_probs(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), kind)


def confidence_from_log_probs(log_probs: jax.Array, kind: str) -> jax.Array:
  """The same from log-probabilities [..., V] float32 (decoders have them at hand)."""
  if kind == "max_prob":
    return jnp.exp(log_probs.max(axis=-1))
  if kind == "margin":
    top2 = jnp.exp(jax.lax.top_k(log_probs, 2)[0])
    return top2[..., 0] - top2[..., 1]
  if kind == "entropy":
    # A banned token (-inf, generation constraints) adds 0, not 0 * -inf.
    terms = jnp.where(log_probs > -jnp.inf, jnp.exp(log_probs) * log_probs, 0.0)
    entropy = -terms.sum(axis=-1)
    return 1.0 - entropy / jnp.log(log_probs.shape[-1])
  raise ValueError(f"Unknown head confidence {kind!r}.")


def state_confidence(state: jax.Array, previous_state: jax.Array) -> jax.Array:
  """CALM's state saturation: layer j's output and its input, [..., D] each -> [...] float32."""
  a, b = state.astype(jnp.float32), previous_state.astype(jnp.float32)
  norms = jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1), _NORM_FLOOR)
  return jnp.clip(0.5 * (1.0 + (a * b).sum(axis=-1) / norms), 0.0, 1.0)


class ExitSignals(NamedTuple):
  """Everything an exit's confidence may read, for every exit at once (the naive references)."""

  logits: jax.Array  # [L, ..., V]
  states: jax.Array  # [L + 1, ..., D]: the embedding, then each layer's output
  classifier: jax.Array | None  # [L, ...] the exit classifier's probabilities (None: no classifier)


def exit_confidences(kind: str, signals: ExitSignals) -> jax.Array:
  """Every exit's confidence at once: -> [L, ...]."""
  if kind == "state":
    return state_confidence(signals.states[1:], signals.states[:-1])
  if kind == "classifier":
    if signals.classifier is None:
      raise ValueError("confidence='classifier' needs a model with an exit classifier.")
    return signals.classifier
  return confidence(signals.logits, kind)


def exit_signals(model, features: jax.Array, states: jax.Array) -> ExitSignals:
  """The signals of exit features [L, ..., D] and layer states [L + 1, ..., D] of `model` (a
  MultiExitEncoderDecoder): its head's logits and, when it has one, its classifier's probabilities."""
  classifier = (
    model.decoder.exit_probability(features) if model.config.exit_classifier != "none" else None
  )
  return ExitSignals(model.logits(features), states, classifier)
