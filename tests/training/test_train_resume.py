"""The real training entry point on the embedded text task: checkpoints, resumption, bad workdirs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import jax
import numpy as np
import pytest

from deed_jax import checkpoint
from deed_jax.train import RESULTS_FILE, train_and_evaluate
from deed_jax.workdir import MODEL_CONFIG_FILE
from tests.training.configs import tiny_text_config


def _final_state(workdir):
  """The newest checkpoint's raw arrays, read back from disk."""
  import orbax.checkpoint as ocp
  path = os.path.join(workdir, "checkpoints")
  step = max(int(p) for p in os.listdir(path) if p.isdigit())
  restored = ocp.PyTreeCheckpointer().restore(os.path.join(path, str(step), "state"))
  return step, restored


def _tree_digest(directory):
  digest = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        digest[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return digest


def test_stopped_and_resumed_run_equals_an_uninterrupted_run(tmp_path, tfds_dir):
  config = tiny_text_config(tfds_dir, total_steps=6, checkpoint_every_steps=3)
  straight = str(tmp_path / "straight")
  results = train_and_evaluate(config, straight, progress=False)
  assert results["step"] == 6 and len(results["exit_exact_match"]) == 2

  resumed = str(tmp_path / "resumed")
  assert train_and_evaluate(config, resumed, stop_at_step=3, progress=False) is None
  step, at_stop = _final_state(resumed)
  assert step == 3 and int(at_stop["step"]) == 3
  train_and_evaluate(config, resumed, progress=False)

  logged = [json.loads(line)["step"] for line in open(os.path.join(resumed, "metrics.jsonl"))
            if "train/loss" in line]
  assert logged == [1, 2, 3, 4, 5, 6]  # The second run continued at step 4, nothing repeated.
  step_a, state_a = _final_state(straight)
  step_b, state_b = _final_state(resumed)
  assert step_a == step_b == 6
  leaves_a, leaves_b = jax.tree.leaves(state_a), jax.tree.leaves(state_b)
  assert len(leaves_a) == len(leaves_b) > 10
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Params moved after the resume (the equality above is not between two untouched states).
  assert not np.array_equal(np.asarray(state_b["params"]["token_embedding"]),
                            np.asarray(at_stop["params"]["token_embedding"]))
  with open(os.path.join(resumed, RESULTS_FILE)) as f:
    assert json.load(f)["step"] == 6


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory, tfds_dir):
  """A workdir trained for 2 steps, shared (read-only) by the tests below."""
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  train_and_evaluate(tiny_text_config(tfds_dir, total_steps=2, checkpoint_every_steps=2), workdir,
                     progress=False)
  return workdir


def _refuses_and_leaves_untouched(workdir, tfds_dir, error, **model_overrides):
  before = _tree_digest(workdir)
  other = tiny_text_config(tfds_dir, total_steps=4)
  other.model.update(model_overrides)
  with pytest.raises(ValueError, match=error):
    train_and_evaluate(other, workdir, progress=False)
  assert _tree_digest(workdir) == before


def test_workdir_of_a_different_model_is_refused_and_left_untouched(tmp_path, trained_workdir,
                                                                     tfds_dir):
  workdir = shutil.copytree(trained_workdir, tmp_path / "run")
  _refuses_and_leaves_untouched(str(workdir), tfds_dir, "d_model: 32 in the workdir vs 48", d_model=48)


def test_checkpoint_whose_shapes_do_not_fit_is_refused(tmp_path, trained_workdir, tfds_dir):
  """Even with model_config.json removed, the stored array shapes are checked before restoring."""
  workdir = shutil.copytree(trained_workdir, tmp_path / "run")
  os.remove(workdir / MODEL_CONFIG_FILE)
  _refuses_and_leaves_untouched(str(workdir), tfds_dir,
                                r"does not fit this model: .*wi.*\(32, 48\) vs model \(32, 40\)",
                                d_ff=40)


def test_load_model_restores_the_trained_params(tmp_path, trained_workdir):
  model = checkpoint.load_model(trained_workdir)
  _, stored = _final_state(trained_workdir)
  np.testing.assert_array_equal(np.asarray(model.token_embedding[...]),
                                np.asarray(stored["params"]["token_embedding"]))
  with pytest.raises(FileNotFoundError, match="not a deed-jax workdir"):
    checkpoint.load_model(str(tmp_path / "empty"))
