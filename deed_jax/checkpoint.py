"""Checkpoints: one small module over orbax-checkpoint's `CheckpointManager`.

A workdir (layout in `deed_jax.workdir`) holds `model_config.json` (the architecture) and
`checkpoints/<step>/` with the item `state` (step, params, optimizer state; the data position is the
step, see `deed_jax.data.pipeline.train_batches`). Saves are async, the newest `keep` are kept, and
training resumes from the newest one that reads back whole: a damaged step (its metadata lost, a file
truncated by a failing disk, a copy cut short) is reported, moved aside to `<step>.unreadable` and
skipped, never deleted; reading a model for evaluation or export skips it and leaves it. Arrays
restore into whatever shardings the caller asks for, so a run resumes on another mesh or number of
processes. A checkpoint written for another architecture is refused with the differing
options/shapes named, and left as it is. (Checkpoints of earlier versions also hold a `data` item,
the grain reader's position; it is no longer read.)

Layout changes are migrated when a checkpoint is read, never by rewriting it: checkpoints written
before the decoder owned the token embedding hold it at `token_embedding` (next to `decoder`); they
are restored through that layout and handed back in today's (`decoder/token_embedding/embedding`).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
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


class UnreadableStepError(UserError):
  """A checkpoint step whose files do not read back (its orbax metadata lost, a data file cut short,
  a corrupt manifest): damage, as opposed to a checkpoint of another model."""


def _to_stderr(message: str) -> None:
  print(message, file=sys.stderr)


def _step_directory(manager: ocp.CheckpointManager, step: int) -> epath.Path:
  return epath.Path(manager.directory) / str(step)


def _unreadable(manager: ocp.CheckpointManager, step: int, why: str) -> UnreadableStepError:
  return UnreadableStepError(
    f"Checkpoint step {step} ({_step_directory(manager, step)}) cannot be read: "
    + (why if len(why) <= 240 else why[:240] + " ...")
    + "."
  )


def _check_intact(manager: ocp.CheckpointManager, step: int) -> None:
  """Raise `UnreadableStepError` unless every value of the step's OCDBT store is there: its
  manifest decodes and the last byte of each value is within its data file (one byte read per
  value, so a file cut short is found at a tiny fraction of a restore's cost). Done by hand, and
  waited for to the last read, because orbax's restore of a damaged store fails in its event loop
  and leaves reads behind that print thousands of lines once the loop is closed. A value whose
  bytes were overwritten in place is not detected (OCDBT keeps no checksums)."""
  state = _step_directory(manager, step) / "state"
  if not (state / "manifest.ocdbt").exists():
    return  # not an OCDBT checkpoint: orbax's restore is the check
  try:
    spec = {"driver": "ocdbt", "base": f"file://{state}/"}
    # A context of its own: nothing this check caches is shared with orbax's reads.
    store = ts.KvStore.open(spec, context=ts.Context()).result()
    keys = store.list().result()
  except Exception as error:
    raise _unreadable(manager, step, f"{type(error).__name__}: {error}") from None
  reads = [store.read(key, byte_range=slice(-1, None)) for key in keys]
  problems = []
  for key, read in zip(keys, reads):
    try:
      if read.result().state != "value":
        problems.append(f"{key.decode()} is missing")
    except Exception as error:
      problems.append(f"{key.decode()}: {type(error).__name__}: {error}")
  if problems:
    raise _unreadable(manager, step, f"{len(problems)} of {len(keys)} values: {problems[0]}")


def _read_step(
  manager: ocp.CheckpointManager,
  step: int,
  abstract: Any,
  workdir: str,
  *,
  partial: bool = False,
  may_lack: tuple[str, ...] = (),
) -> Any:
  """The `state` item of `step` restored into `abstract` (all of it; with `partial`, only the
  subtrees `abstract` names, e.g. the params of a train state). A step whose stored tree is not
  the model's is a `UserError` naming the differences; one that cannot be read, an
  `UnreadableStepError` naming the step. The two are told apart by reading the stored metadata
  first: without it nothing can be compared, so a lost `_METADATA` is damage, not a misfit."""
  _check_intact(manager, step)  # first: orbax's metadata read opens every array too
  if not (_step_directory(manager, step) / "state" / "_METADATA").exists():
    raise _unreadable(manager, step, "its orbax metadata (state/_METADATA) is missing")
  try:
    metadata = manager.item_metadata(step)
    stored = None if metadata is None else metadata["state"]
  except Exception as error:  # orbax raises many kinds for a damaged step
    raise _unreadable(manager, step, f"{type(error).__name__}: {error}") from None
  if stored is None:
    raise _unreadable(manager, step, "its orbax metadata (state/_METADATA) is empty")
  if partial:
    stored = {k: stored[k] for k in abstract if k in stored}
  if may_lack and "params" in stored:
    have = set(flat_params(stored["params"]))
    keep = lambda p: p in have or not path_holds(p, may_lack)
    abstract = dict(abstract, params=filter_params(abstract["params"], keep))
  target, to_current = _restore_target(stored, abstract)
  problems = _shape_mismatches(stored, target)
  if problems:
    raise UserError(
      f"Checkpoint {step} in {workdir} does not fit this model: "
      + "; ".join(problems[:10])
      + ". The checkpoint was left untouched."
    )
  try:
    restored = manager.restore(
      step, args=ocp.args.Composite(state=_restore_args(target, partial=partial))
    )
  except Exception as error:  # a data file cut short, a corrupt manifest, ...
    raise _unreadable(manager, step, f"{type(error).__name__}: {error}") from None
  return to_current(restored["state"])


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
    """Restore `step` into the structure/shardings of `abstract_state`; refuses mismatched shapes
    (`UserError`) and raises `UnreadableStepError` for a damaged step."""
    return _read_step(self.manager, step, abstract_state, self.workdir)

  def restore_newest(
    self, abstract_state: Any, report: Callable[[str], None] = print
  ) -> tuple[int | None, Any]:
    """(step, state) of the newest checkpoint that reads back whole, or (None, None) when there is
    none. A damaged step (`UnreadableStepError`) is reported, moved aside to `<step>.unreadable` (so
    that the run can write that step again) and skipped for the one before; one that does not fit
    the model is refused (`restore`)."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        return step, self.restore(step, abstract_state)
      except UnreadableStepError as error:
        directory = _step_directory(self.manager, step)
        aside = directory.parent / f"{step}.unreadable"
        report(f"{error} Skipped, and moved aside to {aside} (not deleted).")
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
  workdir: str,
  abstract: Any,
  step: int | None = None,
  may_lack: tuple[str, ...] = (),
  report: Callable[[str], None] = _to_stderr,
) -> Any:
  """The params of `step` (default: the newest readable) in `workdir`, restored into `abstract`'s
  structure, dtypes and shardings (`restore_step` says which step that was)."""
  return restore_step(workdir, abstract, step, may_lack, report)[1]


