"""The mesh, the logical-axis rules and the sharded train step; bad mesh input refused up front."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import pytest

from deed_jax import sharding
from deed_jax.config_defaults import check_mesh, validate
from deed_jax.errors import UserError
from tests.scale_out.runs import REPO, environment
from tests.training.configs import tiny_text_config


def test_a_step_on_a_2x2x2_mesh_matches_the_step_on_one_device():
  """Runs tests/scale_out/sharded_step.py with 8 host CPU devices (this process has one): every exit
  and sampled exits, the vocabulary split over `tensor`."""
  done = subprocess.run(
    [sys.executable, "-m", "tests.scale_out.sharded_step"],
    cwd=REPO,
    env=environment(8),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 0, done.stderr[-5000:]
  # The partitioner found a sharding for everything: the per-exit head loss once made it gather
  # whole arrays ("Involuntary full rematerialization", twice per compile).
  assert "Involuntary full rematerialization" not in done.stderr
  checked = json.loads(done.stdout.strip().splitlines()[-1])
  assert checked["shard_shapes"] == {"wi": [[16, 24]], "q": [[16, 2, 8]], "mu": [[16, 24]]}


class _Mesh:
  """Just the axis sizes, for the spec rules (no devices needed)."""

  def __init__(self, **shape):
    self.shape = shape


def test_logical_axes_map_to_mesh_axes_when_they_divide():
  mesh = _Mesh(data=2, fsdp=2, tensor=2)
  rules = sharding.DEFAULT_RULES
  P = jax.sharding.PartitionSpec
  assert sharding.logical_to_spec(("embed", "mlp"), (32, 48), mesh, rules) == P("fsdp", "tensor")
  assert sharding.logical_to_spec(("vocab", "embed"), (259, 64), mesh, rules) == P(None, "fsdp")
  assert sharding.logical_to_spec(("embed", "heads", "kv"), (32, 4, 8), mesh, rules) == P(
    "fsdp", "tensor", None
  )
  # A mesh axis splits one dimension only; size-1 mesh axes are left out.
  same = (("embed", "fsdp"), ("mlp", "fsdp"))
  assert sharding.logical_to_spec(("embed", "mlp"), (32, 48), mesh, same) == P("fsdp", None)
  assert sharding.logical_to_spec(
    ("embed", "mlp"), (32, 48), _Mesh(data=8, fsdp=1, tensor=1), rules
  ) == P(None, None)
  assert sharding.logical_to_spec(("batch",), (8,), mesh, rules) == P(("data", "fsdp"))


def test_mesh_sizes_fill_and_must_match_the_devices():
  assert sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
  assert sharding.mesh_shape({"data": 1, "fsdp": 1, "tensor": 1}, 1) == (1, 1, 1)
  with pytest.raises(
    UserError, match=r"data=2, fsdp=2, tensor=1\) has 4 devices but this run has 8"
  ):
    sharding.mesh_shape({"data": 2, "fsdp": 2, "tensor": 1}, 8)
  with pytest.raises(UserError, match="cannot fill 8 devices: 3 does not divide 8"):
    sharding.mesh_shape({"data": -1, "fsdp": 3, "tensor": 1}, 8)
  with pytest.raises(UserError, match="at most one -1"):
    sharding.mesh_shape({"data": -1, "fsdp": -1, "tensor": 1}, 8)
  with pytest.raises(UserError, match=r"unknown axes \['model'\]"):
    sharding.mesh_shape({"model": 2}, 8)


def test_bad_mesh_input_is_refused_before_anything_is_written(tmp_path, tfds_dir):
  config = tiny_text_config(tfds_dir)
  config.mesh.data = 2  # this process has 1 device
  with pytest.raises(UserError, match="has 2 devices but this run has 1"):
    validate(config)
  config = tiny_text_config(tfds_dir, batch_size=12)
  with pytest.raises(
    UserError, match=r"config.batch_size=12 does not split over the 8 batch shards"
  ):
    check_mesh(config, num_devices=8)
  config = tiny_text_config(tfds_dir, batch_size=16, eval_batch_size=18)
  config.mesh.update(dict(data=-1, fsdp=2, tensor=2))
  with pytest.raises(
    UserError,
    match=r"eval_batch_size=18 does not split over the 4 batch shards "
    r"of the mesh \(data=2, fsdp=2, tensor=2",
  ):
    check_mesh(config, num_devices=8)
  assert check_mesh(tiny_text_config(tfds_dir, batch_size=16), num_devices=8) == (8, 1, 1)
  config = tiny_text_config(tfds_dir, sharding_rules=(("embed", "fsdp"), ("mlp", "model")))
  with pytest.raises(UserError, match="maps 'mlp' to unknown mesh axis 'model'"):
    validate(config)
  from deed_jax.train import train_and_evaluate

  with pytest.raises(UserError, match="unknown mesh axis 'model'"):
    train_and_evaluate(config, str(tmp_path / "run"), progress=False)
  assert not (tmp_path / "run").exists()
