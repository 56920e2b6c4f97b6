"""The Pareto plot's metric window: every early-exit point inside, readable height, no room above 100
that a metric can never reach."""

from __future__ import annotations

import pytest

from deed_jax.evaluation.plots import metric_window


def _rows(static: float, deed: list[float], fixed: list[float]) -> list[dict]:
  return (
    [{"exit_mode": "static", "metric": static}]
    + [{"exit_mode": "deed", "metric": m} for m in deed]
    + [{"exit_mode": "fixed", "metric": m} for m in fixed]
  )


@pytest.mark.parametrize(
  "static, deed, fixed, expected",
  [
    # Near the top of the scale (a local forms run: 97.6 everywhere but the shallow fixed exits):
    # the window stops at 102 and reaches 20 points down instead of rising to 105.
    (97.6, [96.6, 97.6, 97.6], [24.6, 90.0, 96.0], (82.0, 102.0)),
    # Mid-scale: 10 points below the lowest early-exit setting, 8% of the rest above the best + 1.
    (60.0, [45.0, 58.0], [10.0, 50.0], (35.0, 66.2)),
    # A low metric: never below 0, still 20 points tall.
    (4.0, [2.0, 3.0], [0.0], (0.0, 20.0)),
  ],
)
def test_the_window_holds_the_curves_and_stays_within_the_scale(static, deed, fixed, expected):
  rows = _rows(static, deed, fixed)
  bottom, top = metric_window(rows)
  assert (bottom, top) == pytest.approx(expected)
  assert 0.0 <= bottom and top <= 102.0 and top - bottom >= 20.0
  assert all(bottom <= r["metric"] <= top for r in rows if r["exit_mode"] != "fixed")
