"""The train state and the jitted train/eval steps (pure functions over `nnx.split` state)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from deed_jax.models import MultiExitEncoderDecoder, encoder_inputs
from deed_jax.training.losses import per_exit_losses


class TrainState(NamedTuple):
  step: jax.Array  # int32 []
  params: Any  # pure dict of arrays (nnx.to_pure_dict of the model's Params)
  opt_state: Any


def split_model(model: MultiExitEncoderDecoder) -> tuple[nnx.GraphDef, dict]:
  """-> (graphdef, params as a pure dict). The model holds nothing but Params."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  if jax.tree.leaves(rest):
    raise TypeError(f"The model holds non-Param state: {rest}")
  return graphdef, nnx.to_pure_dict(params)


def merge_model(graphdef: nnx.GraphDef, params: dict) -> MultiExitEncoderDecoder:
  """Rebuild the model from a pure dict of arrays (inside jit these are tracers)."""
  return nnx.merge(graphdef, params)


def exit_metrics(model: MultiExitEncoderDecoder, batch: dict, label_smoothing: float = 0.0,
                 dropout_rng: jax.Array | None = None,
                 encoded: tuple[jax.Array, jax.Array] | None = None) -> tuple[jax.Array, jax.Array]:
  """Teacher-forced mean cross-entropy [L] and token accuracy [L] of every exit on a batch.

  `encoded` (encoder states [B, S, D], mask [B, S]) reuses an encoder pass the caller already ran.
  """
  if encoded is None:
    features = model.exit_features(encoder_inputs(batch), batch["decoder_input_ids"],
                                   dropout_rng=dropout_rng)  # [L, B, T, D]
  else:
    features = model.decoder(batch["decoder_input_ids"], *encoded, dropout_rng=dropout_rng)  # [L,B,T,D]
  return per_exit_losses(model.logits, features, batch["targets"], batch["target_mask"],
                         label_smoothing)


def init_train_state(model: MultiExitEncoderDecoder, tx: optax.GradientTransformation
                     ) -> tuple[nnx.GraphDef, TrainState]:
  graphdef, params = split_model(model)
  return graphdef, TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, exit_weights: np.ndarray,
                    label_smoothing: float = 0.0):
  """-> jitted `step(state, batch, rng) -> (state, metrics)`; the state's buffers are donated."""
  weights = jnp.asarray(exit_weights)  # [L]

  def loss_fn(params, batch, rng):
    model = merge_model(graphdef, params)
    losses, accuracies = exit_metrics(model, batch, label_smoothing, dropout_rng=rng)
    return jnp.sum(weights * losses), (losses, accuracies)

  def train_step(state: TrainState, batch: dict, rng: jax.Array):
    (loss, (losses, accuracies)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, batch, jax.random.fold_in(rng, state.step))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "exit_loss": losses, "exit_token_accuracy": accuracies,
               "grad_norm": optax.global_norm(grads)}
    return TrainState(state.step + 1, params, opt_state), metrics

  return jax.jit(train_step, donate_argnums=0)
