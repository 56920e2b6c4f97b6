"""Parameter trees as nested dicts: path names, and picking or merging subtrees by path (what
`train_only`, `init_from` and checkpoint restores need)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def path_name(path) -> str:
  """A key path as 'a/b/0', the same for dicts, NamedTuples and lists (orbax stores all as dicts)."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
  return "/".join(parts)


def path_holds(path: str, names: Iterable[str]) -> bool:
  """Whether a parameter path ('decoder/exit_classifier/kernel') holds one of `names`, each a path
  component or a run of them ('exit_classifier', 'decoder/adapters')."""
  return any(f"/{name.strip('/')}/" in f"/{path}/" for name in names)


def filter_params(tree: Any, keep: Callable[[str], bool], prefix: str = "") -> Any:
  """The nested dict `tree` with only the leaves whose path `keep` accepts; emptied dicts are
  dropped (a pure-dict params tree, or anything shaped like one)."""
  if not isinstance(tree, dict):
    return tree
  out = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, dict):
      kept = filter_params(value, keep, path + "/")
      if kept:
        out[key] = kept
    elif keep(path):
      out[key] = value
  return out


def merge_params(base: Any, update: Any) -> Any:
  """`base` with every leaf `update` holds put in its place (nested dicts merged, not replaced)."""
  if not isinstance(base, dict) or not isinstance(update, dict):
    return update
  return {
    **base,
    **{k: merge_params(base.get(k), v) if k in base else v for k, v in update.items()},
  }
