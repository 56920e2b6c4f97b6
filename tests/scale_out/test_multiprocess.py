"""Scale-out with real processes: two processes on localhost (4 CPU devices each, gloo collectives)
train like one process with 8 devices and like one device, at the same global batch; a checkpoint
written on 8 devices resumes on 4."""

from __future__ import annotations

import pytest

from tests.scale_out.runs import MESH_2x2x2, assert_params_close, final_params, train

# Float reduction order differs between topologies (sums split over devices, then all-reduced).
TOLERANCE = dict(rtol=2e-4, atol=2e-5)


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory, tfds_dir):
  workdir = tmp_path_factory.mktemp("one_device") / "run"
  train(workdir, tfds_dir, "--config.mesh.data=1", devices=1)
  return workdir


def test_two_processes_and_eight_devices_train_like_one_device(tmp_path, tfds_dir, one_device_run):
  two = tmp_path / "two_processes"
  out = train(two, tfds_dir, *MESH_2x2x2, devices=4, processes=2)
  assert "over 8 devices in 2 process(es); global batch 16" in out
  eight = tmp_path / "eight_devices"
  train(eight, tfds_dir, *MESH_2x2x2, devices=8)
  reference = final_params(one_device_run)
  assert_params_close(final_params(two), reference, **TOLERANCE)
  assert_params_close(final_params(eight), reference, **TOLERANCE)


def test_checkpoint_from_eight_devices_resumes_on_four(tmp_path, tfds_dir, one_device_run):
  workdir = tmp_path / "run"
  out = train(workdir, tfds_dir, *MESH_2x2x2, "--stop_at_step=6", devices=8)
  assert "Stopped at step 6" in out
  out = train(workdir, tfds_dir, "--config.mesh.data=2", "--config.mesh.fsdp=2", devices=4)
  assert "Resumed from step 6" in out and "Mesh {'data': 2, 'fsdp': 2, 'tensor': 1}" in out
  assert_params_close(final_params(workdir), final_params(one_device_run), **TOLERANCE)
