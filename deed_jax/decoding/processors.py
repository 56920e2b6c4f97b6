"""Hugging Face's generation constraints, on an exit's log-probabilities: n-gram blocking, bad words,
a minimum length, forced first and last tokens (`DecodeConfig.no_repeat_ngram_size`, `bad_words_ids`,
`min_new_tokens`, `forced_bos_id`, `forced_eos_id`).

Each has transformers 4.57's meaning and runs in its order: n-gram blocking, bad words, minimum
length, forced BOS, forced EOS (a forced token overrides every ban). They look at each row's whole
decoder sequence, the start token and the prompt included. A banned token gets -inf; a forced one 0,
every other token -inf (what HF's beam search does to log-softmax scores; for greedy, whose processors
act on raw logits, the argmax is the same).

In early-exit decoding they act on every exit's log-probabilities, before its confidence is taken: the
token is the argmax of the processed scores, beam search scores with them, and a head confidence reads
them renormalised (the distribution over the tokens still allowed), so a forced token has confidence
1 and is taken at the first layer allowed to exit. The naive reference decoders process every exit the
same way; this module is tested against HF's own processors.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class History(NamedTuple):
  """Each row's decoder sequence so far: row r's is tokens[r, first[r] : P + new]."""

  tokens: Array  # [R, P + N] int32: the left-padded prompt [R, P], then the new tokens [R, N]
  first: Array  # [R] int32: the row's padding, the index of its first token
  new: Array  # [] int32: new tokens so far


def active(config) -> bool:
  """Whether `config` (a DecodeConfig) asks for any constraint (else no code for them is traced)."""
  return bool(
    config.no_repeat_ngram_size
    or config.bad_words_ids
    or config.min_new_tokens
    or config.forced_bos_id is not None
    or config.forced_eos_id is not None
  )


def process(log_probs: Array, history: History, config, prompt_length: int) -> Array:
  """log_probs [R, V] (or [..., R, V]: every exit at once) -> the constrained scores, same shape.
  `prompt_length` is P, the padded prompt width of `history.tokens`."""
  rows, vocab = history.tokens.shape[0], log_probs.shape[-1]
  end = prompt_length + history.new  # [] the sequences end here (exclusive)
  length = end - history.first  # [R] cur_len: each row's sequence length
  banned = jnp.zeros((rows, vocab), bool)
  if config.no_repeat_ngram_size:
    banned |= _repeated_ngram_bans(history, config.no_repeat_ngram_size, end, length, vocab)
  for word in config.bad_words_ids or ():
    if len(word) == 1 and word[0] == config.eos_id:
      continue  # HF drops a lone EOS from the bad words
    banned = banned.at[:, word[-1]].max(_ends_with(history, word[:-1], end, length, len(word)))
  if config.min_new_tokens:
    banned = banned.at[:, config.eos_id].max(history.new < config.min_new_tokens)
  scores = jnp.where(banned, -jnp.inf, log_probs)
  if config.forced_bos_id is not None:
    scores = _force(scores, config.forced_bos_id, length == 1)
  if config.forced_eos_id is not None:
    last = jnp.broadcast_to(history.new == config.max_new_tokens - 1, (rows,))
    scores = _force(scores, config.forced_eos_id, last)
  return scores


def _force(scores: Array, token: int, rows: Array) -> Array:
  """In the rows where `rows` [R] holds, `token` scores 0 and every other -inf."""
  forced = jnp.full(scores.shape[-1:], -jnp.inf).at[token].set(0.0)  # [V]
  return jnp.where(rows[:, None], forced, scores)


def _ends_with(history: History, prefix: tuple[int, ...], end: Array, length: Array, need: int):
  """[R] bool: the row's sequence ends with `prefix` and is at least `need` tokens long."""
  if not prefix:
    return jnp.ones(history.tokens.shape[:1], bool)
  tail = jax.lax.dynamic_slice_in_dim(history.tokens, end - len(prefix), len(prefix), axis=1)
  return (length >= need) & jnp.all(tail == jnp.asarray(prefix, jnp.int32)[None], axis=1)


def _repeated_ngram_bans(history: History, n: int, end: Array, length: Array, vocab: int) -> Array:
  """[R, V] bool: tokens that would repeat an n-gram of the row's sequence (HF's
  NoRepeatNGramLogitsProcessor: none until the sequence is n - 1 tokens long)."""
  tokens = history.tokens  # [R, T]
  rows, width = tokens.shape
  windows = tokens[:, jnp.arange(width - n + 1)[:, None] + jnp.arange(n)[None, :]]  # [R, W, n]
  starts = jnp.arange(width - n + 1)  # [W]
  inside = (starts[None, :] >= history.first[:, None]) & (starts[None, :] + n <= end)  # [R, W]
  if n > 1:
    tail = jax.lax.dynamic_slice_in_dim(tokens, jnp.maximum(end - (n - 1), 0), n - 1, axis=1)
    inside &= jnp.all(windows[:, :, :-1] == tail[:, None, :], axis=2)
  inside &= (length + 1 >= n)[:, None]
  hits = jnp.zeros((rows, vocab), jnp.int32)
  hits = hits.at[jnp.arange(rows)[:, None], windows[:, :, -1]].max(inside.astype(jnp.int32))
  return hits > 0
