"""Learn-then-Test calibration: p-values worked by hand, the fixed sequence, and its guarantee checked
by simulation (seeded, so the same on every machine)."""

from __future__ import annotations

import collections.abc
import math

import numpy as np
import pytest

from deed_jax.errors import UserError
from deed_jax.evaluation import calibration


def _binomial_cdf(k: int, n: int, p: float) -> float:
  return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


def test_p_values_by_hand():
  # No loss in 10 examples against eps 0.3: Hoeffding exp(-10 KL(0 || 0.3)) = 0.7 ** 10; Bentkus
  # e * P(Bin(10, 0.3) = 0) = e * 0.7 ** 10; the smaller is Hoeffding's.
  assert calibration.hoeffding_p_value(0.0, 10, 0.3) == pytest.approx(0.7**10)
  assert calibration.bentkus_p_value(0.0, 10, 0.3) == pytest.approx(math.e * 0.7**10)
  assert calibration.p_value(0.0, 10, 0.3) == pytest.approx(0.7**10)
  # Risk 0.1: KL(0.1 || 0.3) = 0.1 ln(1/3) + 0.9 ln(9/7) = 0.11632 -> 0.3125; Bentkus
  # e * (0.7 ** 10 + 10 * 0.3 * 0.7 ** 9) = 0.4059.
  kl = 0.1 * math.log(0.1 / 0.3) + 0.9 * math.log(0.9 / 0.7)
  assert calibration.hoeffding_p_value(0.1, 10, 0.3) == pytest.approx(math.exp(-10 * kl))
  assert calibration.hoeffding_p_value(0.1, 10, 0.3) == pytest.approx(0.3125, abs=1e-4)
  assert calibration.bentkus_p_value(0.1, 10, 0.3) == pytest.approx(
    math.e * _binomial_cdf(1, 10, 0.3)
  )
  assert calibration.bentkus_p_value(0.1, 10, 0.3) == pytest.approx(0.4059, abs=1e-4)
  # With many examples Bentkus' bound is the smaller: 1000 examples, risk 0.03 against 0.05.
  assert calibration.p_value(0.03, 1000, 0.05) == pytest.approx(
    math.e * _binomial_cdf(30, 1000, 0.05)
  )
  assert calibration.p_value(0.03, 1000, 0.05) < calibration.hoeffding_p_value(0.03, 1000, 0.05)
  assert calibration.p_value(0.06, 1000, 0.05) == 1.0  # above eps: never rejected


def test_fixed_sequence_stops_at_the_first_failure():
  n = 100
  full = np.ones(n)
  right, wrong = np.ones(n), np.r_[np.zeros(30), np.ones(n - 30)]  # risk 0 and 0.3
  # Safest first: 0.9 and 0.7 lose nothing (p = 0.95 ** 100 = 0.006 <= 0.1), 0.5 loses 30 points
  # and is not rejected, so 0.3 is never tested although it loses nothing either.
  result = calibration.calibrate(
    full, {0.3: right, 0.5: wrong, 0.7: right, 0.9: right}, max_drop=5.0, delta=0.1
  )
  assert result.chosen == 0.7
  assert [row["candidate"] for row in result.tested] == [0.9, 0.7, 0.5]
  assert [row["rejected"] for row in result.tested] == [True, True, False]
  assert result.tested[0]["p_value"] == pytest.approx(0.95**100)
  assert result.tested[2]["risk"] == pytest.approx(0.3)
  assert "0.7" in result.guarantee() and "100 calibration examples" in result.guarantee()
  # Gains do not offset losses: an example that gets better does not pay for one that got worse.
  mixed = calibration.calibrate(
    np.r_[np.ones(50), np.zeros(50)],
    {0.5: np.r_[np.zeros(50), np.ones(50)]},
    max_drop=5.0,
    delta=0.1,
  )
  assert mixed.tested[0]["risk"] == pytest.approx(0.5) and mixed.chosen is None
  assert "No candidate" in mixed.guarantee()


class _RecordingScores(collections.abc.Mapping):
  """{threshold: scores} that records which thresholds were read (as the evaluator's lazy decoding)."""

  def __init__(self, scores: dict):
    self.scores, self.read = scores, []

  def __getitem__(self, threshold):
    self.read.append(threshold)
    return self.scores[threshold]

  def __iter__(self):
    return iter(self.scores)

  def __len__(self):
    return len(self.scores)


