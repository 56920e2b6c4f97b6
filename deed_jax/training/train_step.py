"""The train state and the jitted train/eval steps (pure functions over `nnx.split` state).

`train_only` (parameter path names, e.g. ("exit_classifier",)) trains a subset of the model: the
gradient is taken with respect to that subset alone, the optimizer state covers only it, and every
other parameter stays bit-identical (a frozen model's exit classifier trained afterwards).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from deed_jax import sharding
from deed_jax.exit_metrics import DEFAULT_VOCAB_CHUNK, ExitMetrics, exit_metrics
from deed_jax.models import ModelConfig, MultiExitEncoderDecoder
from deed_jax.param_tree import filter_params, merge_params, path_holds
from deed_jax.training.exit_schedule import ExitSampling, supervised_exits

_EXIT_DRAW_STREAM = 1  # fold_in tag of the step key's stream that draws sampled exits


class TrainState(NamedTuple):
  step: jax.Array  # int32 []
  params: Any  # pure dict of arrays (nnx.to_pure_dict of the model's Params)
  opt_state: Any  # of the trained params only (`trained_params`)


def trained_params(params: dict, train_only: Sequence[str] = ()) -> dict:
  """The part of `params` a run trains: the subtrees named in `train_only`, or all when empty."""
  if not train_only:
    return params
  return filter_params(params, lambda path: path_holds(path, train_only))


def split_model(model: MultiExitEncoderDecoder) -> tuple[nnx.GraphDef, dict]:
  """-> (graphdef, params as a pure dict). The model holds nothing but Params."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  if jax.tree.leaves(rest):
    raise TypeError(f"The model holds non-Param state: {rest}")
  return graphdef, nnx.to_pure_dict(params)


def merge_model(graphdef: nnx.GraphDef, params: dict) -> MultiExitEncoderDecoder:
  """Rebuild the model from a pure dict of arrays (inside jit these are tracers)."""
  return nnx.merge(graphdef, params)


def total_loss(
  metrics: ExitMetrics, exit_weights: jax.Array, classifier_weight: float
) -> jax.Array:
  """The training objective: weighted exit losses (`losses.exit_weights`), plus the classifier's
  binary cross-entropy averaged over the exits below the last, times `classifier_weight`."""
  loss = jnp.sum(exit_weights * metrics.loss)
  if metrics.classifier_loss is not None and metrics.classifier_loss.shape[0] > 1:
    loss = loss + classifier_weight * jnp.mean(metrics.classifier_loss[:-1])
  return loss


def init_train_state(
  model: MultiExitEncoderDecoder, tx: optax.GradientTransformation, train_only: Sequence[str] = ()
) -> tuple[nnx.GraphDef, TrainState]:
  graphdef, params = split_model(model)
  return graphdef, TrainState(
    jnp.zeros((), jnp.int32), params, tx.init(trained_params(params, train_only))
  )


class StateLayout(NamedTuple):
  """Where a train state lives on a mesh, known before any of it exists."""

  graphdef: nnx.GraphDef
  abstract: TrainState  # of ShapeDtypeStructs carrying their shardings (a restore target)
  shardings: TrainState  # of NamedShardings
  init: Callable[
    [], TrainState
  ]  # builds the initial state, already sharded (no copy on one device)


def train_state_layout(
  config: ModelConfig,
  tx: optax.GradientTransformation,
  seed: int,
  train_only: Sequence[str],
  mesh: jax.sharding.Mesh,
  rules: sharding.Rules,
) -> StateLayout:
  """The train state's structure and shardings (parameters by their logical axes and `rules`;
  optimizer moments like their parameters), and a jitted init that creates each array in its shards.

  The init's random draws do not depend on the mesh (jax's partitionable threefry), so every topology
  starts from the same parameters."""

  def init() -> TrainState:
    return init_train_state(MultiExitEncoderDecoder(config, rngs=nnx.Rngs(seed)), tx, train_only)[1]

  abstract_model = nnx.eval_shape(lambda: MultiExitEncoderDecoder(config, rngs=nnx.Rngs(seed)))
  graphdef, _ = split_model(abstract_model)
  shapes = jax.eval_shape(init)
  params = sharding.param_shardings(
    shapes.params, sharding.param_logical_axes(abstract_model), mesh, rules
  )
  shardings = sharding.tree_shardings(shapes, params, mesh)
  abstract = jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings
  )
  return StateLayout(graphdef, abstract, shardings, jax.jit(init, out_shardings=shardings))


def _step_metrics(loss: jax.Array, exits: ExitMetrics, grads) -> dict:
  """What a train step reports: the objective, every exit's loss and accuracy, the gradient norm."""
  metrics = {
    "loss": loss,
    "exit_loss": exits.loss,
    "exit_token_accuracy": exits.token_accuracy,
    "grad_norm": optax.tree.norm(grads),
  }
  if exits.classifier_loss is not None:
    metrics.update(
      exit_classifier_loss=exits.classifier_loss,
      exit_classifier_accuracy=exits.classifier_accuracy,
    )
  return metrics


