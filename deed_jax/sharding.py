"""The device mesh and the logical-axis rules that place parameters, optimizer state and batches on it.

A run's devices form one `jax.sharding.Mesh` with three axes (MaxText's vocabulary, reduced):

  data    pure data parallelism: parameters replicated, the batch split;
  fsdp    data parallelism with parameters and optimizer state split too (ZeRO-3 style); GSPMD
          gathers each weight where a layer needs it;
  tensor  model parallelism: heads, MLP hidden units and the vocabulary split.

Parameters carry logical axis names (`embed, mlp, heads, kv, vocab`, see `deed_jax.models.layers`);
the rules (`config.sharding_rules`) map each name to mesh axes. A dimension whose size the mesh axes do
not divide stays whole (replicated): a byte vocabulary of 259 is not split over 2 tensor shards. The
batch's leading axis is the logical `batch`. The same code runs on one CPU device (a 1x1x1 mesh,
everything whole) and on a pod slice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from deed_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
# Logical axis -> mesh axes (one name, a tuple of names, or None for never split).
DEFAULT_RULES = (
  ("batch", ("data", "fsdp")),
  ("embed", "fsdp"),
  ("mlp", "tensor"),
  ("heads", "tensor"),
  ("vocab", "tensor"),
  ("kv", None),
)

Rules = Sequence[tuple[str, Any]]


def mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """The (data, fsdp, tensor) sizes of `config.mesh`, with one -1 filled by the remaining devices.
  Refuses, naming both, sizes whose product is not the device count."""
  unknown = sorted(set(sizes) - set(MESH_AXES))
  if unknown:
    raise UserError(f"config.mesh has unknown axes {unknown}; the mesh axes are {list(MESH_AXES)}.")
  shape = [int(sizes.get(axis, 1)) for axis in MESH_AXES]
  described = ", ".join(f"{a}={s}" for a, s in zip(MESH_AXES, shape))
  if any(s == 0 or s < -1 for s in shape) or shape.count(-1) > 1:
    raise UserError(
      f"config.mesh ({described}): sizes must be >= 1, with at most one -1 (the rest "
      "of the devices)."
    )
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise UserError(
        f"config.mesh ({described}) cannot fill {num_devices} devices: {known} does not "
        f"divide {num_devices}."
      )
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise UserError(
      f"config.mesh ({described}) has {math.prod(shape)} devices but this run has "
      f"{num_devices}; the product of the mesh sizes must equal the device count."
    )
  return tuple(shape)


def make_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The mesh over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(sizes, len(devices))
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)


def check_rules(rules: Rules) -> dict[str, tuple[str, ...]]:
  """`config.sharding_rules` as {logical: (mesh axes...)}; refuses a rule naming an unknown mesh
  axis or written in the wrong shape."""
  table = {}
  for rule in rules:
    if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)):
      raise UserError(
        f"config.sharding_rules holds {rule!r}; each rule is (logical axis name, mesh "
        f"axis | (mesh axes...) | None), e.g. ('embed', 'fsdp')."
      )
    logical, target = rule
    axes = () if target is None else (target,) if isinstance(target, str) else tuple(target)
    unknown = [a for a in axes if a not in MESH_AXES]
    if unknown:
      raise UserError(
        f"config.sharding_rules maps {logical!r} to unknown mesh axis "
        f"{unknown[0]!r}; the mesh axes are {list(MESH_AXES)}."
      )
    table[logical] = axes
  return table


def logical_to_spec(
  logical: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules
) -> PartitionSpec:
  """A PartitionSpec for an array of `shape` whose dimensions carry the `logical` names.

  A dimension stays whole when its name has no rule, when the mesh axes do not divide it, or when
  an earlier dimension already uses one of its mesh axes (a mesh axis splits one dimension only)."""
  table = check_rules(rules)
  used: set[str] = set()
  spec = []
  for name, size in zip(logical, shape):
    axes = tuple(a for a in table.get(name, ()) if mesh.shape[a] > 1) if name else ()
    if not axes or used & set(axes) or size % math.prod(mesh.shape[a] for a in axes):
      spec.append(None)
      continue
    used |= set(axes)
    spec.append(axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*spec)


def param_logical_axes(abstract_model: nnx.Module) -> dict:
  """The logical axis names of every parameter, as a pure dict shaped like the params."""
  _, params = nnx.split(abstract_model, nnx.Param)
  return nnx.to_pure_dict(nnx.get_partition_spec(params))


def param_shardings(params: Any, logical_axes: Any, mesh: Mesh, rules: Rules) -> Any:
  """NamedShardings for a params tree (arrays or ShapeDtypeStructs) from its logical axes."""
  return jax.tree.map(
    lambda p, axes: NamedSharding(mesh, logical_to_spec(tuple(axes), p.shape, mesh, rules)),
    params,
    logical_axes,
    is_leaf=lambda x: isinstance(x, PartitionSpec),
  )


def _dict_suffix(path) -> tuple[str, ...]:
  """The trailing run of dict keys in a key path: where in a params tree a leaf sits."""
  keys = []
  for entry in reversed(path):
    if not isinstance(entry, jax.tree_util.DictKey):
      break
    keys.append(str(entry.key))
  return tuple(reversed(keys))


def tree_shardings(tree: Any, params_shardings: Any, mesh: Mesh) -> Any:
  """Shardings for a tree that holds params-shaped subtrees (a train state: the params and each
  optimizer moment). A leaf takes the sharding of the parameter at the same path within its
  params-shaped subtree; every other leaf (a step count) is replicated."""
  by_path = {
    _dict_suffix(p): s for p, s in jax.tree_util.tree_flatten_with_path(params_shardings)[0]
  }
  replicated = NamedSharding(mesh, PartitionSpec())

  def pick(path, leaf):
    sharding = by_path.get(_dict_suffix(path))
    if sharding is None or len(sharding.spec) > len(leaf.shape):
      return replicated
    return sharding

  return jax.tree_util.tree_map_with_path(pick, tree)


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
  """Batches are split along their leading (example) axis over the `batch` rule's mesh axes."""
  axes = check_rules(rules).get("batch", ())
  return NamedSharding(mesh, PartitionSpec(axes if axes else None))


def batch_shards(mesh: Mesh, rules: Rules) -> int:
  """How many ways a batch is split: the product of the `batch` rule's mesh axis sizes."""
  return math.prod(mesh.shape[a] for a in check_rules(rules).get("batch", ()))


def global_batch(local: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """This process's rows of a global batch (numpy, [B / processes, ...]) -> global jax Arrays
  [B, ...], each device holding its rows; no data crosses between processes."""
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()
  }


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())
