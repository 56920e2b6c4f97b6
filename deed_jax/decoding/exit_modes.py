"""What each exit mode does at a decoding step, one class per mode, chosen once when the step is built.

The step (`DecodeStep`) runs the same layer loop for every mode; a mode answers the few questions in
which modes differ:
- `exits_early`: may a row take its token below the top layer?
- `top_layer`: the layer every remaining row exits at (the last one, or fixed's k).
- `backfill_chunk`: the widest block a layer call computes (1 where nothing is ever deferred).
- `defers`: does a skipped layer leave positions for later steps to compute just in time?
- `verify_width`: how many slots a speculative verification scores (0: the mode never verifies).
- `wants_deeper`: does the batch go on to the next layer?
- `after_stack`: what happens to the caches once the step's layers have run (copy's K/V projection).

`EXIT_MODES` is the one registry of modes: `DecodeConfig` checks names against it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from deed_jax.decoding.loops import run_once
from deed_jax.models.kv_cache import KVCache

if TYPE_CHECKING:
  from deed_jax.decoding.config import DecodeConfig
  from deed_jax.models.decoder import Decoder

Array = jax.Array


class ExitMode:
  """The default: every layer runs, every row exits at the top layer (static decoding)."""

  exits_early = False
  defers = False

  def top_layer(self, config: DecodeConfig, num_layers: int) -> int:
    """The 1-based layer at which every row still undecided exits."""
    del config
    return num_layers

  def backfill_chunk(self, config: DecodeConfig) -> int:
    del config
    return 1

  def verify_width(self, config: DecodeConfig) -> int:
    """The slots a verification scores (speculative decoding); 0: the mode never verifies."""
    del config
    return 0

  def wants_deeper(self, live: Array, decided: Array) -> Array:
    """[] bool: whether the next layer runs, from the rows' `live` and `decided` [R] bool."""
    del live
    return jnp.any(~decided)

  def after_stack(
    self,
    decoder: Decoder,
    caches: tuple[KVCache, ...],
    position: Array,
    exit_layer: Array,
    exit_hidden: Array,
  ) -> tuple[KVCache, ...]:
    """The caches once the step's layers have run; exit_layer [R] (1-based, 0: not live) and
    exit_hidden [R, D] are each row's exit."""
    del decoder, position, exit_layer, exit_hidden
    return caches


class Static(ExitMode):
  pass


class Fixed(ExitMode):
  """Every token from layer `fixed_exit_layer`; the layers above it never run."""

  def top_layer(self, config: DecodeConfig, num_layers: int) -> int:
    del num_layers
    return config.fixed_exit_layer


class Oracle(ExitMode):
  """Every layer runs for every live row; each row's token comes from its first confident exit.
  (DEED's exit decisions with the static model's compute: a check of which exits DEED takes.)"""

  exits_early = True

  def wants_deeper(self, live: Array, decided: Array) -> Array:
    del decided
    return jnp.any(live)


class Deed(ExitMode):
  """DEED: a row exits at its first confident layer; the layers it skipped are computed just in time,
  in blocks, when a later step needs them, so every feature is the full model's."""

  exits_early = True
  defers = True

  def backfill_chunk(self, config: DecodeConfig) -> int:
    return min(config.backfill_chunk, config.max_new_tokens)  # no block is longer than the decode


class Copy(ExitMode):
  """CALM's baseline: skipped layers are never computed; their K/V at the position are projected from
  the row's exit state instead."""

  exits_early = True

  def after_stack(
    self,
    decoder: Decoder,
    caches: tuple[KVCache, ...],
    position: Array,
    exit_layer: Array,
    exit_hidden: Array,
  ) -> tuple[KVCache, ...]:
    exited_early = jnp.any((exit_layer > 0) & (exit_layer < len(caches)))

    def project(caches: tuple[KVCache, ...]) -> tuple[KVCache, ...]:
      # Layer 1 is above no exit.
      out = [caches[0]]
      for j in range(1, len(caches)):
        copied = (exit_layer > 0) & (exit_layer < j + 1)  # [R]
        k, v = decoder.self_kv(j, exit_hidden[:, None])  # [R, H, 1, Dh]
        out.append(caches[j].write_rows(k, v, position, copied))
      return tuple(out)

    return run_once(exited_early, project, caches)


class Speculative(ExitMode):
  """Lossless self-speculative decoding (`speculative`): the step drafts a token through layers
  1..draft_exit_layer; the layers above are left deferred, and the verification computes them over
  the drafted block as a backfill (blocks of at most max_draft + 1 positions)."""

  defers = True

  def top_layer(self, config: DecodeConfig, num_layers: int) -> int:
    del num_layers
    return config.draft_exit_layer

  def backfill_chunk(self, config: DecodeConfig) -> int:
    return min(config.backfill_chunk, config.max_draft + 1, config.max_new_tokens)

  def verify_width(self, config: DecodeConfig) -> int:
    return config.max_draft + 1


EXIT_MODES: dict[str, ExitMode] = {
  "deed": Deed(),
  "oracle": Oracle(),
  "copy": Copy(),
  "static": Static(),
  "fixed": Fixed(),
  "speculative": Speculative(),
}
