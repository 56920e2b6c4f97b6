"""Teacher-forced metrics of every exit of a multi-exit decoder: cross-entropy, token accuracy and the
exit classifier's, shared by training (its loss) and evaluation (per-exit validation).

The head's cross-entropy is computed over vocabulary chunks (`models.head_loss`) for all the exits'
tokens at once: no [B, T, V] logits exist for any exit, in the forward or the backward pass; the
largest transient is [B*T, vocab_chunk]. Only the exits asked for run the head: a static subset, or a
traced one (sampled exit supervision: `training.exit_schedule`), gathered as one [E, B, T, D] array.

A model with an exit classifier also learns, at every exit below the last, whether the exit's token
equals the final exit's (CALM's consistency target for its learned confidence), with binary
cross-entropy on the classifier's logits; see `exit_classifier_losses`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from deed_jax.models import MultiExitEncoderDecoder, encoder_inputs
from deed_jax.models.head_loss import HeadWeights, chunked_cross_entropy

# The head loss's transient: [B*T, 4096] float32 (E exits: chunks of 4096 / E columns each).
DEFAULT_VOCAB_CHUNK = 4096


class ExitMetrics(NamedTuple):
  """Teacher-forced metrics of every exit on a batch."""

  loss: jax.Array  # [L] mean cross-entropy
  token_accuracy: jax.Array  # [L]
  classifier_loss: jax.Array | None  # [L] binary cross-entropy of the exit classifier (None: none)
  classifier_accuracy: jax.Array | None  # [L]


def per_exit_losses(
  head: HeadWeights,
  features: jax.Array,  # [E, B, T, D] float32, as the head reads them (`model.head_inputs`)
  targets: jax.Array,  # [B, T]
  mask: jax.Array,  # [B, T]
  label_smoothing: float = 0.0,
  vocab_chunk: int = DEFAULT_VOCAB_CHUNK,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mean cross-entropy [E] and token accuracy [E] of every given exit over the unmasked tokens, and
  their predicted tokens [E, B, T] (int32).

  The exits' tokens go through the head together, [E*B*T, D], so each pass reads the head's table
  once, not E times; chunks are vocab_chunk / E columns wide, so the transient stays
  [B*T, vocab_chunk] whatever E."""
  num_exits = features.shape[0]
  mask = mask.astype(jnp.float32)
  num_tokens = jnp.maximum(mask.sum(), 1.0)
  nll, predictions = chunked_cross_entropy(
    features.reshape(-1, features.shape[-1]),  # [E*B*T, D]
    head,
    jnp.tile(targets.reshape(-1), num_exits),  # [E*B*T]
    label_smoothing,
    max(1, vocab_chunk // num_exits),
  )
  shape = (num_exits, *targets.shape)
  nll, predictions = nll.reshape(shape), predictions.reshape(shape)  # [E, B, T]
  losses = (nll * mask).sum(axis=(1, 2)) / num_tokens
  accuracies = ((predictions == targets) * mask).sum(axis=(1, 2)) / num_tokens
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
  exits: Sequence[int] | jax.Array | None = None,
  vocab_chunk: int = DEFAULT_VOCAB_CHUNK,
) -> ExitMetrics:
  """Teacher-forced metrics of every exit on a batch (and of its exit classifier, if any).

  `encoded` (encoder states [B, S, D], mask [B, S]) reuses an encoder pass the caller already ran.
  The classifier reads the exit features through `stop_gradient`: its loss trains the classifier
  alone and never moves the model it judges. `remat` rematerialises every layer. `exits` (0-based,
  static or traced [E]) limits the head passes to those exits: the metrics are then theirs alone,
  [E] (a final-exit-only loss pays for one head, not L). With an exit classifier the final exit must
  be the last of them: it is the classifier's target.
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
    exits = jnp.asarray(exits, jnp.int32)
    features = features[exits]  # [E, B, T, D]
  losses, accuracies, predictions = per_exit_losses(
    model.head_weights(),
    model.head_inputs(features),
    batch["targets"],
    batch["target_mask"],
    label_smoothing,
    vocab_chunk,
  )
  if model.config.exit_classifier == "none":
    return ExitMetrics(losses, accuracies, None, None)
  # [E, B, T]
  logits = model.decoder.exit_classifier.logit(jax.lax.stop_gradient(features), exits=exits)
  return ExitMetrics(
    losses, accuracies, *exit_classifier_losses(logits, predictions, batch["target_mask"])
  )
