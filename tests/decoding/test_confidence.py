"""The confidence measures against hand-worked values and a NumPy float64 recomputation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deed_jax.decoding.confidence import confidence, state_confidence
from tests.decoding.beam_reference import classifier_probabilities
from tests.decoding.helpers import spread_model


def _numpy_confidence(logits: np.ndarray, kind: str) -> np.ndarray:
  z = logits.astype(np.float64)
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  top = np.sort(p, axis=-1)[..., ::-1]
  if kind == "max_prob":
    return top[..., 0]
  if kind == "margin":
    return top[..., 0] - top[..., 1]
  entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)
  return 1.0 - entropy / math.log(p.shape[-1])


@pytest.mark.parametrize(
  "kind, expected",
  [("max_prob", 0.5), ("margin", 0.25), ("entropy", 1.0 - 1.5 * math.log(2) / math.log(3))],
)
def test_hand_worked_distribution(kind, expected):
  logits = np.log(np.array([[0.25, 0.5, 0.25]], np.float32))  # p = (1/4, 1/2, 1/4)
  np.testing.assert_allclose(np.asarray(confidence(logits, kind)), [expected], rtol=1e-6)


@pytest.mark.parametrize("kind", ["max_prob", "margin", "entropy"])
def test_extremes_and_random_logits(kind):
  uniform = np.zeros((1, 8), np.float32)
  certain = np.array([[0.0, 60.0, 0.0, 0.0]], np.float32)
  low = {"max_prob": 1 / 8, "margin": 0.0, "entropy": 0.0}[kind]
  np.testing.assert_allclose(np.asarray(confidence(uniform, kind)), [low], atol=1e-6)
  np.testing.assert_allclose(np.asarray(confidence(certain, kind)), [1.0], atol=1e-6)
  logits = np.random.default_rng(0).normal(scale=3.0, size=(4, 5, 11)).astype(np.float32)  # [.., V]
  ours = np.asarray(confidence(logits, kind))
  assert ours.shape == (4, 5) and ((ours >= 0) & (ours <= 1)).all()
  np.testing.assert_allclose(ours, _numpy_confidence(logits, kind), atol=1e-6)


def test_state_confidence_is_the_mapped_cosine_of_a_layer_output_and_its_input():
  """(1 + cos) / 2: the same direction 1, orthogonal 1/2, opposite 0; a zero state gives 1/2, not
  NaN; scale does not matter."""
  h = np.array([[3.0, 4.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]], np.float32)
  previous = np.array([[6.0, 8.0], [0.0, 2.0], [-2.0, -2.0], [1.0, 0.0]], np.float32)
  np.testing.assert_allclose(
    np.asarray(state_confidence(h, previous)), [1.0, 0.5, 0.0, 0.5], atol=1e-6
  )
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(2, 3, 7, 16)).astype(np.float32)
  expected = 0.5 * (1 + (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)))
  np.testing.assert_allclose(np.asarray(state_confidence(a, b)), expected, atol=1e-6)


@pytest.mark.parametrize("probe", ["linear", "mlp"])
def test_exit_classifier_is_the_probe_written_out_in_numpy(probe):
  """Every exit's probability at once ([L, ...] features) and one exit's (the decoder's per-layer
  path) equal sigmoid(relu(f W_j + c_j) w_j + b_j) (mlp) / sigmoid(f w_j + b_j) (linear) in float64."""
  model = spread_model("text", 0, exit_classifier=probe, exit_classifier_dim=5)
  layers, d = model.config.decoder_layers, model.config.d_model
  features = (
    np.random.default_rng(0).normal(size=(layers, 3, 2, d)).astype(np.float32)
  )  # [L, B, T, D]
  expected = classifier_probabilities(model, features)  # [L, B, T]
  assert expected.std() > 0.05  # the randomized probe separates inputs: a real check
  np.testing.assert_allclose(
    np.asarray(model.decoder.exit_probability(features)), expected, rtol=1e-5, atol=1e-6
  )
  for j in range(layers):
    np.testing.assert_allclose(
      np.asarray(model.decoder.exit_probability(features[j], j)), expected[j], rtol=1e-5, atol=1e-6
    )


def test_exit_classifier_refuses_a_model_without_one():
  model = spread_model("text", 0)
  with pytest.raises(ValueError, match="no exit classifier"):
    model.decoder.exit_probability(np.zeros((model.config.d_model,), np.float32), 0)
