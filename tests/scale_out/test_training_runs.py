"""Real training runs in subprocesses: two processes on localhost (4 CPU devices each, gloo
collectives) train like one device, at the same global batch; so does a run on 8 devices whose
checkpoint is resumed on 4; a run killed (SIGKILL) and one preempted (SIGTERM) end exactly where an
uninterrupted run ends."""

from __future__ import annotations

import json
import signal
import time

import jax
import numpy as np
import pytest

from tests.scale_out.runs import (
  TOTAL_STEPS,
  MESH_2x2x2,
  assert_params_close,
  checkpoint_steps,
  final_params,
  interrupt,
  start,
  train,
)

# Float reduction order differs between topologies (sums split over devices, then all-reduced).
TOLERANCE = dict(rtol=2e-4, atol=2e-5)


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory, tfds_dir):
  workdir = tmp_path_factory.mktemp("one_device") / "run"
  train(workdir, tfds_dir, "--config.mesh.data=1", devices=1)
  return workdir


def test_two_processes_train_like_one_device(tmp_path, tfds_dir, one_device_run):
  two = tmp_path / "two_processes"
  # An empty data dir: process 0 prepares the dataset while process 1 waits for it.
  fresh_data = tmp_path / "tfds"
  out = train(two, fresh_data, *MESH_2x2x2, devices=4, processes=2)
  assert "over 8 devices in 2 process(es); global batch 16" in out
  assert (fresh_data / "forms_text" / "tiny").is_dir()
  assert_params_close(final_params(two), final_params(one_device_run), **TOLERANCE)


def test_eight_devices_then_four_from_its_checkpoint_train_like_one_device(
  tmp_path, tfds_dir, one_device_run
):
  # Half the steps on a (2, 2, 2) mesh of 8 devices, the rest on 4 (data 2 x fsdp 2) from the
  # checkpoint it wrote: each topology's steps, and the resharding between them, must hold.
  workdir = tmp_path / "run"
  out = train(workdir, tfds_dir, *MESH_2x2x2, f"--stop_at_step={TOTAL_STEPS // 2}", devices=8)
  assert "over 8 devices in 1 process(es)" in out and f"Stopped at step {TOTAL_STEPS // 2}" in out
  out = train(workdir, tfds_dir, "--config.mesh.data=2", "--config.mesh.fsdp=2", devices=4)
  assert f"Resumed from step {TOTAL_STEPS // 2}" in out
  assert "Mesh {'data': 2, 'fsdp': 2, 'tensor': 1}" in out
  assert_params_close(final_params(workdir), final_params(one_device_run), **TOLERANCE)


def test_killed_then_preempted_run_ends_like_an_uninterrupted_one(
  tmp_path, tfds_dir, one_device_run
):
  workdir = tmp_path / "run"
  # SIGKILL right after the step 4 checkpoint is complete: mid-training, nothing saved on the way out.
  status, _ = interrupt(
    workdir, tfds_dir, sig=signal.SIGKILL, when=lambda w, out: 4 in checkpoint_steps(w)
  )
  assert status == -signal.SIGKILL
  assert 4 <= max(checkpoint_steps(workdir)) < TOTAL_STEPS
  # Rerun the same command; SIGTERM once it has resumed: it saves the step it is at and exits.
  status, out = interrupt(
    workdir, tfds_dir, sig=signal.SIGTERM, when=lambda w, out: "Resumed from step" in out
  )
  assert status == 0, out[-3000:]
  stopped = int(out.split("Stopped at step ")[1].split()[0])
  assert "(SIGTERM)" in out and max(checkpoint_steps(workdir)) == stopped < TOTAL_STEPS
  out = train(workdir, tfds_dir)
  assert f"Resumed from step {stopped}" in out
  final, reference = final_params(workdir), final_params(one_device_run)
  for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(reference)):
    np.testing.assert_array_equal(a, b)  # bit-identical: same device, same data, same steps
  logged = [
    json.loads(line)["step"] for line in open(workdir / "metrics.jsonl") if "train/loss" in line
  ]
  assert logged == list(range(1, TOTAL_STEPS + 1))  # steps replayed after the kill logged once


@pytest.mark.slow  # ~40 s; the one-process SIGTERM path is covered above
def test_sigterm_stops_every_process_at_the_same_step(tmp_path, tfds_dir):
  """Two processes: JAX's preemption service (through orbax's reached_preemption) has both save
  the same step and exit cleanly."""
  workdir = tmp_path / "run"
  running = start(
    workdir,
    tfds_dir,
    "--config.total_steps=400",
    "--config.mesh.data=4",
    "--config.mesh.fsdp=2",
    devices=4,
    processes=2,
  )
  deadline = time.time() + 600
  while 4 not in checkpoint_steps(workdir):
    assert all(p.poll() is None for p in running) and time.time() < deadline
    time.sleep(0.01)
  for process in running:
    process.send_signal(signal.SIGTERM)
  outputs = [p.communicate(timeout=600)[0] for p in running]
  assert [p.returncode for p in running] == [0, 0], outputs[0][-3000:]
  stopped = int(outputs[0].split("Stopped at step ")[1].split()[0])
  assert "(SIGTERM)" in outputs[0] and max(checkpoint_steps(workdir)) == stopped < 400