def test_thresholds_past_the_first_failure_are_never_read():
  n = 100
  full, right, wrong = np.ones(n), np.ones(n), np.r_[np.zeros(30), np.ones(n - 30)]
  scores = _RecordingScores({0.1: right, 0.3: right, 0.5: wrong, 0.7: right, 0.9: right})
  result = calibration.calibrate(full, scores, max_drop=5.0, delta=0.1)
  assert result.chosen == 0.7
  assert scores.read == [0.9, 0.7, 0.5]  # 0.3 and 0.1 cost nothing
  # A threshold outside [0, 1] is refused before any is read.
  bad = _RecordingScores({0.5: right, 1.5: right})
  with pytest.raises(UserError, match="1.5"):
    calibration.calibrate(full, bad, max_drop=5.0, delta=0.1)
  assert bad.read == []


def test_the_guarantee_holds_by_simulation():
  """Draw many calibration splits where a threshold's true risk is exactly eps (the null holds): it
  must be chosen in at most a delta fraction of them. Where the true risk is well below eps it should
  be chosen almost always (the test has power)."""
  rng = np.random.default_rng(0)
  n, eps, delta, trials = 200, 0.1, 0.1, 2000
  full = np.ones(n)
  chosen_at_null = chosen_when_safe = 0
  for _ in range(trials):
    at_null = (rng.random(n) >= eps).astype(float)  # each example lost with probability eps
    safe = (rng.random(n) >= 0.02).astype(float)
    result = calibration.calibrate(full, {0.9: full, 0.5: safe, 0.4: at_null}, 100 * eps, delta)
    chosen_at_null += result.chosen == 0.4
    chosen_when_safe += result.chosen in (0.4, 0.5)
  assert chosen_at_null / trials <= delta
  assert chosen_when_safe / trials >= 0.95


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(max_drop=-1.0, delta=0.1), "max_drop must be in"),
    (dict(max_drop=1.0, delta=0.0), "delta must be in"),
    (dict(max_drop=1.0, delta=1.5), "delta must be in"),
  ],
)
def test_bad_settings(kwargs, message):
  with pytest.raises(UserError, match=message):
    calibration.calibrate(np.ones(4), {0.5: np.ones(4)}, **kwargs)


def test_bad_thresholds_and_shapes():
  with pytest.raises(UserError, match="1.5"):
    calibration.calibrate(np.ones(4), {1.5: np.ones(4)}, 1.0, 0.1)
  with pytest.raises(UserError, match=r"\(3,\)"):
    calibration.calibrate(np.ones(4), {0.5: np.ones(3)}, 1.0, 0.1)
  with pytest.raises(UserError, match="at least one example"):
    calibration.calibrate(np.ones(0), {0.5: np.ones(0)}, 1.0, 0.1)


def test_resampled_drops_measure_the_chosen_threshold_on_held_out_examples():
  """2000 examples, all right at full depth; threshold 0.9 loses none, 0.5 loses 20 (1%). Allowing
  5 points, calibration on 1000 always certifies 0.5 (risk 0.01 << 0.05), and the drop measured on
  500 other examples is 100 x (lost among them) / 500: 1 point on average over the draws. Allowing
  0.25 points, 0.5 is never certified (risk 0.01 > 0.0025), so 0.9 is chosen and nothing drops."""
  n = 2000
  full = np.ones(n)
  lossy = np.ones(n)
  lossy[::100] = 0.0  # 20 examples
  scores = {0.5: lossy, 0.9: full}
  loose = calibration.resampled_drops(full, scores, 1000, 500, max_drop=5.0, delta=0.1, trials=300)
  assert {tau for tau, _ in loose} == {0.5}
  drops = np.array([d for _, d in loose])
  assert np.all(drops >= 0) and np.allclose(drops * 5, np.round(drops * 5))  # whole examples of 500
  assert 0.85 < drops.mean() < 1.15 and drops.max() > 1.0 and drops.min() < 1.0
  strict = calibration.resampled_drops(full, scores, 1000, 500, max_drop=0.25, delta=0.1, trials=50)
  assert strict == [(0.9, 0.0)] * 50
  with pytest.raises(UserError, match="must fit, disjoint, in the 2000"):
    calibration.resampled_drops(full, scores, 1600, 500, 5.0, 0.1, trials=1)


