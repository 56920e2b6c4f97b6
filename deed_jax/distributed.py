"""Joining JAX's multi-process runtime (`jax.distributed`) before anything touches a device.

Every process of a multi-host run calls `initialize` first. With a coordinator address, process count
and process id given (flags), it joins them; under Slurm with several tasks, on a TPU VM slice whose
workers are listed in the environment, or when asked (`--distributed`), JAX finds them itself;
otherwise the run is one process. Joining also starts JAX's preemption service, through which all
processes agree on the step at which to save when one of them gets SIGTERM. On CPUs the processes
exchange data through gloo (JAX's CPU collectives), so several processes on one machine form a real
multi-process run.
"""

from __future__ import annotations

import os

import jax

from deed_jax.errors import UserError


def cluster_detected() -> bool:
  """Whether the environment is one JAX auto-configures a multi-process run in: a Slurm job with
  several tasks, or a multi-host TPU slice."""
  slurm_tasks = int(os.environ.get("SLURM_NTASKS", os.environ.get("SLURM_NPROCS", "1")) or 1)
  tpu_hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
  return slurm_tasks > 1 or len(tpu_hosts) > 1


def check_arguments(
  coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> bool:
  """Whether explicit multi-process arguments are given; refuses an incomplete or inconsistent set."""
  given = {
    "coordinator_address": coordinator_address,
    "num_processes": num_processes,
    "process_id": process_id,
  }
  if all(v is None for v in given.values()):
    return False
  missing = [k for k, v in given.items() if v is None]
  if missing:
    raise UserError(
      f"--coordinator_address, --num_processes and --process_id go together; "
      f"missing {['--' + k for k in missing]}."
    )
  if ":" not in coordinator_address:
    raise UserError(f"--coordinator_address={coordinator_address!r} must be host:port.")
  if num_processes < 1 or not 0 <= process_id < num_processes:
    raise UserError(
      f"--process_id={process_id} must be in 0..--num_processes-1 "
      f"(--num_processes={num_processes})."
    )
  return True


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  auto: bool = False,
) -> None:
  """Join the multi-process run the arguments or the environment describe (no-op for one process).
  `auto` joins whatever JAX detects (a TPU VM slice, Slurm, ...) without the environment check."""
  explicit = check_arguments(coordinator_address, num_processes, process_id)
  if not explicit and not auto and not cluster_detected():
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  else:
    jax.distributed.initialize()
