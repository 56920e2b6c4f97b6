"""Wall-clock timing of jitted calls."""

from __future__ import annotations

import time

import jax


def timed(fn, *args) -> tuple[object, float]:
  """-> (fn(*args) with every array ready, seconds it took)."""
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - start
