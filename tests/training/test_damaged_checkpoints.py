"""A damaged newest checkpoint step (orbax metadata lost, manifest garbage, data cut short) is told
apart from a checkpoint of another model: resuming moves it aside and takes the step before;
reading a model (evaluate, export) skips it without touching it; naming it is an error that names
it. Real orbax checkpoints, damaged on disk."""

from __future__ import annotations

import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from deed_jax import checkpoint
from deed_jax.models import MultiExitEncoderDecoder
from tests.checkpoint_damage import DAMAGES, damage_step
from tests.conftest import randomize, tiny_config

CONFIG = tiny_config()


def _params(seed):
  model = randomize(MultiExitEncoderDecoder(CONFIG, rngs=nnx.Rngs(0)), seed=seed)
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A workdir holding steps 1 and 2 with different params: (workdir, {step: params})."""
  workdir = str(tmp_path_factory.mktemp("saved") / "run")
  params = {1: _params(1), 2: _params(2)}
  checkpointer = checkpoint.Checkpointer(workdir, CONFIG, async_save=False)
  for step, values in params.items():
    checkpointer.save(step, {"params": values}, force=True)
  checkpointer.wait()
  checkpointer.close()
  return workdir, params


def _damaged(saved, tmp_path, kind):
  workdir = str(tmp_path / "run")
  shutil.copytree(saved[0], workdir)
  damage_step(os.path.join(workdir, "checkpoints", "2"), kind)
  return workdir


def _assert_params_equal(restored, expected):
  assert jax.tree.structure(restored) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("kind", DAMAGES)
def test_reading_a_model_skips_a_damaged_newest_step_and_leaves_it(saved, tmp_path, capfd, kind):
  workdir = _damaged(saved, tmp_path, kind)
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  capfd.readouterr()
  step, model = checkpoint.load_step(workdir)
  out, err = capfd.readouterr()
  assert step == 1
  _assert_params_equal(nnx.to_pure_dict(nnx.state(model, nnx.Param)), saved[1][1])
  # One line, naming the step; none of orbax's event-loop tracebacks.
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("Checkpoint step 2 (") and "Skipped" in lines[0]
  assert "does not fit" not in err and out == ""
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before  # nothing moved


@pytest.mark.parametrize("kind", DAMAGES)
def test_naming_a_damaged_step_is_an_error_naming_it(saved, tmp_path, capfd, kind):
  workdir = _damaged(saved, tmp_path, kind)
  capfd.readouterr()
  with pytest.raises(
    checkpoint.UnreadableStepError, match=r"^Checkpoint step 2 \(.*cannot be read"
  ):
    checkpoint.load_model(workdir, step=2)
  assert capfd.readouterr().err.count("\n") <= 1


@pytest.mark.parametrize("kind", DAMAGES)
def test_resuming_moves_a_damaged_newest_step_aside(saved, tmp_path, capfd, kind):
  """What training does (`Checkpointer.restore_newest`): report, move aside, resume the step before;
  the run then writes step 2 again."""
  workdir = _damaged(saved, tmp_path, kind)
  _, abstract = checkpoint.abstract_params(CONFIG)
  checkpointer = checkpoint.Checkpointer(workdir, CONFIG, async_save=False)
  reports = []
  capfd.readouterr()
  try:
    step, state = checkpointer.restore_newest({"params": abstract}, report=reports.append)
  finally:
    checkpointer.close()
  assert step == 1 and capfd.readouterr().err == ""
  _assert_params_equal(state["params"], saved[1][1])
  assert len(reports) == 1 and reports[0].startswith("Checkpoint step 2 (")
  assert "moved aside" in reports[0] and "does not fit" not in reports[0]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2.unreadable"]


def test_a_checkpoint_of_another_model_is_still_a_misfit_not_damage(saved, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(saved[0], workdir)
  wider = tiny_config(d_ff=64)
  graphdef, abstract = checkpoint.abstract_params(wider)
  with pytest.raises(checkpoint.UserError, match=r"Checkpoint 2 in .* does not fit") as caught:
    checkpoint.restore_params(workdir, abstract)
  assert not isinstance(caught.value, checkpoint.UnreadableStepError)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]


def test_a_stray_file_among_the_steps_is_ignored_by_resume_and_read(saved, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(saved[0], workdir)
  with open(os.path.join(workdir, "checkpoints", "7"), "w") as f:
    f.write("not a checkpoint")
  _, abstract = checkpoint.abstract_params(CONFIG)
  checkpointer = checkpoint.Checkpointer(workdir, CONFIG, async_save=False)
  try:
    assert checkpointer.restore_newest({"params": abstract}, report=pytest.fail)[0] == 2
  finally:
    checkpointer.close()
  assert checkpoint.load_step(workdir, report=pytest.fail)[0] == 2