def test_groups_are_the_unit_of_the_test():
  # 100 questions about 10 documents (10 each); at tau 0.5 every question of one document is lost.
  groups = [f"doc{i // 10}" for i in range(100)]
  full = np.ones(100)
  lossy = np.ones(100)
  lossy[:10] = 0.0
  # As 100 independent examples: risk 0.1 against eps 0.3 is certified
  # (exp(-100 KL(0.1 || 0.3)) ~ 9e-6 <= 0.1).
  alone = calibration.calibrate(full, {0.5: lossy}, max_drop=30, delta=0.1)
  assert alone.chosen == 0.5
  # As 10 documents: the same risk from 10 draws, exp(-10 KL) = 0.31 and Bentkus
  # e * P(Bin(10, 0.3) <= 1) = 0.40: not certified.
  grouped = calibration.calibrate(full, {0.5: lossy}, max_drop=30, delta=0.1, groups=groups)
  assert grouped.chosen is None
  assert grouped.tested[0]["p_value"] == pytest.approx(
    calibration.p_value(0.1, 10, 0.3)
  ) and grouped.tested[0]["p_value"] == pytest.approx(0.3126, abs=1e-3)
  assert "100 calibration questions about 10 documents/images" in grouped.guarantee()
  # A group's loss is the mean over its questions: groups of 1 and 3 questions, the lone one lost:
  # (1 + 0) / 2 = 0.5 per group, not 1 / 4 per question.
  uneven = calibration.calibrate(
    np.ones(4), {0.5: np.array([0.0, 1, 1, 1])}, 100, 0.1, groups=["a", "b", "b", "b"]
  )
  assert uneven.tested[0]["risk"] == pytest.approx(0.5)
  with pytest.raises(UserError, match="3 groups for 4 examples"):
    calibration.calibrate(np.ones(4), {0.5: np.ones(4)}, 1, 0.1, groups=["a", "b", "c"])


def test_fixed_sequence_by_hand():
  """Costliest first; a policy leaves the sequence when one no costlier has strictly lower risk."""
  costs = {"a": 10.0, "b": 8.0, "c": 6.0, "d": 5.0, "e": 3.0, "f": 2.0}
  risks = {"a": 0.0, "b": 0.0, "c": 0.01, "d": 0.005, "e": 0.02, "f": 0.02}
  # c: d is cheaper and safer. a, b: nothing is safer than no loss (kept as fallbacks for b).
  # e: f is cheaper but no safer (equal risk), so e stays.
  assert calibration.fixed_sequence(costs, risks) == ["a", "b", "d", "e", "f"]
  # Unordered input, same answer.
  assert calibration.fixed_sequence(dict(reversed(costs.items())), risks) == [
    "a",
    "b",
    "d",
    "e",
    "f",
  ]


def test_policies_are_tested_in_the_given_sequence_and_the_cheapest_certified_is_chosen():
  n = 100
  full, right = np.ones(n), np.ones(n)
  wrong = np.r_[np.zeros(30), np.ones(n - 30)]  # a 30-point drop: never certified at 5 points
  scores = _RecordingScores({"a": right, "b": right, "d": right, "e": wrong, "f": right})
  costs = {"a": 10.0, "b": 8.0, "d": 5.0, "e": 3.0, "f": 2.0}
  result = calibration.calibrate(
    full,
    scores,
    max_drop=5.0,
    delta=0.1,
    sequence=["a", "b", "d", "e", "f"],
    cost=costs.get,
    words=lambda key: f"policy {key}",
  )
  assert scores.read == ["a", "b", "d", "e"]  # f comes after the first failure: never decoded
  assert result.chosen == "d" and [row["rejected"] for row in result.tested] == [1, 1, 1, 0]
  assert "policy d keeps" in result.guarantee()
  # The choice among the certified is by cost, not by place in the sequence.
  swapped = calibration.calibrate(
    full,
    {"a": right, "b": right},
    5.0,
    0.1,
    sequence=["a", "b"],
    cost={"a": 1, "b": 2}.get,
    words=str,
  )
  assert swapped.chosen == "a"


def test_an_error_rate_is_bounded_clipped_and_says_so():
  """CER is unbounded per example: quality is 1 - min(CER, 1), and the guarantee's words say so."""
  from deed_jax.evaluation.splits import loss_words, quality

  assert quality(np.array([0.0, 0.25, 3.0]), "cer").tolist() == [1.0, 0.75, 0.0]
  assert quality(np.array([0.0, 0.25]), "anls").tolist() == [0.0, 0.25]
  words = loss_words("cer")
  assert "rise in cer" in words and "clipped at 1" in words
  result = calibration.calibrate(np.ones(50), {0.5: np.ones(50)}, 5.0, 0.1, loss=words)
  assert "clipped at 1" in result.guarantee()
