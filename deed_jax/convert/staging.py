"""Write an output directory all at once: into a hidden sibling, renamed into place on success.

A failure (a bad key, a full disk) leaves no partial output, and an existing non-empty directory is
never written into.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile


def check_empty_target(path: str) -> None:
  if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
    raise FileExistsError(f"{path} already exists and is not an empty directory; nothing was written. "
                          "Choose a new output directory.")


@contextlib.contextmanager
def staged_directory(path: str):
  """Yields a fresh directory that becomes `path` when the block succeeds."""
  path = os.path.abspath(path)
  check_empty_target(path)
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.partial-", dir=parent)
  try:
    yield staging
    if os.path.isdir(path):
      os.rmdir(path)  # empty (checked above)
    os.rename(staging, path)
  finally:
    if os.path.exists(staging):
      shutil.rmtree(staging)
