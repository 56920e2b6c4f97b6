"""Sampled exit supervision: which exits a train step supervises, and how their losses are reweighed.

Deep supervision runs the LM head once per exit; at real vocabularies that doubles a step's cost.
With `exits_per_step = k > 0` a step supervises the final exit and k of the L - 1 intermediate ones:

`random`: k drawn uniformly without replacement, from the step's key (a function of the seed and the
          step, so a resumed run draws what the uninterrupted one would have). Each intermediate exit
          is drawn with probability k / (L - 1), so its weight is multiplied by (L - 1) / k: the
          expected loss (and gradient) is the full deep-supervision loss.
`rotate`: LayerSkip's rotational curriculum, deterministic in the step: step t supervises
          intermediate exits (t k + i) mod (L - 1), i < k, so every exit is supervised within
          ceil((L - 1) / k) consecutive steps; the same (L - 1) / k factor makes the loss averaged
          over a period the full loss.

The choice is traced (a [k + 1] array of exit indices, the final exit last), so the step compiles
once whatever it draws.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

EXIT_SCHEDULES = ("random", "rotate")


class ExitSampling(NamedTuple):
  """`config.loss.exits_per_step` intermediate exits per step, chosen by `exit_schedule`."""

  exits_per_step: int
  schedule: str = "random"


def supervised_exits(
  sampling: ExitSampling, num_exits: int, step: jax.Array, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """-> (exit indices [k + 1] int32, 0-based, the final exit last; the factor [k + 1] float32 each
  exit's loss weight is multiplied by). `step` int32 [] (traced); `key` the step's random key."""
  k, intermediate = sampling.exits_per_step, num_exits - 1
  if not 0 < k <= intermediate:
    raise ValueError(f"exits_per_step={k} must be in 1..{intermediate} for {num_exits} exits.")
  if sampling.schedule == "random":
    chosen = jax.random.choice(key, intermediate, (k,), replace=False).astype(jnp.int32)
  elif sampling.schedule == "rotate":
    chosen = ((step * k + jnp.arange(k)) % intermediate).astype(jnp.int32)
  else:
    raise ValueError(
      f"Unknown exit schedule {sampling.schedule!r}; choose one of {EXIT_SCHEDULES}."
    )
  exits = jnp.concatenate([chosen, jnp.full((1,), intermediate, jnp.int32)])
  factor = jnp.concatenate(
    [jnp.full((k,), intermediate / k, jnp.float32), jnp.ones((1,), jnp.float32)]
  )
  return exits, factor
