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
from deed_jax.config_defaults import run_changes
from deed_jax.train import RESULTS_FILE, train_and_evaluate
from deed_jax.workdir import MODEL_CONFIG_FILE, TRAIN_CONFIG_FILE
from tests.checkpoint_damage import damage_step
from tests.training.configs import tiny_text_config, train_tiny


def _final_state(workdir):
  """The newest checkpoint's raw arrays, read back from disk."""
  import orbax.checkpoint as ocp

  path = os.path.join(workdir, "checkpoints")
  step = max(int(p) for p in os.listdir(path) if p.isdigit())
  item = os.path.join(path, str(step), "state")
  checkpointer = ocp.PyTreeCheckpointer()
  as_numpy = jax.tree.map(
    lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
    checkpointer.metadata(item).item_metadata.tree,
  )
  return step, checkpointer.restore(item, restore_args=as_numpy)


def _tree_digest(directory):
  digest = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        digest[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return digest


@pytest.mark.parametrize("sampled", [False, True])
def test_stopped_and_resumed_run_equals_an_uninterrupted_run(tmp_path, tfds_dir, sampled):
  """Also with sampled exit supervision: its draws are a function of the seed and the step."""
  config = tiny_text_config(tfds_dir, total_steps=6, checkpoint_every_steps=3)
  if sampled:
    config.model.decoder_layers = 3
    config.loss.exits_per_step = 1
  straight = str(tmp_path / "straight")
  results = train_and_evaluate(config, straight, progress=False)
  assert results["step"] == 6 and len(results["exit_exact_match"]) == 2 + sampled

  resumed = str(tmp_path / "resumed")
  assert train_and_evaluate(config, resumed, stop_at_step=3, progress=False) is None
  step, at_stop = _final_state(resumed)
  assert step == 3 and int(at_stop["step"]) == 3
  train_and_evaluate(config, resumed, progress=False)

  records = [
    json.loads(line)
    for line in open(os.path.join(resumed, "metrics.jsonl"))
    if "train/loss" in line
  ]
  # The second run continued at step 4, nothing repeated.
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
  assert all(r["train/model_flops_per_second"] > 0 for r in records)
  if sampled:  # one of the two exits below the last is supervised per step, so one is NaN
    for r in records:
      missing = np.isnan(r["train/exit_loss"]).tolist()
      assert missing in ([True, False, False], [False, True, False]), r["train/exit_loss"]
  step_a, state_a = _final_state(straight)
  step_b, state_b = _final_state(resumed)
  assert step_a == step_b == 6
  leaves_a, leaves_b = jax.tree.leaves(state_a), jax.tree.leaves(state_b)
  assert len(leaves_a) == len(leaves_b) > 10
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Params moved after the resume (the equality above is not between two untouched states).
  assert not np.array_equal(
    np.asarray(state_b["params"]["decoder"]["token_embedding"]["embedding"]),
    np.asarray(at_stop["params"]["decoder"]["token_embedding"]["embedding"]),
  )
  with open(os.path.join(resumed, RESULTS_FILE)) as f:
    assert json.load(f)["step"] == 6


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory, tfds_dir):
  """A workdir trained for 2 steps, shared (read-only) by the tests below."""
  return train_tiny(tmp_path_factory, tfds_dir, "trained", 2)


def _refuses_and_leaves_untouched(workdir, tfds_dir, error, **model_overrides):
  before = _tree_digest(workdir)
  other = tiny_text_config(tfds_dir, total_steps=4)
  other.model.update(model_overrides)
  with pytest.raises(ValueError, match=error):
    train_and_evaluate(other, workdir, progress=False)
  assert _tree_digest(workdir) == before


def test_workdir_of_a_different_model_is_refused_and_left_untouched(
  tmp_path, trained_workdir, tfds_dir
):
  workdir = shutil.copytree(trained_workdir, tmp_path / "run")
  _refuses_and_leaves_untouched(
    str(workdir), tfds_dir, "d_model: 32 in the workdir vs 48", d_model=48
  )


def test_checkpoint_whose_shapes_do_not_fit_is_refused(tmp_path, trained_workdir, tfds_dir):
  """Even with model_config.json (and the run's train_config.json) removed, the stored array shapes
  are checked before restoring."""
  workdir = shutil.copytree(trained_workdir, tmp_path / "run")
  os.remove(workdir / MODEL_CONFIG_FILE)
  os.remove(workdir / TRAIN_CONFIG_FILE)
  _refuses_and_leaves_untouched(
    str(workdir),
    tfds_dir,
    r"does not fit this model: .*wi.*\(32, 48\) vs model \(32, 40\)",
    d_ff=40,
  )


def test_load_model_restores_the_trained_params(tmp_path, trained_workdir):
  model = checkpoint.load_model(trained_workdir)
  _, stored = _final_state(trained_workdir)
  np.testing.assert_array_equal(
    np.asarray(model.token_embedding.embedding[...]),
    np.asarray(stored["params"]["decoder"]["token_embedding"]["embedding"]),
  )
  with pytest.raises(FileNotFoundError, match="not a deed-jax workdir"):
    checkpoint.load_model(str(tmp_path / "empty"))


def _in_legacy_layout(tree):
  """A stored state as checkpoints written before the decoder owned the token table held it: the
  table at `token_embedding` beside `decoder`, in the params and in each optimizer moment."""
  if isinstance(tree, dict):
    tree = {k: _in_legacy_layout(v) for k, v in tree.items()}
    if "token_embedding" in tree.get("decoder", {}):
      tree["decoder"] = dict(tree["decoder"])
      tree["token_embedding"] = tree["decoder"].pop("token_embedding")["embedding"]
    return tree
  if isinstance(tree, (list, tuple)):
    return type(tree)(_in_legacy_layout(v) for v in tree)
  return tree


