"""Writing a benchmark's JSON: its results plus where they were measured."""

from __future__ import annotations

import json
import os
import platform

import flax
import jax


def machine_facts() -> dict:
  """Where a measurement ran: device, jax and flax versions, CPU count, platform, XLA_FLAGS."""
  return {"device": str(jax.devices()[0]), "device_kind": jax.devices()[0].device_kind,
          "jax": jax.__version__, "flax": flax.__version__, "cpu_count": os.cpu_count(),
          "machine": platform.platform(), "xla_flags": os.environ.get("XLA_FLAGS", "")}


def write_result(path: str, result: dict) -> None:
  """Write `result` with the machine it ran on (`machine_facts`) to `path`."""
  result = {**result, **machine_facts()}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  print(f"\nwrote {path}")
