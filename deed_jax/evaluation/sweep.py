"""Decoding one split under several settings (static, fixed exits, copy, DEED thresholds,
speculative) and summarising each: the task metric, mean exit layer and decoder latency, side by side.

Every setting decodes the same batches, and they take turns on each batch, so slow spells of the
machine hit all of them alike; latencies are medians over batches of (generate time - encoder time)
per sample, both jitted and timed after a compile call; a setting's speedup is the median of its
per-batch ratios to static decoding's time on the same batch. Where the setting before ran another
compiled program, a setting's call is repeated untimed first: the first call after a switch is slower,
and a deployment runs one program. One piece of code serves the decoding
comparison after training (`deed_jax.train`) and the evaluator (`python -m deed_jax.evaluate`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

import jax
import numpy as np

from deed_jax.data.pipeline import pad_rows
from deed_jax.decoding.config import DecodeConfig
from deed_jax.decoding.generation import make_encode, make_generate
from deed_jax.decoding.prompts import Prompt
from deed_jax.evaluation import metrics
from deed_jax.evaluation.per_exit import answer_targets, exact_match
from deed_jax.models import MultiExitEncoderDecoder, encoder_inputs
from deed_jax.timing import timed

# The exit modes an evaluation compares (oracle computes deed's tokens at static's cost: a check, not
# a setting anyone would deploy).
COMPARED_MODES = ("static", "fixed", "copy", "deed")


@dataclasses.dataclass(frozen=True)
class Setting:
  """One way to decode: `exit_mode` with its `threshold` (copy, deed) or `fixed_exit_layer` (fixed);
  copy and deed exit early only from `min_exit_layer` on, by `confidence` (None: the sweep's); deed
  backfills in blocks of at most `backfill_chunk` positions."""

  exit_mode: str
  threshold: float | None = None
  fixed_exit_layer: int | None = None
  min_exit_layer: int = 1
  backfill_chunk: int = DecodeConfig.backfill_chunk
  draft_exit_layer: int | None = None  # speculative: drafts at this exit, up to max_draft per round
  max_draft: int = DecodeConfig.max_draft
  confidence: str | None = None

  @property
  def name(self) -> str:
    if self.exit_mode == "fixed":
      return f"fixed exit {self.fixed_exit_layer}"
    if self.exit_mode == "speculative":
      return f"speculative d={self.draft_exit_layer} k={self.max_draft}"
    if self.threshold is not None:
      return f"{self.exit_mode} tau={self.threshold:g}"
    return "static" if self.exit_mode == "static" else self.exit_mode

  def decode_config(self, max_new_tokens: int, confidence: str, **constraints) -> DecodeConfig:
    """Greedy decoding this way; `constraints`: generation constraints (CONSTRAINT_FIELDS)."""
    return DecodeConfig(
      exit_mode=self.exit_mode,
      max_new_tokens=max_new_tokens,
      confidence=self.confidence or confidence,
      fixed_exit_layer=self.fixed_exit_layer,
      min_exit_layer=self.min_exit_layer,
      backfill_chunk=self.backfill_chunk,
      draft_exit_layer=self.draft_exit_layer,
      max_draft=self.max_draft,
      **constraints,
    )


def setting_grid(
  num_layers: int,
  thresholds: Sequence[float],
  modes: Sequence[str] = COMPARED_MODES,
  speculative: Sequence[tuple[int, int]] = (),
  **early_exit,
) -> list[Setting]:
  """static; fixed exits 1..L-1 (fixed L is static); copy and deed at each threshold, with the
  `early_exit` options of Setting (min_exit_layer, backfill_chunk); speculative decoding at each
  (draft_exit_layer, max_draft) of `speculative`, drafting max_draft tokens every round."""
  grid = []
  if "static" in modes:
    grid.append(Setting("static"))
  if "fixed" in modes:
    grid += [Setting("fixed", fixed_exit_layer=k) for k in range(1, num_layers)]
  for mode in ("copy", "deed"):
    if mode in modes:
      grid += [Setting(mode, threshold=float(t), **early_exit) for t in thresholds]
  grid += [
    Setting("speculative", threshold=0.0, draft_exit_layer=d, max_draft=k) for d, k in speculative
  ]
  return grid


@dataclasses.dataclass
class SettingRun:
  """What one setting produced, per example (in split order) and per batch."""

  setting: Setting
  batch_size: int = 0  # of the batches decoded (the last may hold fewer examples)
  tokens: list[np.ndarray] = dataclasses.field(default_factory=list)  # per example [N]
  # per example [N], 0 after EOS
  exit_layers: list[np.ndarray] = dataclasses.field(default_factory=list)
  exact: list[bool] = dataclasses.field(default_factory=list)  # per example: tokens == target
  decoder_seconds: list[float] = dataclasses.field(default_factory=list)  # per batch, per sample
  total_seconds: list[float] = dataclasses.field(default_factory=list)  # per batch, per sample
  # speculative, per batch: (rounds, drafts proposed, drafts the full model agreed with)
  speculation: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)


def decode_settings(
  model: MultiExitEncoderDecoder,
  batches: Iterable[dict],
  settings: Sequence[Setting],
  max_new_tokens: int,
  *,
  confidence: str = "max_prob",
  timing: bool = True,
  progress: Callable[[int], None] | None = None,
  prompt_width: int = 1,
  constraints: dict | None = None,
) -> list[SettingRun]:
  """Decode every batch (dicts of encoder inputs, `targets`, `target_mask`, maybe `prompt_length`
  and `decoder_input_ids`; all the same batch size, except maybe the last) under every setting,
  each row after its prompt. `prompt_width` > 1: the longest prompt of all the batches, the width
  every batch's prompts are laid out at (one compiled program). `progress(n)` is told of each
  decoded example. Without `timing` nothing is timed (calibration needs the outputs only).
  `constraints` (generation constraints, CONSTRAINT_FIELDS) apply to every setting alike."""
  runs = [SettingRun(s) for s in settings]
  generators = [
    make_generate(model, s.decode_config(max_new_tokens, confidence, **(constraints or {})))
    for s in settings
  ]
  encode = make_encode(model)
  batch_size = None
  for batch in batches:
    rows = len(batch["targets"])
    if batch_size is None:  # the first batch sets the size; compile (and warm up) untimed
      batch_size = rows
      for run in runs:
        run.batch_size = batch_size
      if timing:
        encode(encoder_inputs(batch))
        for run, generator in zip(runs, generators):
          timed(
            generator,
            encoder_inputs(batch),
            run.setting.threshold,
            batch_prompt(batch, prompt_width),
          )
    batch = pad_rows(batch, batch_size)  # a short last batch, so nothing compiles again
    inputs, prompt = encoder_inputs(batch), batch_prompt(batch, prompt_width)
    targets, target_mask = batch["targets"][:rows], batch["target_mask"][:rows]
    if "prompt_length" in batch:
      targets, target_mask = answer_targets(targets, target_mask, batch["prompt_length"][:rows])
    encoder_time = timed(encode, inputs)[1] if timing else 0.0
    previous = None
    for run, generator in zip(runs, generators):
      if timing and generator.static_config != previous:
        # The first call of a program after another ran is slower (on 2 CPU cores ~0.2 ms of a
        # 1.8 ms decode): it runs once untimed, so every setting is timed as if it ran alone.
        jax.block_until_ready(generator(inputs, run.setting.threshold, prompt))
      previous = generator.static_config
      out, seconds = timed(generator, inputs, run.setting.threshold, prompt)
      tokens, layers = np.asarray(out.tokens)[:rows], np.asarray(out.exit_layers)[:rows]
      run.tokens.extend(tokens)
      run.exit_layers.extend(layers)
      run.exact.extend(np.asarray(exact_match(tokens, targets, target_mask)).tolist())
      if out.speculation is not None:
        run.speculation.append(_round_counts(out.speculation, rows))
      if timing:  # per sample of a full batch: the padded rows cost as much as real ones
        run.decoder_seconds.append(max(seconds - encoder_time, 1e-9) / batch_size)
        run.total_seconds.append(seconds / batch_size)
      if progress is not None:
        progress(rows)
  return runs


def _round_counts(stats, rows: int) -> tuple[int, int, int]:
  """(rounds, drafts proposed, drafts agreed with) of a speculative batch (`Speculation`), leaving
  out the padded rows of a short last batch (the first `rows` are real)."""
  drafted, matched = np.asarray(stats.drafted)[:rows], np.asarray(stats.matched)[:rows]
  return int(stats.rounds), int(drafted.sum()), int(matched.sum())


def batch_prompt(batch: dict, width: int) -> Prompt | None:
  """Each row's decoder prompt (its first `prompt_length` decoder inputs), left-padded to `width`;
  None when the prompts are the start token alone (`width` 1)."""
  if width <= 1:
    return None
  lengths = np.asarray(batch["prompt_length"])  # [B]
  tokens = np.zeros((len(lengths), width), np.int32)
  for row, (ids, length) in enumerate(zip(np.asarray(batch["decoder_input_ids"]), lengths)):
    tokens[row, width - length :] = ids[:length]
  return Prompt(tokens, (width - lengths).astype(np.int32))


def per_example_scores(
  run: SettingRun, metric: str, decode_text: Callable | None, answers: Sequence | None
) -> np.ndarray:
  """[n] per-example metric values in [0, 1]: the task metric on decoded strings, or token exact
  match without `decode_text`. Corpus metrics (BLEU) have none."""
  if decode_text is None or answers is None:
    return np.asarray(run.exact, np.float64)
  score = metrics.metric_fn(metric)
  return np.asarray([score(decode_text(t), a) for t, a in zip(run.tokens, answers)], np.float64)


def summarise(
  runs: Sequence[SettingRun],
  metric: str = "exact_match",
  decode_text: Callable | None = None,
  answers: Sequence | None = None,
) -> list[dict]:
  """One row per setting: exit_mode, threshold, fixed_exit_layer, metric (0..100), metric_name,
  exact_match (0..1, on tokens), mean_exit_layer, decoder_ms_per_sample, total_ms_per_sample,
  batch_size, decoder_speedup (against the static run, when one is among `runs`)."""
  static = next((r for r in runs if r.setting.exit_mode == "static"), None)
  rows = []
  for run in runs:
    layers = _emitted_exit_layers(run)
    if decode_text is not None and answers is not None:
      predictions = [decode_text(t) for t in run.tokens]
      score, name = metrics.corpus_score(metric, predictions, answers), metric
    else:
      score, name = 100.0 * float(np.mean(run.exact)), "exact_match"
    row = {
      "setting": run.setting.name,
      "exit_mode": run.setting.exit_mode,
      "threshold": run.setting.threshold,
      "fixed_exit_layer": run.setting.fixed_exit_layer,
      "min_exit_layer": run.setting.min_exit_layer,
      "backfill_chunk": run.setting.backfill_chunk,
      "metric": score,
      "metric_name": name,
      "exact_match": float(np.mean(run.exact)),
      "mean_exit_layer": float(layers.mean()) if layers.size else 0.0,
      "num_examples": len(run.exact),
      "batch_size": run.batch_size,
    }
    if run.speculation:
      row.update(acceptance(run))
    if run.decoder_seconds:
      row.update(
        decoder_ms_per_sample=1000 * float(np.median(run.decoder_seconds)),
        total_ms_per_sample=1000 * float(np.median(run.total_seconds)),
      )
      if static is not None:  # paired per batch with static's time, medianed
        row["decoder_speedup"] = float(
          np.median(np.asarray(static.decoder_seconds) / np.asarray(run.decoder_seconds))
        )
    rows.append(row)
  return rows


def acceptance(run: SettingRun) -> dict:
  """Speculative decoding's rounds: draft_exit_layer, max_draft, rounds (loop iterations, summed over
  batches), draft_acceptance (drafts the full model agreed with / drafts proposed), tokens_per_round
  and drafts_per_round (per row and round; rows that end early count fully, so at batch > 1 these
  understate what a row gets per round)."""
  rounds, drafted, matched = np.asarray(run.speculation).sum(axis=0)
  emitted = sum(int((e > 0).sum()) for e in run.exit_layers)
  rows_rounds = max(sum(r * run.batch_size for r, _, _ in run.speculation), 1)
  return {
    "draft_exit_layer": run.setting.draft_exit_layer,
    "max_draft": run.setting.max_draft,
    "rounds": int(rounds),
    "draft_acceptance": float(matched / max(drafted, 1)),
    "tokens_per_round": float(emitted / rows_rounds),
    "drafts_per_round": float(drafted / rows_rounds),
  }


def _emitted_exit_layers(run: SettingRun) -> np.ndarray:
  """The exit layer of every emitted token of the run (1-based), flat."""
  return np.concatenate([e[e > 0] for e in run.exit_layers])


def exit_histogram(run: SettingRun, num_layers: int) -> list[int]:
  """[L] how many tokens exited at each layer 1..L."""
  return np.bincount(_emitted_exit_layers(run), minlength=num_layers + 1)[1:].tolist()
