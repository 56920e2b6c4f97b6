"""How deep supervision weighs the exits' losses (the losses themselves: `deed_jax.exit_metrics`).

`deed` (default):  L = mean_l CE_l + CE_L     (DEED: the mean alone degrades the final exit)
`linear`:          L = sum_l (l / sum_k k) CE_l   (CALM's weighting)
`final`:           L = CE_L                   (the plain single-exit baseline)

A model with an exit classifier also learns, at every exit below the last, whether the exit's token
equals the final exit's (CALM's consistency target for its learned confidence);
see `deed_jax.exit_metrics.exit_classifier_losses`.

`config.loss.exits_per_step` > 0 supervises only that many intermediate exits per step (and the final
one), reweighed to keep the expected loss (`training.exit_schedule`); `config.loss.vocab_chunk` sets
the vocabulary chunk of the head's loss (`models.head_loss`).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from deed_jax.training.exit_schedule import ExitSampling

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


def objective(loss: ml_collections.ConfigDict, num_exits: int) -> dict:
  """`make_train_step`'s loss arguments from a run's `config.loss` (checked by config_defaults)."""
  sampled = 0 < loss.exits_per_step < num_exits - 1  # all intermediate exits: no sampling
  return dict(
    exit_weights=exit_weights(loss.mode, num_exits),
    label_smoothing=loss.label_smoothing,
    classifier_weight=loss.exit_classifier_weight,
    exit_sampling=ExitSampling(loss.exits_per_step, loss.exit_schedule) if sampled else None,
    vocab_chunk=loss.vocab_chunk,
  )
