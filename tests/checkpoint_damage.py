"""Damage a saved orbax checkpoint step as disks and interrupted copies do, byte by byte."""

from __future__ import annotations

import os
import pathlib

DAMAGES = ("metadata_lost", "manifest_garbage", "data_cut_short")


def damage_step(step_dir: str | os.PathLike, kind: str) -> str:
  """Damage `<workdir>/checkpoints/<step>` (`kind` from DAMAGES); -> the file it changed."""
  state = pathlib.Path(step_dir) / "state"
  if kind == "metadata_lost":  # orbax's tree metadata, gone
    target = state / "_METADATA"
    target.unlink()
  elif kind == "manifest_garbage":  # the OCDBT manifest overwritten with bytes that are not one
    target = state / "manifest.ocdbt"
    target.write_bytes(b"not a manifest" * 8)
  elif kind == "data_cut_short":  # the largest array data file, half of it lost
    data = [p for p in state.rglob("*") if p.is_file() and p.parent.name == "d"]
    target = max(data, key=lambda p: p.stat().st_size)
    with open(target, "r+b") as f:
      f.truncate(target.stat().st_size // 2)
  else:
    raise ValueError(f"unknown damage {kind!r}; one of {DAMAGES}")
  return str(target)
