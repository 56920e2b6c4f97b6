"""Teacher-forced metrics of every exit of a multi-exit decoder: cross-entropy, token accuracy and the
exit classifier's, shared by training (its loss) and evaluation (per-exit validation).

The head is applied one exit at a time inside a rematerialised `lax.scan`, so only one exit's
[B, T, V] logits exist at a time, in the forward and the backward pass.

A model with an exit classifier also learns, at every exit below the last, whether the exit's token
equals the final exit's (CALM's consistency target for its learned confidence), with binary
cross-entropy on the classifier's logits; see `exit_classifier_losses`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from deed_jax.models import MultiExitEncoderDecoder, encoder_inputs


class ExitMetrics(NamedTuple):
  """Teacher-forced metrics of every exit on a batch."""

  loss: jax.Array  # [L] mean cross-entropy
  token_accuracy: jax.Array  # [L]
  classifier_loss: jax.Array | None  # [L] binary cross-entropy of the exit classifier (None: none)
  classifier_accuracy: jax.Array | None  # [L]


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


def exit_classifier_losses(
  classifier_logits: jax.Array, predictions: jax.Array, mask: jax.Array
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


def exit_metrics(
  model: MultiExitEncoderDecoder,
  batch: dict,
  label_smoothing: float = 0.0,
  dropout_rng: jax.Array | None = None,
  encoded: tuple[jax.Array, jax.Array] | None = None,
  remat: bool = False,
  exits: Sequence[int] | None = None,
) -> ExitMetrics:
  """Teacher-forced metrics of every exit on a batch (and of its exit classifier, if any).

  `encoded` (encoder states [B, S, D], mask [B, S]) reuses an encoder pass the caller already ran.
  The classifier reads the exit features through `stop_gradient`: its loss trains the classifier
  alone and never moves the model it judges. `remat` rematerialises every layer. `exits` (0-based,
  for a model without an exit classifier) limits the head passes to those exits: the metrics are
  then theirs alone, [len(exits)] (a final-exit-only loss pays for one head, not L).
  """
  if encoded is None:
    # [L, B, T, D]
    features = model.exit_features(
      encoder_inputs(batch), batch["decoder_input_ids"], dropout_rng=dropout_rng, remat=remat
    )
  else:
    # [L, B, T, D]
    features = model.decoder(
      batch["decoder_input_ids"], *encoded, dropout_rng=dropout_rng, remat=remat
    )
  if exits is not None:
    if model.config.exit_classifier != "none":
      raise ValueError("A model with an exit classifier needs every exit's predictions.")
    features = features[np.asarray(exits)]  # [len(exits), B, T, D]
  losses, accuracies, predictions = per_exit_losses(
    model.logits, features, batch["targets"], batch["target_mask"], label_smoothing
  )
  if model.config.exit_classifier == "none":
    return ExitMetrics(losses, accuracies, None, None)
  logits = model.decoder.exit_classifier.logit(jax.lax.stop_gradient(features))  # [L, B, T]
  return ExitMetrics(
    losses, accuracies, *exit_classifier_losses(logits, predictions, batch["target_mask"])
  )
