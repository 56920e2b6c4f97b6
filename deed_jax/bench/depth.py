"""Exit depth of a decode, and the threshold that reaches a target depth."""

from __future__ import annotations

import numpy as np


def mean_exit(out) -> float:
  layers = np.asarray(out.exit_layers)
  return float(layers[layers > 0].mean())


def threshold_for_depth(run, encoder_inputs: dict, depth: float, steps: int = 20) -> float:
  """Bisect the threshold whose mean exit layer on `encoder_inputs` is closest to `depth`, on a log
  scale over [1e-9, 1]: a random model's max-prob confidences with a large vocabulary sit near 1 / V,
  far below what a linear bisection resolves."""
  low, high, best = 1e-9, 1.0, None
  for _ in range(steps):
    mid = (low * high) ** 0.5
    mean = mean_exit(run(encoder_inputs, mid))
    if best is None or abs(mean - depth) < abs(best[1] - depth):
      best = (mid, mean)
    low, high = (mid, high) if mean < depth else (low, mid)
  return best[0]
