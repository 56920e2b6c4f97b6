"""The exit classifier's training: its loss against a hand computation, its independence from the
model it judges, `train_only` freezing everything else, and fitting one afterwards on a trained
workdir through the real entry point (`init_from`), then decoding with it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from deed_jax import checkpoint
from deed_jax.decoding import DecodeConfig, make_generate
from deed_jax.decoding.reference import greedy_reference
from deed_jax.models import MultiExitEncoderDecoder
from deed_jax.train import train_and_evaluate
from deed_jax.training.losses import exit_weights
from deed_jax.training.train_step import init_train_state, make_train_step
from tests.conftest import random_inputs, randomize, tiny_config
from tests.training.configs import tiny_text_config

LAYERS = 3


def _model_and_batch(probe="linear"):
  config = tiny_config(decoder_layers=LAYERS, exit_classifier=probe, exit_classifier_dim=6)
  model = randomize(MultiExitEncoderDecoder(config, rngs=nnx.Rngs(0)), seed=4, scale=0.3)
  encoder_inputs, decoder_ids = random_inputs(config, batch=3, target_length=6)
  targets = np.roll(decoder_ids, -1, axis=1)
  mask = np.ones_like(targets)
  mask[1, 3:] = 0
  batch = {
    **encoder_inputs,
    "decoder_input_ids": decoder_ids,
    "targets": targets,
    "target_mask": mask,
  }
  return model, batch


def _state(model, tx, **options):
  """A train state on copies of the model's arrays (the step donates its state's buffers)."""
  graphdef, state = init_train_state(model, tx, **options)
  return graphdef, state._replace(params=jax.tree.map(jnp.array, state.params))


def _hand_classifier_loss(model, batch) -> float:
  """Mean over exits 1..L-1 of the binary cross-entropy of sigmoid(f . w_j + b_j) against "exit j's
  argmax equals the last exit's", over the unmasked tokens, in float64 loops."""
  features = np.asarray(
    model.exit_features(
      {k: batch[k] for k in ("input_ids", "attention_mask")}, batch["decoder_input_ids"]
    ),
    np.float64,
  )
  predictions = np.asarray(model.logits(features.astype(np.float32))).argmax(-1)  # [L, B, T]
  kernel = np.asarray(model.decoder.exit_classifier.kernel[...], np.float64)
  bias = np.asarray(model.decoder.exit_classifier.bias[...], np.float64)
  per_exit = []
  for j in range(LAYERS - 1):
    total, count = 0.0, 0
    for b, t in zip(*np.nonzero(batch["target_mask"])):
      p = 1.0 / (1.0 + np.exp(-(features[j, b, t] @ kernel[j] + bias[j])))
      agrees = predictions[j, b, t] == predictions[-1, b, t]
      total += -np.log(p) if agrees else -np.log(1.0 - p)
      count += 1
    per_exit.append(total / count)
  return float(np.mean(per_exit))


def test_the_classifier_loss_equals_hand_computation_and_never_moves_the_model():
  model, batch = _model_and_batch()
  weights = exit_weights("deed", LAYERS)
  tx = optax.sgd(0.0)
  graphdef, state = _state(model, tx)
  _, without = make_train_step(graphdef, tx, weights)(state, batch, jax.random.key(0))
  graphdef, state = _state(model, tx)
  _, with_probe = make_train_step(graphdef, tx, weights, classifier_weight=0.5)(
    state, batch, jax.random.key(0)
  )
  expected = _hand_classifier_loss(model, batch)
  np.testing.assert_allclose(
    float(np.mean(with_probe["exit_classifier_loss"][:-1])), expected, rtol=1e-5
  )
  np.testing.assert_allclose(
    float(with_probe["loss"]), float(without["loss"]) + 0.5 * expected, rtol=1e-5
  )

  # One SGD step with and without the classifier's loss: only the classifier differs (it reads the
  # exit features through stop_gradient).
  tx = optax.sgd(0.1)
  stepped = {}
  for weight in (0.0, 1.0):
    graphdef, state = _state(model, tx)
    stepped[weight] = checkpoint.flat_params(
      make_train_step(graphdef, tx, weights, classifier_weight=weight)(
        state, batch, jax.random.key(0)
      )[0].params
    )
  for path in stepped[0.0]:
    same = np.array_equal(np.asarray(stepped[0.0][path]), np.asarray(stepped[1.0][path]))
    assert same != ("exit_classifier" in path), path


