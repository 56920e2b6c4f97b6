"""Cutting examples in two by group (the document or image a question is about), so that no group
falls on both sides: seeded, and the same whatever the order of the examples (groups are ranked by a
hash of their name). The VQA builders cut their splits with it, and calibration cuts its split into
the part that orders the exit policies and the part that tests them."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from deed_jax.errors import UserError


def cut_by_group(
  groups: Sequence[str], share: float, what: str, seed: int, min_groups: int = 1
) -> tuple[list[int], list[int]]:
  """groups: each example's group [n]. -> (taken, rest): indices of whole groups, ranked by a seeded
  hash of their name, taken until `taken` holds at least `share` of the examples and `min_groups`
  groups; both in the examples' order. Refuses too few groups for `rest` to keep one."""
  names = sorted(set(groups))
  if len(names) < min_groups + 1:
    raise UserError(
      f"Cannot cut {what} by document/image: its {len(groups)} examples are about "
      f"{len(names)} document(s)/image(s); it needs at least {min_groups + 1}."
    )
  ranked = sorted(names, key=lambda g: (hashlib.sha256(f"{seed}:{g}".encode()).digest(), g))
  sizes = {g: 0 for g in names}
  for group in groups:
    sizes[group] += 1
  chosen, count = set(), 0
  for group in ranked[:-1]:  # the last group always stays in `rest`
    if count >= share * len(groups) and len(chosen) >= min_groups:
      break
    chosen.add(group)
    count += sizes[group]
  taken = [i for i, g in enumerate(groups) if g in chosen]
  return taken, [i for i, g in enumerate(groups) if g not in chosen]
