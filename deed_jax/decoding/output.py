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
  exit_layers: Array  # [B, N] int32, 1-based decoder layer each token was emitted from; 0 after EOS
  confidences: Array  # [B, N] float32, the confidence at that exit; 0 after EOS
  layers_run: Array  # [N] int32: decoder layers executed at each step (0 once every row ended)
  backfilled: Array  # [L] int32: deferred positions computed just in time, per layer
  beams: Hypotheses | None = None


class Hypotheses(NamedTuple):
  """K hypotheses per row, best first."""

  tokens: Array  # [B, K, N] int32
  scores: Array  # [B, K] float32
  exit_layers: Array  # [B, K, N] int32
  confidences: Array  # [B, K, N] float32
