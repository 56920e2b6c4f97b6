"""Write an output directory all at once: into a hidden sibling, renamed into place on success.

A failure (a bad key, a full disk) leaves no partial output, and an existing non-empty directory is
never written into; with `replace`, it is swapped for the new one only once the new one is complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from deed_jax.errors import ExistingPathError


def check_empty_target(path: str) -> None:
  if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
    raise ExistingPathError(
      f"{path} already exists and is not an empty directory; nothing was written. "
      "Choose a new output directory."
    )


@contextlib.contextmanager
def staged_directory(path: str, replace: bool = False):
  """Yields a fresh directory that becomes `path` when the block succeeds. Without `replace`, `path`
  must not exist or be empty; with it, an existing `path` is replaced only then (a report rewritten
  by a new run: a failed run leaves the previous one as it was)."""
  path = os.path.abspath(path)
  if not replace:
    check_empty_target(path)
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.partial-", dir=parent)
  old = None
  try:
    yield staging
    if os.path.isdir(path) and replace:
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
      os.rename(path, os.path.join(old, "previous"))
    elif os.path.isdir(path):
      os.rmdir(path)  # empty (checked above)
    os.rename(staging, path)
  finally:
    for leftover in (staging, old):
      if leftover is not None and os.path.exists(leftover):
        shutil.rmtree(leftover)