def make_loss_fn(
  graphdef: nnx.GraphDef,
  exit_weights: np.ndarray,
  label_smoothing: float = 0.0,
  *,
  classifier_weight: float = 0.0,
  exit_sampling: ExitSampling | None = None,
  vocab_chunk: int = DEFAULT_VOCAB_CHUNK,
  remat: bool = False,
) -> Callable:
  """-> `loss_fn(params, batch, step, rng) -> (loss, per-exit metrics [L] each)`: the training
  objective (`total_loss`) of the model `params` (a pure dict) on a batch at train step `step`.

  `exit_sampling` supervises the final exit and a few intermediate ones per step, reweighed so the
  expected loss is the full one (`training.exit_schedule`); None: every exit with a weight. Exits a
  step does not supervise do not run the head; their metrics are NaN."""
  num_exits = len(exit_weights)
  all_weights = np.asarray(exit_weights, np.float32)
  # Exits whose loss counts; the others' heads are not run, unless an exit classifier needs every
  # exit's predictions.
  weighted = np.flatnonzero(all_weights)
  if exit_sampling is not None and len(weighted) < num_exits:
    raise ValueError("Sampled exit supervision needs a loss that weighs every exit.")

  def supervised(model, step, key) -> tuple[jax.Array | None, jax.Array]:
    """-> (the exits the step supervises [E] (None: all), their loss weights [E])."""
    if exit_sampling is not None:
      exits, factor = supervised_exits(exit_sampling, num_exits, step, key)
      return exits, jnp.asarray(all_weights)[exits] * factor
    if model.config.exit_classifier != "none" or len(weighted) == num_exits:
      return None, jnp.asarray(all_weights)
    return jnp.asarray(weighted), jnp.asarray(all_weights[weighted])

  def loss_fn(params, batch, step, rng):
    model = merge_model(graphdef, params)
    # The exits' draw takes its own stream of the step's key, so dropout stays as without sampling.
    exits, weights = supervised(model, step, jax.random.fold_in(rng, _EXIT_DRAW_STREAM))
    metrics = exit_metrics(
      model,
      batch,
      label_smoothing,
      dropout_rng=rng,
      remat=remat,
      exits=exits,
      vocab_chunk=vocab_chunk,
    )
    loss = total_loss(metrics, weights, classifier_weight)
    if exits is not None:  # back to one entry per exit
      metrics = jax.tree.map(
        lambda m: jnp.full((num_exits,), jnp.nan, m.dtype).at[exits].set(m), metrics
      )
    return loss, metrics

  return loss_fn


def make_train_step(
  graphdef: nnx.GraphDef,
  tx: optax.GradientTransformation,
  exit_weights: np.ndarray,
  label_smoothing: float = 0.0,
  *,
  train_only: Sequence[str] = (),
  state_shardings: TrainState | None = None,
  batch_sharding: jax.sharding.NamedSharding | None = None,
  remat: bool = False,
  **loss_options,
):
  """-> jitted `step(state, batch, rng) -> (state, metrics)`; the state's buffers are donated.

  The loss is `make_loss_fn`'s (`loss_options`: its classifier_weight, exit_sampling, vocab_chunk).
  With `state_shardings` and `batch_sharding` (a `StateLayout`'s and `sharding.batch_sharding`) the
  step is compiled for them: the state stays where it is, metrics come back replicated. `remat`
  rematerialises every layer in the backward pass (less memory, ~one more forward pass of time)."""
  loss_fn = make_loss_fn(graphdef, exit_weights, label_smoothing, remat=remat, **loss_options)

  def train_step(state: TrainState, batch: dict, rng: jax.Array):
    trained = trained_params(state.params, train_only)
    step_rng = jax.random.fold_in(rng, state.step)
    (loss, exits), grads = jax.value_and_grad(
      lambda trained: loss_fn(merge_params(state.params, trained), batch, state.step, step_rng),
      has_aux=True,
    )(trained)
    updates, opt_state = tx.update(grads, state.opt_state, trained)
    params = merge_params(state.params, optax.apply_updates(trained, updates))
    return TrainState(state.step + 1, params, opt_state), _step_metrics(loss, exits, grads)

  if state_shardings is None:
    return jax.jit(train_step, donate_argnums=0)
  replicated = sharding.replicated(batch_sharding.mesh)
  return jax.jit(
    train_step,
    donate_argnums=0,
    in_shardings=(state_shardings, batch_sharding, replicated),
    out_shardings=(state_shardings, replicated),
  )
