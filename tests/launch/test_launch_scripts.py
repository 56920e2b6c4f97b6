"""The cluster launch scripts: what `--dry_run` says they will run, bad arguments refused, and the
generated Slurm batch script run for real on this machine (two tasks on localhost, with stand-ins for
`srun` and `scontrol` that do what Slurm would)."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess

import pytest

from tests.scale_out.runs import REPO, assert_params_close, final_params, free_port, train

TPU = os.path.join(REPO, "launch", "tpu_pod.sh")
SLURM = os.path.join(REPO, "launch", "gpu_slurm.sh")


def _run(script, *args, env=None):
  return subprocess.run(
    [script, *args], cwd=REPO, capture_output=True, text=True, timeout=120, env=env
  )


def test_tpu_pod_dry_run_creates_installs_and_starts_on_every_worker():
  done = _run(
    TPU,
    "--name",
    "pod",
    "--zone",
    "us-east5-a",
    "--accelerator",
    "v5p-32",
    "--spot",
    "--config",
    "configs/forms_vqa.py",
    "--workdir",
    "gs://bucket/runs/forms",
    "--dry_run",
    "--",
    "--config.batch_size=256",
    "--config.task.data_dir=gs://bucket/tfds",
  )
  assert done.returncode == 0, done.stderr
  commands = [shlex.split(line[2:]) for line in done.stdout.splitlines() if line.startswith("+ ")]
  create, archive, copy, install, start = commands
  assert create[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"] and "pod" in create
  assert create[create.index("--accelerator-type") + 1] == "v5p-32" and "--spot" in create
  assert archive[:2] == ["git", "archive"]
  assert copy[4] == "scp" and copy[5] == archive[archive.index("-o") + 1]
  for command in (copy, install, start):
    assert "--worker=all" in command and command[command.index("--zone") + 1] == "us-east5-a"
  assert "pip install" in install[-1] and "'.[tpu,gcs]'" in install[-1]
  train_command = shlex.split(start[-1].split("nohup ")[1].split(" >")[0])
  assert (
    train_command[:3] == ["python3", "-m", "deed_jax.train"] and "--distributed" in train_command
  )
  assert train_command[train_command.index("--workdir") + 1] == "gs://bucket/runs/forms"
  assert train_command[-2:] == [
    "--config.batch_size=256",
    "--config.task.data_dir=gs://bucket/tfds",
  ]


@pytest.mark.parametrize(
  "args, error",
  [
    (
      [
        "--zone",
        "z",
        "--accelerator",
        "v4-8",
        "--config",
        "configs/forms_vqa.py",
        "--workdir",
        "gs://b/w",
      ],
      "--name is required",
    ),
    (
      [
        "--name",
        "n",
        "--zone",
        "z",
        "--accelerator",
        "v4-8",
        "--config",
        "configs/forms_vqa.py",
        "--workdir",
        "/local/dir",
      ],
      "--workdir=/local/dir must be a gs:// path",
    ),
    (
      [
        "--name",
        "n",
        "--zone",
        "z",
        "--accelerator",
        "v4-8",
        "--config",
        "configs/nope.py",
        "--workdir",
        "gs://b/w",
      ],
      "--config=configs/nope.py: no file",
    ),
    (["--name", "n", "--bogus"], "unknown argument --bogus"),
  ],
)
def test_tpu_pod_refuses_bad_arguments(args, error):
  done = _run(TPU, *args, "--dry_run")
  assert done.returncode == 2 and error in done.stderr and not done.stdout


def test_slurm_dry_run_writes_one_task_per_node_with_the_first_node_as_coordinator():
  done = _run(
    SLURM,
    "--nodes",
    "4",
    "--gpus_per_node",
    "8",
    "--partition",
    "a100",
    "--config",
    "configs/forms_vqa.py:runlocal",
    "--workdir",
    "/shared/runs/forms",
    "--dry_run",
    "--",
    "--config.batch_size=256",
  )
  assert done.returncode == 0, done.stderr
  script = done.stdout
  for line in (
    "#SBATCH --nodes=4",
    "#SBATCH --ntasks-per-node=1",
    "#SBATCH --gpus-per-node=8",
    "#SBATCH --partition=a100",
    "#SBATCH --signal=TERM@120",
    "#SBATCH --requeue",
    "source launch/setup_env.sh cuda",
  ):
    assert line in script.splitlines() or any(l.startswith(line) for l in script.splitlines())
  assert 'scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1):29500' in script
  srun = next(l for l in script.splitlines() if l.startswith("srun"))
  task = shlex.split(shlex.split(srun)[-1])
  assert task[1:3] == ["-m", "deed_jax.train"]
  assert task[task.index("--config") + 1] == "configs/forms_vqa.py:runlocal"
  assert task[-7:] == [
    "--config.batch_size=256",
    "--coordinator_address",
    "$COORDINATOR",
    "--num_processes",
    "$SLURM_NTASKS",
    "--process_id",
    "$SLURM_PROCID",
  ]


@pytest.mark.parametrize(
  "args, error",
  [
    (
      ["--gpus_per_node", "8", "--config", "configs/forms_vqa.py", "--workdir", "/w"],
      "--nodes is required",
    ),
    (
      [
        "--nodes",
        "two",
        "--gpus_per_node",
        "8",
        "--config",
        "configs/forms_vqa.py",
        "--workdir",
        "/w",
      ],
      "--nodes=two must be a positive integer",
    ),
    (
      [
        "--nodes",
        "2",
        "--gpus_per_node",
        "0",
        "--config",
        "configs/forms_vqa.py",
        "--workdir",
        "/w",
      ],
      "--gpus_per_node=0 must be a positive integer",
    ),
    (
      ["--nodes", "2", "--gpus_per_node", "8", "--config", "configs/nope.py", "--workdir", "/w"],
      "--config=configs/nope.py: no file",
    ),
  ],
)
def test_slurm_refuses_bad_arguments(args, error):
  done = _run(SLURM, *args, "--dry_run")
  assert done.returncode == 2 and error in done.stderr and not done.stdout


_FAKE_SRUN = """#!/usr/bin/env bash
# Slurm's srun for 2 tasks on this machine: run the command once per task, with its rank.
shift  # --kill-on-bad-exit=1
for rank in 0 1; do SLURM_PROCID=$rank "$@" & done
status=0; for job in $(jobs -p); do wait $job || status=1; done; exit $status
"""
_FAKE_SCONTROL = """#!/usr/bin/env bash
# `scontrol show hostnames`: this machine; `scontrol requeue`: recorded.
if [ "$1" = show ]; then echo 127.0.0.1; else echo "$@" >> "$SCONTROL_LOG"; fi
"""


@pytest.mark.slow  # ~1.5 min; the default run checks the script's commands (dry run) and trains
# two processes through the same trainer flags (tests/scale_out/test_training_runs.py)
def test_generated_slurm_script_trains_two_tasks_like_one_process(tmp_path, tfds_dir):
  """The batch script itself, run with bash: its two tasks (4 CPU devices each) train the tiny text
  task like one process on one device, and the finished job does not requeue itself."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name, text in (("srun", _FAKE_SRUN), ("scontrol", _FAKE_SCONTROL)):
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(stat.S_IRWXU)
  workdir = tmp_path / "slurm_run"
  flags = [
    "--config.task.data_dir=" + tfds_dir,
    "--config.task.dataset_config=tiny",
    "--config.total_steps=6",
    "--config.batch_size=16",
    "--config.eval_batch_size=64",
    "--config.mesh.data=4",
    "--config.mesh.fsdp=2",
  ]
  done = _run(
    SLURM,
    "--nodes",
    "2",
    "--gpus_per_node",
    "4",
    "--port",
    str(free_port()),
    "--extras",
    "test",
    "--config",
    "configs/forms_text.py:runlocal",
    "--workdir",
    str(workdir),
    "--dry_run",
    "--",
    *flags,
  )
  assert done.returncode == 0, done.stderr
  script = done.stdout
  env = dict(
    os.environ,
    PATH=f"{bin_dir}:{os.environ['PATH']}",
    SLURM_NTASKS="2",
    SLURM_JOB_NODELIST="node[1-2]",
    SLURM_JOB_ID="7",
    SCONTROL_LOG=str(tmp_path / "log"),
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4",
  )
  ran = subprocess.run(
    ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
  )
  assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
  assert "over 8 devices in 2 process(es)" in ran.stdout + ran.stderr
  assert not (tmp_path / "log").exists()  # finished: no requeue
  one = tmp_path / "one_device"
  train(one, tfds_dir, *[f for f in flags if "mesh" not in f], "--config.mesh.data=1")
  assert_params_close(final_params(workdir), final_params(one), rtol=2e-4, atol=2e-5)


def test_local_sh_hands_its_arguments_to_the_trainer(tmp_path):
  """`./launch/local.sh --config...` reaches the trainer (its refusal of total_steps=0 names the
  value), not pip (a sourced setup script sees the caller's arguments unless given its own); nothing
  is written to the workdir."""
  workdir = tmp_path / "run"
  done = _run(
    os.path.join(REPO, "launch", "local.sh"),
    "--config.total_steps=0",
    env={**os.environ, "WORKDIR": str(workdir)},
  )
  assert done.returncode != 0
  assert "total_steps=0" in done.stderr and "pip" not in done.stderr, done.stderr[-2000:]
  assert not workdir.exists()