@pytest.mark.parametrize("probe", ["linear", "mlp"])
def test_train_only_the_classifier_leaves_every_other_parameter_bit_identical(probe):
  model, batch = _model_and_batch(probe)
  tx = optax.adam(0.05)
  graphdef, state = _state(model, tx, train_only=("exit_classifier",))
  before = {k: np.asarray(v) for k, v in checkpoint.flat_params(state.params).items()}
  probe_size = sum(v.size for k, v in before.items() if "exit_classifier" in k)
  # Adam's moments cover the classifier only (plus the step count).
  assert sum(x.size for x in jax.tree.leaves(state.opt_state)) == 2 * probe_size + 1
  step = make_train_step(
    graphdef,
    tx,
    exit_weights("deed", LAYERS),
    classifier_weight=1.0,
    train_only=("exit_classifier",),
  )
  losses = []
  for _ in range(5):
    state, metrics = step(state, batch, jax.random.key(0))
    losses.append(float(np.mean(metrics["exit_classifier_loss"][:-1])))
  after = checkpoint.flat_params(state.params)
  assert sorted(after) == sorted(before)
  for path, value in after.items():
    moved = not np.array_equal(np.asarray(value), before[path])
    assert moved == ("exit_classifier" in path), path
  assert losses[-1] < losses[0]  # it learns


def test_a_classifier_fitted_afterwards_on_a_trained_workdir_decodes(tmp_path, tfds_dir):
  """init_from a trained workdir (no classifier), adding a linear one and training only it: the
  model's parameters come back unchanged, the classifier is reported per exit, and greedy decoding
  with confidence="classifier" equals the naive reference."""
  source = str(tmp_path / "source")
  train_and_evaluate(
    tiny_text_config(tfds_dir, total_steps=3, checkpoint_every_steps=3), source, progress=False
  )
  config = tiny_text_config(tfds_dir, total_steps=4, checkpoint_every_steps=4)
  config.model = ml_collections.ConfigDict(dict(exit_classifier="linear"))
  config.init_from = source
  config.train_only = ("exit_classifier",)
  workdir = str(tmp_path / "probe")
  results = train_and_evaluate(config, workdir, progress=False)
  assert len(results["exit_classifier_accuracy"]) == 2
  assert all(0.0 <= a <= 1.0 for a in results["exit_classifier_accuracy"])
  model = checkpoint.load_model(workdir)
  assert model.config.exit_classifier == "linear"
  original = checkpoint.flat_params(
    nnx.to_pure_dict(nnx.state(checkpoint.load_model(source), nnx.Param))
  )
  fitted = checkpoint.flat_params(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  assert set(fitted) - set(original) == {
    "decoder/exit_classifier/kernel",
    "decoder/exit_classifier/bias",
  }
  for path, value in original.items():
    np.testing.assert_array_equal(np.asarray(fitted[path]), np.asarray(value), err_msg=path)
  fresh = MultiExitEncoderDecoder(model.config, rngs=nnx.Rngs(config.seed)).decoder.exit_classifier
  assert not np.array_equal(
    np.asarray(model.decoder.exit_classifier.kernel[...]), np.asarray(fresh.kernel[...])
  )  # trained, not the initial values

  inputs = {"input_ids": np.array([[70, 71, 72, 2, 0], [80, 81, 2, 0, 0]], np.int32)}
  inputs["attention_mask"] = (inputs["input_ids"] > 0).astype(np.int32)
  decode = DecodeConfig(max_new_tokens=6, confidence="classifier", threshold=0.5)
  out = make_generate(model, decode)(inputs)
  expected = greedy_reference(model, inputs, decode)
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(expected.tokens))
  np.testing.assert_array_equal(np.asarray(out.exit_layers), np.asarray(expected.exit_layers))


@pytest.mark.parametrize(
  "change, message",
  [
    (dict(train_only=("exit_clasifier",)), "train_only names 'exit_clasifier'"),
    (dict(model=dict(exit_classifier="linear"), loss_weight=0.0), "untrained"),
    (dict(loss_weight=-1.0), "must be >= 0"),
  ],
)
def test_bad_classifier_options_are_refused_before_anything_is_written(
  tmp_path, tfds_dir, change, message
):
  config = tiny_text_config(tfds_dir, total_steps=2)
  if "train_only" in change:
    config.train_only = change["train_only"]
  if "model" in change:
    config.model.update(change["model"])
  if "loss_weight" in change:
    config.loss.exit_classifier_weight = change["loss_weight"]
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=message):
    train_and_evaluate(config, str(workdir), progress=False)
  assert not workdir.exists()
