"""Writing a benchmark's JSON: its results plus where they were measured."""

from __future__ import annotations

import json
import os

from deed_jax.machine import machine_facts


def write_result(path: str, result: dict) -> None:
  """Write `result` with the machine it ran on (`machine_facts`) to `path`."""
  result = {**result, **machine_facts()}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  print(f"\nwrote {path}")
