"""The shared LM head's cross-entropy computed over vocabulary chunks, so that no [tokens, V] logits
array exists in the forward or the backward pass.

At real vocabularies (32k-50k) the head is the most expensive part of a deep-supervision step, and
its float32 logits the largest buffer: [B*T, V] per supervised exit, twice over in the backward pass.
`chunked_cross_entropy` walks the vocabulary in `vocab_chunk` columns, keeping per token a running
log-sum-exp (Milakov & Gimelshein's online softmax), the target's logit, the logits' sum (for label
smoothing) and the running argmax; its custom backward pass recomputes each chunk's logits and
accumulates the features' and the head's gradients chunk by chunk. Peak extra memory: [N, vocab_chunk]
(chunks are made as even as possible, at most `vocab_chunk` columns each).

The head is `logits = features @ table.T (+ bias)` for a tied table [V, D] (vocab_axis 0) or
`features @ table (+ bias)` for an untied kernel [D, V] (vocab_axis 1); callers scale the features
first where the model rescales them. A last chunk that would run past V starts at V - chunk instead
and masks the columns the previous chunk already counted, so the table is never padded or copied.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


@functools.partial(
  jax.tree_util.register_dataclass, data_fields=["table", "bias"], meta_fields=["vocab_axis"]
)
@dataclasses.dataclass(frozen=True)
class HeadWeights:
  """The LM head as weights (float32): logits = features @ (table.T if vocab_axis == 0 else table)
  + bias. A pytree whose leaves are the arrays (vocab_axis is static)."""

  table: Array  # [V, D] (vocab_axis 0) or [D, V] (vocab_axis 1)
  bias: Array | None  # [V]
  vocab_axis: int

  @property
  def vocab_size(self) -> int:
    return self.table.shape[self.vocab_axis]

  def logits(self, features: Array) -> Array:
    """All logits at once: [..., D] -> [..., V] (decoding, and the reference for the chunked loss)."""
    out = features @ (self.table.T if self.vocab_axis == 0 else self.table)
    return out if self.bias is None else out + self.bias


class _Chunk(NamedTuple):
  logits: Array  # [N, C] (float32; columns already counted by the previous chunk are masked)
  columns: Array  # [C] vocabulary ids
  fresh: Array  # [C] bool: columns this chunk counts
  start: Array  # int32 []


def _chunk(features: Array, head: HeadWeights, index: Array, size: int) -> _Chunk:
  vocab = head.vocab_size
  start = jnp.minimum(index * size, vocab - size)
  weights = jax.lax.dynamic_slice_in_dim(head.table, start, size, axis=head.vocab_axis)
  logits = features @ (weights.T if head.vocab_axis == 0 else weights)  # [N, C]
  if head.bias is not None:
    logits = logits + jax.lax.dynamic_slice_in_dim(head.bias, start, size)
  columns = start + jnp.arange(size)
  fresh = columns >= index * size
  return _Chunk(jnp.where(fresh, logits, -jnp.inf), columns, fresh, start)


def _chunking(vocab: int, vocab_chunk: int) -> tuple[int, int]:
  """-> (number of chunks, columns per chunk): at most `vocab_chunk` columns, as even as possible
  (the last chunk's overlap with the one before is under one column per chunk)."""
  num_chunks = -(-vocab // vocab_chunk)
  return num_chunks, -(-vocab // num_chunks)


def _forward_pass(features, head, targets, label_smoothing, vocab_chunk):
  """-> (per-token loss [N], argmax [N] int32, log-sum-exp [N])."""
  vocab = head.vocab_size
  num_chunks, size = _chunking(vocab, vocab_chunk)
  rows = features.shape[0]

  def body(carry, index):
    top, total, target, logit_sum, best, best_id = carry
    chunk = _chunk(features, head, index, size)
    chunk_top = jnp.max(chunk.logits, axis=-1)  # [N]
    new_top = jnp.maximum(top, chunk_top)
    total = total * jnp.exp(top - new_top) + jnp.exp(chunk.logits - new_top[:, None]).sum(-1)
    hit = (chunk.columns == targets[:, None]) & chunk.fresh
    target = target + jnp.where(hit, chunk.logits, 0.0).sum(-1)
    logit_sum = logit_sum + jnp.where(chunk.fresh, chunk.logits, 0.0).sum(-1)
    chunk_best = chunk.start + jnp.argmax(chunk.logits, axis=-1).astype(jnp.int32)
    better = chunk_top > best  # strict: the first maximum wins, as jnp.argmax's
    carry = (
      new_top,
      total,
      target,
      logit_sum,
      jnp.where(better, chunk_top, best),
      jnp.where(better, chunk_best, best_id),
    )
    return carry, None

  zeros = jnp.zeros((rows,), jnp.float32)
  minus_inf = jnp.full((rows,), -jnp.inf, jnp.float32)
  init = (minus_inf, zeros, zeros, zeros, minus_inf, jnp.zeros((rows,), jnp.int32))
  (top, total, target, logit_sum, _, best_id), _ = jax.lax.scan(body, init, jnp.arange(num_chunks))
  lse = top + jnp.log(total)
  loss = lse - target
  if label_smoothing:
    loss = (1.0 - label_smoothing) * loss + label_smoothing * (lse - logit_sum / vocab)
  return loss, best_id, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _chunked(features, head, targets, label_smoothing, vocab_chunk):
  loss, best_id, _ = _forward_pass(features, head, targets, label_smoothing, vocab_chunk)
  return loss, best_id


def _chunked_fwd(features, head, targets, label_smoothing, vocab_chunk):
  loss, best_id, lse = _forward_pass(features, head, targets, label_smoothing, vocab_chunk)
  return (loss, best_id), (features, head, targets, lse)


def _chunked_bwd(label_smoothing, vocab_chunk, residuals, cotangents):
  features, head, targets, lse = residuals
  g = cotangents[0]  # [N]; the argmax has no cotangent
  vocab = head.vocab_size
  num_chunks, size = _chunking(vocab, vocab_chunk)

  def body(carry, index):
    d_features, d_table, d_bias = carry
    chunk = _chunk(features, head, index, size)
    probs = jnp.exp(chunk.logits - lse[:, None])  # [N, C]; 0 where masked
    onehot = (chunk.columns == targets[:, None]).astype(jnp.float32)
    d_logits = probs - (1.0 - label_smoothing) * onehot - label_smoothing / vocab
    d_logits = jnp.where(chunk.fresh, d_logits * g[:, None], 0.0)  # [N, C]
    weights = jax.lax.dynamic_slice_in_dim(head.table, chunk.start, size, axis=head.vocab_axis)
    if head.vocab_axis == 0:  # weights [C, D]
      d_features = d_features + d_logits @ weights
      d_weights = d_logits.T @ features  # [C, D]
    else:  # weights [D, C]
      d_features = d_features + d_logits @ weights.T
      d_weights = features.T @ d_logits  # [D, C]
    old = jax.lax.dynamic_slice_in_dim(d_table, chunk.start, size, axis=head.vocab_axis)
    d_table = jax.lax.dynamic_update_slice_in_dim(
      d_table, old + d_weights, chunk.start, axis=head.vocab_axis
    )
    if d_bias is not None:
      old_bias = jax.lax.dynamic_slice_in_dim(d_bias, chunk.start, size)
      d_bias = jax.lax.dynamic_update_slice_in_dim(
        d_bias, old_bias + d_logits.sum(0), chunk.start, axis=0
      )
    return (d_features, d_table, d_bias), None

  init = (
    jnp.zeros_like(features),
    jnp.zeros_like(head.table),
    None if head.bias is None else jnp.zeros_like(head.bias),
  )
  (d_features, d_table, d_bias), _ = jax.lax.scan(body, init, jnp.arange(num_chunks))
  return d_features, HeadWeights(d_table, d_bias, head.vocab_axis), None


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def chunked_cross_entropy(
  features: Array,  # [N, D] float32
  head: HeadWeights,
  targets: Array,  # [N] int
  label_smoothing: float = 0.0,
  vocab_chunk: int = 4096,
) -> tuple[Array, Array]:
  """-> (cross-entropy [N] float32, the head's argmax [N] int32), equal to `cross_entropy` of
  `head.logits(features)` (and its gradient) without building those logits."""
  if vocab_chunk < 1:
    raise ValueError(f"vocab_chunk={vocab_chunk} must be >= 1.")
  return _chunked(features, head, targets.astype(jnp.int32), float(label_smoothing), vocab_chunk)
