"""What decoding returns, for greedy and beam search alike."""

from __future__ import annotations

from typing import NamedTuple

import jax

Array = jax.Array


class DecodeOutput(NamedTuple):
  """What `generate` returns. With beam search the fields are the best beam per row, and `beams`
  holds every finished hypothesis (best first); greedy decoding has `beams=None`."""

  tokens: Array  # [B, N] int32, pad after EOS
  scores: Array  # [B] float32: sum of the emitted tokens' log-probs (beam: length-normalised)
  # [B, N] int32, 1-based decoder layer each token was emitted from; 0 after EOS (speculative: the
  # draft exit for an accepted draft, the last layer for the full model's own token)
  exit_layers: Array
  confidences: Array  # [B, N] float32, the confidence at that exit; 0 after EOS
  # [N] int32: decoder layers executed at each step (0 once every row ended); speculative: a round's
  # layer calls at its first token, 0 at the others
  layers_run: Array
  backfilled: Array  # [L] int32: deferred positions computed just in time, per layer
  beams: Hypotheses | None = None
  speculation: Speculation | None = None  # speculative decoding's acceptance statistics


class Speculation(NamedTuple):
  """What speculative decoding's rounds did. Each round drafts, verifies, and emits as many tokens
  as every row still decoding accepted, plus one (the batch minimum; `speculative`)."""

  rounds: Array  # [] int32, draft-and-verify rounds
  drafted: Array  # [B] int32, drafts proposed to the row while it was decoding
  matched: Array  # [B] int32, of those, drafts the full model agreed with (a leading run per round)


class Hypotheses(NamedTuple):
  """K hypotheses per row, best first."""

  tokens: Array  # [B, K, N] int32
  scores: Array  # [B, K] float32
  exit_layers: Array  # [B, K, N] int32
  confidences: Array  # [B, K, N] float32
