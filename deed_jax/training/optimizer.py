"""AdamW with linear warmup, cosine decay and global-norm clipping (weight decay on matrices only)."""

from __future__ import annotations

import jax
import ml_collections
import optax


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  warmup = min(config.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=config.learning_rate,
    warmup_steps=warmup,
    decay_steps=max(total_steps, warmup + 1),
    end_value=config.learning_rate * config.end_lr_factor,
  )


def make_optimizer(
  config: ml_collections.ConfigDict, total_steps: int, accumulate_steps: int = 1
) -> optax.GradientTransformation:
  """`config` is the `optimizer` block of a training config; `total_steps` counts train steps.

  With `accumulate_steps` k > 1 (`optax.MultiSteps`) each train step adds its gradient to a running
  mean, and every k-th step applies the update of the mean: k steps of batch B update like one step
  of batch kB, in the memory of B. The schedule then counts updates (total_steps / k)."""
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  tx = optax.chain(
    optax.clip_by_global_norm(config.clip_norm),
    optax.adamw(
      learning_rate_schedule(config, total_steps // accumulate_steps),
      b1=config.b1,
      b2=config.b2,
      weight_decay=config.weight_decay,
      mask=decay_mask,
    ),
  )
  if accumulate_steps == 1:
    return tx
  return optax.MultiSteps(tx, every_k_schedule=accumulate_steps).gradient_transformation()
