"""`DecodeConfig`: how to decode (strategy, exit rule, lengths, special ids), checked against a model.

The threshold is not baked into compiled code: decoders pass it as a traced value, so sweeping it
never recompiles.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from deed_jax.decoding.confidence import CONFIDENCES
from deed_jax.decoding.exit_modes import EXIT_MODES
from deed_jax.errors import UserError
from deed_jax.models import ModelConfig

STRATEGIES = ("greedy", "beam")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecodeConfig:
  """`exit_mode`: deed (exit at the first confident layer, skipped layers backfilled just in time),
  oracle (every layer computed, token from the first confident one), copy (CALM: skipped layers see
  the exited state), static (all layers), fixed (always `fixed_exit_layer`), speculative (greedy,
  lossless: up to `max_draft` tokens drafted at `draft_exit_layer`, then verified by the layers above
  in one block; the tokens are static decoding's, `speculative`). Layers are 1-based.

  An early exit can happen at a layer >= `min_exit_layer` that is in `allowed_exit_layers` (None:
  every layer); elsewhere neither the head nor the confidence is computed. The last layer always
  exits. (`DecodeOutput.exit_layers` holds the layers the tokens were taken from.)"""

  strategy: str = "greedy"
  num_beams: int = 1
  max_new_tokens: int = 32
  # Beam search, as Hugging Face: a finished hypothesis scores sum_logprobs / len ** length_penalty
  # (len counts the generated tokens, EOS included); early_stopping stops a row once it holds
  # num_beams finished hypotheses, else when no live beam can beat the worst of them.
  length_penalty: float = 1.0
  early_stopping: bool = False
  exit_mode: str = "deed"
  confidence: str = "max_prob"
  threshold: float = 0.9
  min_exit_layer: int = 1
  allowed_exit_layers: tuple[int, ...] | None = None
  fixed_exit_layer: int | None = None
  # speculative: the exit that drafts (1..L-1) and the most tokens drafted per round; drafting stops
  # early after a draft whose confidence is below `threshold` (0: always `max_draft`).
  draft_exit_layer: int | None = None
  max_draft: int = 4
  bos_id: int | None = None  # None: the model config's ids.
  eos_id: int | None = None
  pad_id: int | None = None
  # Most positions one layer call computes in a just-in-time backfill block (at most max_new_tokens).
  backfill_chunk: int = 16
  # Hugging Face's generation constraints, with its meanings (`processors`); all off by default.
  # no_repeat_ngram_size: no n-gram twice in a row's decoder sequence (prompt and start token
  # included); bad_words_ids: token sequences never completed; min_new_tokens: EOS banned before
  # that many new tokens; forced_bos_id: the first new token when the prompt is the start token
  # alone; forced_eos_id: the last allowed new token (the max_new_tokens-th).
  no_repeat_ngram_size: int = 0
  bad_words_ids: tuple[tuple[int, ...], ...] | None = None
  min_new_tokens: int = 0
  forced_bos_id: int | None = None
  forced_eos_id: int | None = None
  # The field's name before allowed_exit_layers: refused with a pointer to the new name.
  exit_layers: dataclasses.InitVar[object] = None

  def __post_init__(self, exit_layers):
    if exit_layers is not None:
      raise UserError(
        f"DecodeConfig.exit_layers={exit_layers!r}: the option is now called "
        "allowed_exit_layers (the layers a row may exit at; DecodeOutput.exit_layers "
        "holds the layers the tokens were taken from)."
      )
    for name, allowed in (
      ("strategy", STRATEGIES),
      ("exit_mode", tuple(EXIT_MODES)),
      ("confidence", CONFIDENCES),
    ):
      if getattr(self, name) not in allowed:
        raise UserError(f"DecodeConfig.{name}={getattr(self, name)!r} is not one of {allowed}.")
    if self.num_beams < 1:
      raise UserError(f"DecodeConfig.num_beams={self.num_beams} must be >= 1.")
    if self.strategy == "greedy" and self.num_beams != 1:
      raise UserError(f"DecodeConfig.num_beams={self.num_beams} needs strategy='beam'.")
    if not math.isfinite(self.length_penalty):
      raise UserError(f"DecodeConfig.length_penalty={self.length_penalty} must be finite.")
    if self.backfill_chunk < 1:
      raise UserError(f"DecodeConfig.backfill_chunk={self.backfill_chunk} must be >= 1.")
    if self.max_new_tokens < 1:
      raise UserError(f"DecodeConfig.max_new_tokens={self.max_new_tokens} must be >= 1.")
    self._check_constraints()
    check_threshold(self.threshold)
    if self.allowed_exit_layers is not None:
      layers = self.allowed_exit_layers
      if (
        not isinstance(layers, (tuple, list))
        or not layers
        or any(isinstance(l, bool) or not isinstance(l, (int, np.integer)) for l in layers)
      ):
        raise UserError(
          f"DecodeConfig.allowed_exit_layers={layers!r} must be None or a non-empty "
          "tuple of 1-based layer numbers."
        )
      object.__setattr__(self, "allowed_exit_layers", tuple(sorted({int(l) for l in layers})))
    if self.exit_mode == "fixed" and self.fixed_exit_layer is None:
      raise UserError("DecodeConfig.exit_mode='fixed' needs fixed_exit_layer.")
    self._check_speculative()

  def _check_speculative(self) -> None:
    """Speculative decoding verifies drafts against the full model's argmax: greedy only."""
    if self.exit_mode != "speculative":
      return
    if self.strategy != "greedy":
      raise UserError(
        f"DecodeConfig.exit_mode='speculative' is greedy only (strategy={self.strategy!r}): its "
        "drafts are checked against the full model's argmax."
      )
    if self.draft_exit_layer is None:
      raise UserError("DecodeConfig.exit_mode='speculative' needs draft_exit_layer.")
    k = self.max_draft
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
      raise UserError(f"DecodeConfig.max_draft={k!r} must be an int >= 1.")

  def _check_constraints(self) -> None:
    """The generation constraints' values (their ids are checked against a model in `resolve`)."""
    for name in ("no_repeat_ngram_size", "min_new_tokens"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise UserError(f"DecodeConfig.{name}={value!r} must be an int >= 0 (0: off).")
    words = self.bad_words_ids
    if words is not None:
      if (
        isinstance(words, (str, bytes))
        or not isinstance(words, (tuple, list))
        or not words
        or not all(
          isinstance(word, (tuple, list))
          and word
          and all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in word)
          for word in words
        )
      ):
        raise UserError(
          f"DecodeConfig.bad_words_ids={words!r} must be None or a non-empty list of non-empty "
          "token-id sequences."
        )
      object.__setattr__(self, "bad_words_ids", tuple(tuple(int(t) for t in w) for w in words))

  def resolve(self, model: ModelConfig) -> DecodeConfig:
    """Fill the special ids from `model` and check every field against it."""
    ids = {
      name: getattr(model, name) if getattr(self, name) is None else getattr(self, name)
      for name in ("bos_id", "eos_id", "pad_id")
    }
    forced = {n: getattr(self, n) for n in ("forced_bos_id", "forced_eos_id")}
    for name, value in {**ids, **forced}.items():
      if value is not None and not 0 <= value < model.vocab_size:
        raise UserError(
          f"DecodeConfig.{name}={value} is outside the vocabulary [0, {model.vocab_size})."
        )
    bad = sorted({t for w in self.bad_words_ids or () for t in w if not 0 <= t < model.vocab_size})
    if bad:
      raise UserError(
        f"DecodeConfig.bad_words_ids holds token id(s) {bad[:8]} outside the vocabulary "
        f"[0, {model.vocab_size})."
      )
    if self.max_new_tokens > model.max_target_length:
      raise UserError(
        f"DecodeConfig.max_new_tokens={self.max_new_tokens} exceeds the model's "
        f"max_target_length={model.max_target_length} (its decoder positions)."
      )
    layers = model.decoder_layers
    if not 1 <= self.min_exit_layer <= layers:
      raise UserError(f"DecodeConfig.min_exit_layer={self.min_exit_layer} is outside 1..{layers}.")
    if self.fixed_exit_layer is not None and not 1 <= self.fixed_exit_layer <= layers:
      raise UserError(
        f"DecodeConfig.fixed_exit_layer={self.fixed_exit_layer} is outside 1..{layers}."
      )
    draft = self.draft_exit_layer
    if self.exit_mode == "speculative" and not 1 <= draft < layers:
      raise UserError(
        f"DecodeConfig.draft_exit_layer={draft} is outside 1..{layers - 1} (below the last "
        "layer, which verifies)."
      )
    allowed = self.allowed_exit_layers
    if allowed is not None and not all(1 <= l <= layers for l in allowed):
      raise UserError(f"DecodeConfig.allowed_exit_layers={allowed} has layers outside 1..{layers}.")
    if self.confidence == "classifier" and model.exit_classifier == "none":
      raise UserError(
        "DecodeConfig.confidence='classifier' needs a model trained with an exit "
        "classifier, but its ModelConfig.exit_classifier='none'."
      )
    return dataclasses.replace(self, **ids)

  def early_exits(self, num_layers: int) -> tuple[bool, ...]:
    """Per layer (0-based), whether a row may exit there before the last layer: the exit modes that
    exit early, at or above `min_exit_layer`, in `allowed_exit_layers`. The last layer always exits."""
    if not EXIT_MODES[self.exit_mode].exits_early:
      return (False,) * num_layers
    return tuple(
      j + 1 >= self.min_exit_layer
      and (self.allowed_exit_layers is None or j + 1 in self.allowed_exit_layers)
      for j in range(num_layers)
    )


def check_threshold(threshold) -> float:
  """A threshold is a real number >= 0: a Python, NumPy or (concrete) JAX scalar, not a bool. Above 1
  it never exits early (max_prob, margin, entropy-based confidences are <= 1). -> it as a float."""
  value = None if isinstance(threshold, bool) else np.asarray(threshold)
  if (
    value is None
    or value.ndim != 0
    or value.dtype == bool
    or not (np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating))
    or np.isnan(value)
    or value < 0
  ):
    raise UserError(
      f"threshold={threshold!r} must be a number >= 0 (above 1 means never exit early)."
    )
  return float(value)


# Hugging Face's generation constraints (a converted model's own, from its generation config): they
# apply alike to every exit mode an evaluation compares.
CONSTRAINT_FIELDS = (
  "no_repeat_ngram_size",
  "bad_words_ids",
  "min_new_tokens",
  "forced_bos_id",
  "forced_eos_id",
)
# The fields a calibrated workdir stores for decoding (deed_jax.workdir.DECODE_CONFIG_FILE).
STORED_FIELDS = ("exit_mode", "confidence", "threshold", "min_exit_layer", "backfill_chunk")