def restore_step(
  workdir: str,
  abstract: Any,
  step: int | None = None,
  may_lack: tuple[str, ...] = (),
  report: Callable[[str], None] = _to_stderr,
) -> tuple[int, Any]:
  """(step, params) of `step` in `workdir`, restored into `abstract`'s structure, dtypes and
  shardings. Refuses, naming them, parameters whose stored shape differs.

  Without `step`, the newest step that reads back whole: a damaged newer one is `report`ed and
  skipped, and left as it is (reading never moves or rewrites a checkpoint). A named `step` that is
  damaged is an `UnreadableStepError`.

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
    steps = sorted(checkpointer.manager.all_steps(), reverse=True) if step is None else [step]
    if not steps:
      raise MissingPathError(f"No checkpoint under {workdir}/{CHECKPOINT_DIR}.")
    for candidate in steps:
      try:
        target = {"params": abstract}
        params = _read_step(
          checkpointer.manager, candidate, target, workdir, partial=True, may_lack=may_lack
        )["params"]
        return candidate, params
      except UnreadableStepError as error:
        if step is not None or candidate == steps[-1]:
          raise
        report(f"{error} Skipped (left as it is).")
  finally:
    checkpointer.close()


def load_model(workdir: str, step: int | None = None) -> MultiExitEncoderDecoder:
  """A ready model from a workdir: its `model_config.json` + the params of `step` (default: the
  newest readable one)."""
  return load_step(workdir, step)[1]


def params_fingerprint(model: MultiExitEncoderDecoder) -> str:
  """A short hash of a model's parameters: every array's path, shape and dtype, and up to 4096 evenly
  spaced values of it (retraining or another checkpoint changes them; hashing every byte of a large
  model would cost seconds). What decode_config.json records it was calibrated for."""
  digest = hashlib.sha256()
  for path, value in sorted(
    (path_name(p), v) for p, v in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))
  ):
    array = np.asarray(jax.device_get(value)).reshape(-1)
    sample = array[:: max(1, array.size // 4096)]
    digest.update(f"{path}:{value.shape}:{value.dtype}".encode())
    digest.update(np.ascontiguousarray(sample).tobytes())
  return digest.hexdigest()[:16]


def load_step(
  workdir: str, step: int | None = None, report: Callable[[str], None] = _to_stderr
) -> tuple[int, MultiExitEncoderDecoder]:
  """(step, model) as `load_model`, saying which step a default of the newest came to."""
  config = read_model_config(workdir)
  if config is None:
    raise MissingPathError(
      f"{model_config_path(workdir)} not found: {workdir} is not a deed-jax workdir."
    )
  graphdef, abstract = abstract_params(config)
  step, params = restore_step(workdir, abstract, step, report=report)
  return step, nnx.merge(graphdef, params)
