"""Decoder prompts: each row's decoder prefix, as Hugging Face's `decoder_input_ids` (the start token
included), checked and laid out for decoding.

Rows of one batch may have prompts of different lengths P_b. They are laid out left-padded, ending
at the same cache slot P - 1 (P = max P_b): every row then decodes its new tokens at the same slots,
so the decoding loop keeps one slot index, one batch-wide fill pointer per layer and plain in-place
cache writes. Each row's own positions (what its position embedding sees) are the slot minus its
padding, `pad_b = P - P_b`, and the padding slots [0, pad_b) are masked out of its self-attention
(`Decoder.block_bias`). A relative position bias (T5) depends only on slot differences, which the
shift leaves as they are. So each row's features are those of decoding it alone, unpadded; the tests
check that against a reference that lays prompts out without padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np

from deed_jax.errors import UserError

Array = jax.Array


class Prompt(NamedTuple):
  """Prompts left-padded into one array: row b's P_b tokens are tokens[b, P - P_b:]."""

  tokens: Array  # [B, P] int32; padding (pad_b slots on the left) holds `pad_id`
  pad: Array  # [B] int32: P - P_b, the padding slots of each row

  @property
  def length(self) -> int:
    """P, the longest prompt: decoding starts at slot P - 1 (the last prompt token of every row)."""
    return self.tokens.shape[1]


def start_prompt(batch: int, bos_id: int) -> Prompt:
  """The prompt of decoding without one: the start token alone, in every row."""
  return Prompt(np.full((batch, 1), bos_id, np.int32), np.zeros((batch,), np.int32))


def make_prompt(
  prompt: Sequence[Sequence[int]] | np.ndarray | None,
  *,
  batch: int,
  vocab_size: int,
  max_new_tokens: int,
  max_target_length: int,
  bos_id: int,
  pad_id: int,
) -> Prompt:
  """Check `prompt` (None: the start token alone) for a batch of `batch` rows and lay it out.

  A prompt is a list of `batch` token-id sequences (lengths may differ), an int array [batch, P], or
  a `Prompt` already laid out (kept at its width P, so batches of shorter prompts reuse one compiled
  program). Refused, naming the value: a row count that is not `batch`, an empty row, an id outside
  [0, vocab_size), or a row whose P_b + max_new_tokens - 1 positions (its prompt, then every new
  token but the last, which is never fed back) exceed the model's `max_target_length`."""
  if prompt is None:
    return start_prompt(batch, bos_id)
  if isinstance(prompt, (str, bytes)) or not hasattr(prompt, "__len__"):
    raise UserError(
      f"prompt={prompt!r:.80} must be a list of token-id sequences (one per row) or an int "
      "array [batch, P]."
    )
  if isinstance(prompt, jax.core.Tracer):
    raise UserError("prompt must be concrete (a list or an array), not a traced value.")
  width = prompt.length if isinstance(prompt, Prompt) else 0
  rows = _rows(prompt)
  if len(rows) != batch:
    raise UserError(
      f"prompt has {len(rows)} row(s) but the encoder inputs have {batch}: one prompt per row."
    )
  for b, row in enumerate(rows):
    if row.size == 0:
      raise UserError(
        f"prompt row {b} is empty: a prompt starts with the decoder start token "
        f"(bos_id={bos_id}), as Hugging Face's decoder_input_ids do."
      )
    bad = row[(row < 0) | (row >= vocab_size)]
    if bad.size:
      raise UserError(
        f"prompt row {b} holds token id(s) {sorted(set(bad.tolist()))[:8]} outside the "
        f"vocabulary [0, {vocab_size})."
      )
    if row.size + max_new_tokens - 1 > max_target_length:
      raise UserError(
        f"prompt row {b} has {row.size} tokens: with max_new_tokens={max_new_tokens} the decoder "
        f"reads {row.size + max_new_tokens - 1} positions, above the model's "
        f"max_target_length={max_target_length}."
      )
  length = max(width, *(row.size for row in rows))
  tokens = np.full((batch, length), pad_id, np.int32)
  for b, row in enumerate(rows):
    tokens[b, length - row.size :] = row
  return Prompt(tokens, np.array([length - row.size for row in rows], np.int32))


def _rows(prompt) -> list[np.ndarray]:
  """The rows of a list of sequences, a 2-D array or a `Prompt`, as 1-D int arrays; anything else
  refused."""
  if isinstance(prompt, Prompt):
    tokens, pad = np.asarray(prompt.tokens), np.asarray(prompt.pad)
    if tokens.ndim != 2 or pad.shape != tokens.shape[:1] or not (0 <= pad).all():
      raise UserError(
        f"Prompt with tokens {tokens.shape} and pad {pad.shape}: not a prompt layout."
      )
    return [row[int(p) :].astype(np.int64) for row, p in zip(tokens, pad)]
  if isinstance(prompt, (np.ndarray, jax.Array)):
    array = np.asarray(prompt)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
      raise UserError(
        f"prompt array has shape {array.shape} and dtype {array.dtype}: it must be an int array "
        "[batch, P]."
      )
    return list(array)
  rows = []
  for b, row in enumerate(prompt):
    values = np.asarray(row)
    if values.ndim != 1 or (values.size and not np.issubdtype(values.dtype, np.integer)):
      raise UserError(f"prompt row {b} ({row!r:.80}) is not a sequence of int token ids.")
    rows.append(values.astype(np.int64))
  return rows
