r"""How reliable is a calibration setup? Resample calibration and test sets from held-out data.

  python -m deed_jax.bench.calibration_noise --workdir workdirs/forms_vqa_normalised_local \
      --splits calibration,test --min_exit_layer 4 --backfill_chunk 1 \
      --calibration_sizes 1000,4000 --test_size 500 --settings 0.5/0.1,0.25/0.1,0.2/0.05

Calibration (`deed_jax.evaluation.calibration`) bounds the *expected* drop of the chosen threshold
with probability 1 - delta; a drop measured afterwards on a finite test set strays from its
expectation, and a small calibration set often cannot tell a safe threshold from a risky one. This
decodes every example of `--splits` once under static decoding and under DEED at every threshold
(untimed), then, `--trials` times per setup (calibration size x max_drop/delta), draws disjoint random
calibration and test sets from those examples, calibrates on the first and measures the chosen
threshold's drop on the second. It prints, per setup, how often that measured drop exceeded
`--target` points and which thresholds were chosen, and the pooled drop of every threshold; `--json`
writes it all. Trials reuse one pool of examples, so with a pool not much larger than a calibration
plus a test set they overlap and vary less than fresh data would.
"""

from __future__ import annotations

import collections

import numpy as np
from absl import flags, logging

from deed_jax import checkpoint, cli
from deed_jax.bench.report import write_result
from deed_jax.decoding.config import DecodeConfig
from deed_jax.errors import UserError
from deed_jax.evaluation import calibration
from deed_jax.evaluation.evaluator import (
  DEFAULT_THRESHOLDS,
  check_options,
  check_workdir,
  parse_thresholds,
  task_config,
)
from deed_jax.evaluation.splits import Split, check_per_example_metric, split_quality
from deed_jax.evaluation.sweep import Setting
from deed_jax.task_config import scoring, validate_task

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained or converted deed-jax workdir.")
_SPLITS = flags.DEFINE_list(
  "splits", ["calibration", "test"], "Held-out splits pooled for the trials."
)
_THRESHOLDS = flags.DEFINE_list(
  "thresholds",
  [str(t) for t in DEFAULT_THRESHOLDS],
  "DEED thresholds, comma-separated, each in [0, 1].",
)
_CONFIDENCE = flags.DEFINE_string("confidence", "max_prob", "DEED's confidence.")
_MIN_EXIT_LAYER = flags.DEFINE_integer(
  "min_exit_layer", 1, "DEED exits early only from this layer on."
)
_BACKFILL_CHUNK = flags.DEFINE_integer(
  "backfill_chunk",
  DecodeConfig.backfill_chunk,
  "DEED: the widest block a skipped layer is backfilled in.",
)
_CALIBRATION_SIZES = flags.DEFINE_list(
  "calibration_sizes", ["1000"], "Calibration set sizes to try."
)
_TEST_SIZE = flags.DEFINE_integer("test_size", 500, "Examples the drop is measured on per trial.")
_SETTINGS = flags.DEFINE_list("settings", ["0.5/0.1"], "Calibration settings as max_drop/delta.")
_TARGET = flags.DEFINE_float(
  "target", 0.5, "The drop (points) a measured test drop should stay within."
)
_TRIALS = flags.DEFINE_integer("trials", 300, "Random calibration/test draws per setup.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 100, "Decoding batch size (nothing is timed).")
_JSON = flags.DEFINE_string("json", None, "Write the results here.")


def parse_settings(settings: list[str]) -> list[tuple[float, float]]:
  """["0.5/0.1", ...] -> [(max_drop, delta)], each checked as calibration would."""
  out = []
  for item in settings:
    try:
      max_drop, delta = (float(v) for v in item.split("/"))
    except ValueError:
      raise UserError(
        f"--settings holds {item!r}; write each as max_drop/delta, e.g. 0.5/0.1."
      ) from None
    calibration.check_settings(max_drop, delta)
    out.append((max_drop, delta))
  return out


def summarise_trials(outcomes: list[tuple[float | None, float]], target: float) -> dict:
  """Share of trials whose measured drop exceeded `target`, the mean drop, the thresholds chosen."""
  drops = np.array([d for _, d in outcomes])
  chosen = collections.Counter("none" if t is None else f"{t:g}" for t, _ in outcomes)
  return {
    "over_target": float(np.mean(drops > target + 1e-9)),
    "mean_test_drop": float(drops.mean()),
    "chosen": dict(sorted(chosen.items())),
  }


def _calibration_sizes() -> list[int]:
  try:
    return [int(s) for s in _CALIBRATION_SIZES.value]
  except ValueError:
    raise UserError(
      f"--calibration_sizes={','.join(_CALIBRATION_SIZES.value)} must be whole numbers."
    ) from None


def _pooled(full: np.ndarray, by_threshold: dict[float, np.ndarray]) -> list[dict]:
  """Each threshold's loss rate and drop against static over the whole pool, printed."""
  pooled = [
    {
      "threshold": t,
      "loss_rate": float(np.clip(full - s, 0, 1).mean()),
      "drop": 100 * float(full.mean() - s.mean()),
    }
    for t, s in by_threshold.items()
  ]
  print("threshold  loss rate %  drop (points)")
  for row in pooled:
    print(f"{row['threshold']:>9g}  {100 * row['loss_rate']:>11.3f}  {row['drop']:>13.3f}")
  return pooled


def _resampled(
  full: np.ndarray,
  by_threshold: dict[float, np.ndarray],
  sizes: list[int],
  setups: list[tuple[float, float]],
) -> list[dict]:
  """Per calibration size and (max_drop, delta): how often the measured test drop of the chosen
  threshold exceeds the target over resampled calibration/test draws, printed."""
  results = []
  print(
    f"\ncalibration  max_drop  delta  test drop > {_TARGET.value:g} (of {_TRIALS.value})  "
    "mean test drop  chosen"
  )
  for size in sizes:
    for max_drop, delta in setups:
      outcomes = calibration.resampled_drops(
        full, by_threshold, size, _TEST_SIZE.value, max_drop, delta, _TRIALS.value
      )
      row = {
        "calibration_size": size,
        "test_size": _TEST_SIZE.value,
        "max_drop": max_drop,
        "delta": delta,
        **summarise_trials(outcomes, _TARGET.value),
      }
      results.append(row)
      print(
        f"{size:>11}  {max_drop:>8g}  {delta:>5g}  {100 * row['over_target']:>22.1f}%  "
        f"{row['mean_test_drop']:>14.3f}  {row['chosen']}"
      )
  return results


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  workdir = _WORKDIR.value
  if not workdir:
    raise UserError("--workdir is required.")
  model_config, _ = check_workdir(workdir, None)
  thresholds = check_options(
    parse_thresholds(_THRESHOLDS.value), _BATCH_SIZE.value, 0, 0.0, 0.5, calibrate=False
  )
  setups = parse_settings(_SETTINGS.value)
  sizes = _calibration_sizes()
  config = task_config(workdir, None)
  validate_task(config.task)
  metric, _ = scoring(config.task)
  check_per_example_metric(metric)
  early_exit = dict(min_exit_layer=_MIN_EXIT_LAYER.value, backfill_chunk=_BACKFILL_CHUNK.value)
  settings = [Setting("static")] + [Setting("deed", threshold=t, **early_exit) for t in thresholds]
  settings[-1].decode_config(model_config.max_target_length, _CONFIDENCE.value).resolve(
    model_config
  )
  splits = [Split(config, model_config, name, 0, workdir) for name in _SPLITS.value]
  pool = sum(len(s.examples) for s in splits)
  for size in sizes:
    calibration.check_sizes(size, _TEST_SIZE.value, pool)

  step, model = checkpoint.load_step(workdir)  # the newest readable step
  quality = lambda setting: np.concatenate(
    [split_quality(model, s, setting, _CONFIDENCE.value, _BATCH_SIZE.value) for s in splits]
  )
  scores = [quality(setting) for setting in settings]
  full, by_threshold = scores[0], dict(zip(thresholds, scores[1:]))
  print(f"{pool} examples of {_SPLITS.value}; metric {metric}; static {100 * full.mean():.2f}")
  pooled = _pooled(full, by_threshold)
  results = _resampled(full, by_threshold, sizes, setups)
  if _JSON.value:
    write_result(
      _JSON.value,
      {
        "workdir": workdir,
        "step": step,
        "splits": _SPLITS.value,
        "pool": pool,
        "metric": metric,
        "confidence": _CONFIDENCE.value,
        **early_exit,
        "target": _TARGET.value,
        "trials": _TRIALS.value,
        "static": 100 * float(full.mean()),
        "pooled": pooled,
        "setups": results,
      },
    )


if __name__ == "__main__":
  cli.run(main)
