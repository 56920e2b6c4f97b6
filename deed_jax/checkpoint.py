"""Checkpoints: one small module over orbax-checkpoint's `CheckpointManager`.

A workdir (layout in `deed_jax.workdir`) holds `model_config.json` (the architecture) and
`checkpoints/<step>/` with the item `state` (step, params, optimizer state; the data position is the
step, see `deed_jax.data.pipeline.train_batches`). Saves are async, the newest `keep` are kept, and
training resumes from the newest one that reads back whole: a step that does not (a file truncated by
a failing disk, a copy cut short) is reported, moved aside to `<step>.unreadable` and skipped, never
deleted. Arrays restore into whatever shardings the caller asks for, so a run resumes on another mesh
or number of processes. A checkpoint written for another architecture is refused with the differing
options/shapes named, and left as it is. (Checkpoints of earlier versions also hold a `data` item,
the grain reader's position; it is no longer read.)

Layout changes are migrated when a checkpoint is read, never by rewriting it: checkpoints written
before the decoder owned the token embedding hold it at `token_embedding` (next to `decoder`); they
are restored through that layout and handed back in today's (`decoder/token_embedding/embedding`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils as multihost

from deed_jax.errors import MissingPathError, UserError
from deed_jax.models import ModelConfig, MultiExitEncoderDecoder
from deed_jax.param_tree import filter_params, path_holds, path_name
from deed_jax.workdir import (
  CHECKPOINT_DIR,
  absolute,
  check_compatible_workdir,
  model_config_path,
  read_model_config,
)

_LEGACY_EMBEDDING = "token_embedding"  # the table's key beside "decoder" in legacy checkpoints


def _is_legacy(stored: Any) -> bool:
  """Whether a stored tree (params, or a train state holding params and optimizer moments) keeps the
  token table in the legacy place."""
  return any(
    name == _LEGACY_EMBEDDING or name.endswith("/" + _LEGACY_EMBEDDING)
    for name in flat_params(stored)
  )


def _with_layout(tree: Any, legacy: bool) -> Any:
  """`tree` with the token table moved into the legacy layout (`legacy`) or back into today's, in
  every params-shaped dict it holds (the params and each optimizer moment). Leaves are not touched."""
  if isinstance(tree, dict):
    tree = dict(tree)
    decoder = tree.get("decoder")
    if isinstance(decoder, dict):
      decoder = dict(decoder)
      if legacy and isinstance(decoder.get("token_embedding"), dict):
        tree[_LEGACY_EMBEDDING] = decoder.pop("token_embedding")["embedding"]
      elif (
        not legacy and _LEGACY_EMBEDDING in tree and not isinstance(tree[_LEGACY_EMBEDDING], dict)
      ):
        decoder["token_embedding"] = {"embedding": tree.pop(_LEGACY_EMBEDDING)}
      tree["decoder"] = decoder
    return {k: v if k == _LEGACY_EMBEDDING else _with_layout(v, legacy) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    children = [_with_layout(v, legacy) for v in tree]
    return type(tree)(*children) if hasattr(tree, "_fields") else type(tree)(children)
  return tree


def _restore_target(stored: Any, abstract: Any) -> tuple[Any, Callable[[Any], Any]]:
  """What to restore `stored` into, given today's `abstract` tree, and how to turn the restored tree
  into today's layout (the identity unless the checkpoint is in the legacy one)."""
  if not _is_legacy(stored):
    return abstract, lambda restored: restored
  return _with_layout(abstract, legacy=True), lambda restored: _with_layout(restored, legacy=False)


def _shape_mismatches(stored: Any, target: Any) -> list[str]:
  """Leaves whose stored shape differs from the target's, or that exist on one side only."""

  def shapes(tree):
    return {path_name(p): tuple(v.shape) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}

  flat_stored, flat_target = shapes(stored), shapes(target)
  return [
    f"{k}: stored {flat_stored.get(k, 'missing')} vs model {flat_target.get(k, 'missing')}"
    for k in sorted(set(flat_stored) | set(flat_target))
    if flat_stored.get(k) != flat_target.get(k)
  ]


def _restore_args(abstract: Any, partial: bool = False) -> ocp.args.PyTreeRestore:
  """Restore into `abstract`'s structure, dtypes and shardings (ShapeDtypeStructs or arrays)."""
  return ocp.args.PyTreeRestore(
    item=abstract,
    partial_restore=partial,
    restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
  )


