"""Deep-supervision losses over the exits of a multi-exit decoder.

`deed` (default):  L = mean_l CE_l + CE_L     (DEED: the mean alone degrades the final exit)
`linear`:          L = sum_l (l / sum_k k) CE_l   (CALM's weighting)
`final`:           L = CE_L                   (the plain single-exit baseline)

The head is applied one exit at a time inside a rematerialised `lax.scan`, so only one exit's
[B, T, V] logits exist at a time, in the forward and the backward pass.

A model with an exit classifier also learns, at every exit below the last, whether the exit's token
equals the final exit's (CALM's consistency target for its learned confidence), with binary
cross-entropy on the classifier's logits; see `exit_classifier_losses`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

LOSS_MODES = ("deed", "linear", "final")


def exit_weights(mode: str, num_exits: int) -> np.ndarray:
  """Weight of each exit's mean cross-entropy in the total loss: [L]."""
  if mode == "deed":
    weights = np.full((num_exits,), 1.0 / num_exits)
    weights[-1] += 1.0
  elif mode == "linear":
    layers = np.arange(1, num_exits + 1, dtype=np.float64)
    weights = layers / layers.sum()
  elif mode == "final":
    weights = np.zeros((num_exits,))
    weights[-1] = 1.0
  else:
    raise ValueError(f"Unknown loss mode {mode!r}; choose one of {LOSS_MODES}.")
  return weights.astype(np.float32)


def cross_entropy(logits: jax.Array, targets: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Token cross-entropy: logits [..., V] float32, targets [...] int -> [...]."""
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  if label_smoothing == 0.0:
    return nll
  smooth = -jnp.mean(log_probs, axis=-1)
  return (1.0 - label_smoothing) * nll + label_smoothing * smooth


def per_exit_losses(
    head: Callable[[jax.Array], jax.Array],  # [B, T, D] -> [B, T, V] float32
    features: jax.Array,  # [L, B, T, D]
    targets: jax.Array,  # [B, T]
    mask: jax.Array,  # [B, T]
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mean cross-entropy [L] and token accuracy [L] of every exit over the unmasked tokens, and every
  exit's predicted tokens [L, B, T] (int32)."""
  mask = mask.astype(jnp.float32)
  num_tokens = jnp.maximum(mask.sum(), 1.0)

  @jax.checkpoint
  def one_exit(hidden):  # [B, T, D] -> (), (), [B, T]
    logits = head(hidden)  # [B, T, V]
    loss = (cross_entropy(logits, targets, label_smoothing) * mask).sum() / num_tokens
    predictions = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    correct = ((predictions == targets) * mask).sum() / num_tokens
    return loss, correct, predictions

  _, (losses, accuracies, predictions) = jax.lax.scan(lambda c, h: (c, one_exit(h)), None, features)
  return losses, accuracies, predictions


def exit_classifier_losses(classifier_logits: jax.Array, predictions: jax.Array, mask: jax.Array
                           ) -> tuple[jax.Array, jax.Array]:
  """Binary cross-entropy [L] and accuracy [L] of every exit's classifier over the unmasked tokens,
  against the target "this exit predicts the final exit's token".

  classifier_logits [L, B, T] (float32, before the sigmoid), predictions [L, B, T], mask [B, T]. The
  last exit's target is always 1 (it agrees with itself); callers average over the exits below it.
  """
  mask = mask.astype(jnp.float32)
  num_tokens = jnp.maximum(mask.sum(), 1.0)
  agrees = (predictions == predictions[-1]).astype(jnp.float32)  # [L, B, T]
  # -log sigmoid(z) for a positive target, -log(1 - sigmoid(z)) for a negative one, stably.
  bce = jax.nn.softplus(classifier_logits) - agrees * classifier_logits  # [L, B, T]
  correct = ((classifier_logits > 0) == (agrees > 0)).astype(jnp.float32)
  return (bce * mask).sum(axis=(1, 2)) / num_tokens, (correct * mask).sum(axis=(1, 2)) / num_tokens