def test_checkpoint_in_the_legacy_embedding_layout_restores_and_resumes(
  tmp_path, trained_workdir, tfds_dir
):
  """A checkpoint that keeps the token table at the top level (the layout before the decoder owned
  it) loads and resumes training exactly like the same checkpoint in today's layout."""
  import orbax.checkpoint as ocp

  legacy = shutil.copytree(trained_workdir, tmp_path / "legacy")
  step, stored = _final_state(trained_workdir)
  legacy_state = _in_legacy_layout(stored)
  assert "token_embedding" not in legacy_state["params"]["decoder"]
  state_dir = legacy / "checkpoints" / str(step) / "state"
  shutil.rmtree(state_dir)
  ocp.PyTreeCheckpointer().save(str(state_dir), legacy_state)
  assert "token_embedding" in _final_state(str(legacy))[1]["params"]  # really legacy on disk

  original, migrated = checkpoint.load_model(trained_workdir), checkpoint.load_model(str(legacy))
  np.testing.assert_array_equal(
    np.asarray(migrated.token_embedding.embedding[...]),
    np.asarray(original.token_embedding.embedding[...]),
  )

  current = shutil.copytree(trained_workdir, tmp_path / "current")
  for workdir in (current, legacy):
    train_and_evaluate(
      tiny_text_config(tfds_dir, total_steps=3, checkpoint_every_steps=1),
      str(workdir),
      progress=False,
      allow_config_change=True,
    )
  (_, from_current), (_, from_legacy) = _final_state(str(current)), _final_state(str(legacy))
  assert jax.tree.structure(from_current) == jax.tree.structure(from_legacy)
  for a, b in zip(jax.tree.leaves(from_current), jax.tree.leaves(from_legacy)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_unreadable_newest_checkpoint_is_skipped_not_deleted(tmp_path, tfds_dir, capsys):
  """End to end for one damage (every kind: tests/training/test_damaged_checkpoints.py)."""
  config = tiny_text_config(tfds_dir, total_steps=3, checkpoint_every_steps=1)
  workdir = tmp_path / "run"
  assert train_and_evaluate(config, str(workdir), stop_at_step=2, progress=False) is None
  step_dir = workdir / "checkpoints" / "2"
  cut = damage_step(step_dir, "data_cut_short")
  size = os.path.getsize(cut)
  capsys.readouterr()
  results = train_and_evaluate(config, str(workdir), progress=False)
  out = capsys.readouterr().out
  assert f"Checkpoint step 2 ({step_dir}) cannot be read" in out and "does not fit" not in out
  assert "Resumed from step 1" in out and results["step"] == 3
  aside = workdir / "checkpoints" / "2.unreadable" / os.path.relpath(cut, step_dir)
  assert aside.stat().st_size == size  # kept as it was, for a person to look at
  step, state = _final_state(str(workdir))
  assert step == 3 and int(state["step"]) == 3


def test_resume_with_a_config_that_changes_the_run_is_refused(tmp_path, trained_workdir, tfds_dir):
  workdir = shutil.copytree(trained_workdir, tmp_path / "run")
  before = _tree_digest(workdir)
  config = tiny_text_config(tfds_dir, total_steps=2, checkpoint_every_steps=2)
  config.optimizer.learning_rate = 0.002
  config.seed = 1
  config.log_every_steps = 5  # neutral: not named
  with pytest.raises(
    ValueError,
    match=r"would change it: optimizer.learning_rate: 0.001 -> 0.002; "
    r"seed: 0 -> 1\. .*--allow_config_change",
  ):
    train_and_evaluate(config, str(workdir), progress=False)
  assert _tree_digest(workdir) == before
  config.total_steps = 3
  results = train_and_evaluate(config, str(workdir), progress=False, allow_config_change=True)
  assert results["step"] == 3
  with open(workdir / TRAIN_CONFIG_FILE) as f:
    assert json.load(f)["optimizer"]["learning_rate"] == 0.002  # the run now follows the new config


def test_options_newer_than_a_saved_config_count_as_their_defaults(tfds_dir):
  """A workdir written before an option existed resumes: the missing option is its default."""
  config = tiny_text_config(tfds_dir)
  saved = json.loads(json.dumps(config.to_dict()))
  del saved["gradient_accumulation_steps"], saved["mesh"]
  assert run_changes(saved, config) == []
  config.gradient_accumulation_steps = 2
  assert run_changes(saved, config) == ["gradient_accumulation_steps: 1 -> 2"]


@pytest.mark.parametrize("name", [MODEL_CONFIG_FILE, TRAIN_CONFIG_FILE])
def test_a_truncated_workdir_file_is_refused_naming_it(tmp_path, tfds_dir, name):
  """Resuming a workdir whose JSON file was cut short (a disk that filled up) names the file and
  leaves it as it was."""
  from deed_jax.errors import UserError

  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / name).write_text('{"vocab_size": 25')
  with pytest.raises(UserError, match=rf"{name} is not valid JSON"):
    train_and_evaluate(tiny_text_config(tfds_dir), str(workdir), progress=False)
  assert os.listdir(workdir) == [name] and (workdir / name).read_text() == '{"vocab_size": 25'
