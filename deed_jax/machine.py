"""Where a measurement ran, recorded beside every benchmark result and evaluation report."""

from __future__ import annotations

import os
import platform

import flax
import jax


def machine_facts() -> dict:
  """Device, jax and flax versions, CPU count, platform, XLA_FLAGS."""
  return {
    "device": str(jax.devices()[0]),
    "device_kind": jax.devices()[0].device_kind,
    "jax": jax.__version__,
    "flax": flax.__version__,
    "cpu_count": os.cpu_count(),
    "machine": platform.platform(),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }
