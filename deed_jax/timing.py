"""Wall-clock timing of jitted calls."""

from __future__ import annotations

import time

import jax
import numpy as np


def timed(fn, *args) -> tuple[object, float]:
  """-> (fn(*args) with every array ready, seconds it took)."""
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - start


def median_seconds(fn, *args, repeats: int) -> float:
  """The median of `repeats` timed calls of fn(*args), after one untimed call (compile, warm up)."""
  timed(fn, *args)
  return float(np.median([timed(fn, *args)[1] for _ in range(repeats)]))
