"""Real training runs in subprocesses: `python -m deed_jax.train` on the forms_text runlocal config
(tiny dataset build), on a chosen number of host CPU devices and processes on localhost."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from deed_jax import checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOTAL_STEPS = 12
MESH_2x2x2 = ("--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2")


def train_command(workdir, tfds_dir, *flags) -> list[str]:
  return [
    sys.executable,
    "-m",
    "deed_jax.train",
    "--config",
    "configs/forms_text.py:runlocal",
    "--workdir",
    str(workdir),
    f"--config.task.data_dir={tfds_dir}",
    "--config.task.dataset_config=tiny",
    f"--config.total_steps={TOTAL_STEPS}",
    "--config.batch_size=16",
    "--config.eval_batch_size=64",
    "--config.log_every_steps=1",
    "--config.checkpoint_every_steps=4",
    "--config.keep_checkpoints=5",
    *flags,
  ]


def environment(devices: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  env["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
  ).strip()
  return env


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def train(
  workdir, tfds_dir, *flags, devices: int = 1, processes: int = 1, timeout: int = 600
) -> str:
  """Run the trainer to the end in `processes` processes of `devices` devices each; returns process
  0's output. Fails the test (with the outputs) if any process fails."""
  running = start(workdir, tfds_dir, *flags, devices=devices, processes=processes)
  outputs = [p.communicate(timeout=timeout)[0] for p in running]
  for p, out in zip(running, outputs):
    assert p.returncode == 0, f"exit {p.returncode}:\n{out[-5000:]}"
  return outputs[0]


def final_params(workdir) -> dict:
  """The newest checkpoint's params, loaded by this (one-device) process as numpy."""
  model = checkpoint.load_model(str(workdir))
  from flax import nnx

  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def assert_params_close(a: dict, b: dict, **tolerance) -> None:
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b) and len(leaves_a) > 10
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(x, y, **tolerance)


def interrupt(workdir, tfds_dir, *flags, sig: int, when, timeout: int = 600) -> tuple[int, str]:
  """Start the trainer (one process, one device) and send it `sig` as soon as `when(workdir,
  output_so_far)` holds; -> (exit status, output). Fails the test if the run ends first."""
  process = subprocess.Popen(
    train_command(workdir, tfds_dir, *flags),
    cwd=REPO,
    env=environment(1),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
  )
  os.set_blocking(process.stdout.fileno(), False)
  output, deadline = b"", time.time() + timeout
  while not when(workdir, output.decode(errors="replace")):
    output += process.stdout.read() or b""
    assert process.poll() is None, f"the run ended before it was interrupted:\n{output[-3000:]}"
    assert time.time() < deadline, "timed out waiting to interrupt the run"
    time.sleep(0.005)
  process.send_signal(sig)
  os.set_blocking(process.stdout.fileno(), True)
  rest = process.communicate(timeout=timeout)[0]
  return process.returncode, (output + rest).decode(errors="replace")


def checkpoint_steps(workdir) -> list[int]:
  """The finished checkpoint steps in a workdir (orbax renames a step's directory once complete)."""
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(p) for p in os.listdir(path) if p.isdigit()) if os.path.isdir(path) else []


def start(workdir, tfds_dir, *flags, devices: int = 1, processes: int = 1) -> list:
  """Start the trainer in `processes` processes (without waiting); -> their Popen objects."""
  if processes == 1:
    commands = [train_command(workdir, tfds_dir, *flags)]
  else:
    address = f"127.0.0.1:{free_port()}"
    commands = [
      train_command(
        workdir,
        tfds_dir,
        *flags,
        "--coordinator_address",
        address,
        "--num_processes",
        str(processes),
        "--process_id",
        str(i),
      )
      for i in range(processes)
    ]
  return [
    subprocess.Popen(
      c,
      cwd=REPO,
      env=environment(devices),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for c in commands
  ]