class Checkpointer:
  """Save/restore the train state under `workdir` (the data position is its step)."""

  def __init__(
    self,
    workdir: str,
    model_config: ModelConfig,
    *,
    keep: int = 3,
    save_interval_steps: int = 1,
    async_save: bool = True,
  ):
    check_compatible_workdir(workdir, model_config)
    self.workdir = workdir
    self.model_config = model_config
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      save_interval_steps=save_interval_steps,
      enable_async_checkpointing=async_save,
      create=True,
    )
    self.manager = ocp.CheckpointManager(
      absolute(workdir) / CHECKPOINT_DIR,
      options=options,
      item_handlers={"state": ocp.PyTreeCheckpointHandler()},
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Async save (the manager decides by its interval unless `force`). Returns whether it saved."""
    if jax.process_index() == 0 and not model_config_path(self.workdir).exists():
      model_config_path(self.workdir).write_text(self.model_config.to_json())
    return self.manager.save(
      step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state)), force=force
    )

  def restore(self, step: int, abstract_state: Any) -> Any:
    """Restore `step` into the structure/shardings of `abstract_state`; refuses mismatched shapes."""
    stored = self.manager.item_metadata(step)["state"]
    target, to_current = _restore_target(stored, abstract_state)
    problems = _shape_mismatches(stored, target)
    if problems:
      raise UserError(
        f"Checkpoint {step} in {self.workdir} does not fit this model: "
        + "; ".join(problems[:10])
        + ". The checkpoint was left untouched."
      )
    restored = self.manager.restore(step, args=ocp.args.Composite(state=_restore_args(target)))
    return to_current(restored["state"])

  def restore_newest(
    self, abstract_state: Any, report: Callable[[str], None] = print
  ) -> tuple[int | None, Any]:
    """(step, state) of the newest checkpoint that reads back whole, or (None, None) when there is
    none. A step that fails to read is reported, moved aside to `<step>.unreadable` (so that the run
    can write that step again) and skipped for the one before; one that does not fit the model is
    refused (`restore`)."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        return step, self.restore(step, abstract_state)
      except UserError:
        raise
      except Exception as error:  # orbax/tensorstore raise many kinds for a damaged step
        directory = epath.Path(self.manager.directory) / str(step)
        aside = directory.parent / f"{step}.unreadable"
        report(
          f"Checkpoint step {step} ({directory}) cannot be read ({type(error).__name__}: "
          f"{str(error)[:200]}); skipped, and moved aside to {aside} (not deleted)."
        )
        multihost.sync_global_devices(f"deed_jax checkpoint {step} read")
        if jax.process_index() == 0:
          directory.rename(aside)
        multihost.sync_global_devices(f"deed_jax checkpoint {step} moved aside")
        self.manager.reload()
    return None, None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def abstract_params(config: ModelConfig):
  """(graphdef, params: a pure dict of ShapeDtypeStructs on the first local device). Allocates
  nothing."""
  model = nnx.eval_shape(lambda: MultiExitEncoderDecoder(config, rngs=nnx.Rngs(0)))
  graphdef, params = nnx.split(model, nnx.Param)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return graphdef, jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), nnx.to_pure_dict(params)
  )


def flat_params(params: Any) -> dict[str, Any]:
  """A params pure dict as {"decoder/layers/0/mlp/wi": leaf}."""
  return {path_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def save_params(workdir: str, config: ModelConfig, params: Any, step: int = 0) -> None:
  """Write a workdir that holds only a model (config + params at `step`), e.g. a converted checkpoint.
  `load_model` restores it and training can start from it."""
  checkpointer = Checkpointer(workdir, config, async_save=False)
  try:
    checkpointer.save(step, {"params": params}, force=True)
    checkpointer.wait()
  finally:
    checkpointer.close()


def restore_params(
  workdir: str, abstract: Any, step: int | None = None, may_lack: tuple[str, ...] = ()
) -> Any:
  """The params of `step` (default newest) in `workdir`, restored into `abstract`'s structure, dtypes
  and shardings. Refuses, naming them, parameters whose stored shape differs.

  Parameters under the path names `may_lack` (e.g. an exit classifier a run adds to the model it
  starts from) may be absent from the checkpoint: they are then absent from the result too, and the
  caller keeps their initial values."""
  config = read_model_config(workdir)
  if config is None:
    raise MissingPathError(
      f"{model_config_path(workdir)} not found: {workdir} is not a deed-jax workdir."
    )
  checkpointer = Checkpointer(workdir, config, async_save=False)
  try:
    step = checkpointer.latest_step() if step is None else step
    if step is None:
      raise MissingPathError(f"No checkpoint under {workdir}/{CHECKPOINT_DIR}.")
    stored = checkpointer.manager.item_metadata(step)["state"]["params"]
    if may_lack:
      have = set(flat_params(stored))
      abstract = filter_params(abstract, lambda p: p in have or not path_holds(p, may_lack))
    target, to_current = _restore_target(stored, abstract)
    problems = _shape_mismatches(stored, target)
    if problems:
      raise UserError(
        f"Checkpoint {step} in {workdir} does not fit the model: " + "; ".join(problems[:10])
      )
    restored = checkpointer.manager.restore(
      step, args=ocp.args.Composite(state=_restore_args({"params": target}, partial=True))
    )
  finally:
    checkpointer.close()
  return to_current(restored["state"]["params"])


def load_model(workdir: str, step: int | None = None) -> MultiExitEncoderDecoder:
  """A ready model from a workdir: its `model_config.json` + the params of `step` (default newest)."""
  config = read_model_config(workdir)
  if config is None:
    raise MissingPathError(
      f"{model_config_path(workdir)} not found: {workdir} is not a deed-jax workdir."
    )
  graphdef, abstract = abstract_params(config)
  return nnx.merge(graphdef, restore_params(workdir, abstract, step))
