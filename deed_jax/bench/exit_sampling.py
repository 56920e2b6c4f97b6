r"""Sampled vs full deep supervision, side by side: the quality each trained model reached.

  python -m deed_jax.bench.exit_sampling \
    --runs all=workdirs/forms_vqa_normalised_local,k1=workdirs/forms_k1,k2=workdirs/forms_k2

Each run is a finished workdir (`deed_jax.train`, then `deed_jax.evaluate --calibrate`). The table
gives, per run, how its loss supervised the exits (`config.loss`), its training time (the span of its
logged train steps, and the median rate), every exit's validation exact match and token accuracy
(the trainer's last evaluation), and the calibrated DEED point of its evaluation report beside static
decoding: test metric, decoder ms/sample and speed-up. Runs trained for equal steps compare the
schedules' sample efficiency; runs whose steps were scaled by their step cost compare them at equal
wall-clock time.
"""

from __future__ import annotations

import os

from absl import app, flags

from deed_jax.bench.finished_runs import training_time
from deed_jax.bench.report import write_result
from deed_jax.workdir import read_json_file

_RUNS = flags.DEFINE_list("runs", None, "name=workdir pairs, in the table's order.", required=True)
_OUTPUT = flags.DEFINE_string(
  "output", "bench_results/exit_sampling.json", "Where to write the JSON."
)


def _deed_point(workdir: str) -> dict | None:
  """The calibrated DEED point and static decoding from the workdir's evaluation report."""
  path = os.path.join(workdir, "evaluation", "report.json")
  if not os.path.exists(path):
    return None
  report = read_json_file(path)
  static = next(s for s in report["settings"] if s["setting"] == "static")
  against = report.get("against_fixed_exits") or {}
  deed = against.get("deed")
  return {
    "policy": (report.get("calibration") or {}).get("policy"),
    "static_metric": static["metric"],
    "static_ms": static["decoder_ms_per_sample"],
    "deed_setting": deed and deed["setting"],
    "deed_metric": deed and deed["metric"],
    "deed_ms": deed and deed["decoder_ms_per_sample"],
    "deed_mean_exit_layer": deed and deed["mean_exit_layer"],
    "deed_speedup": deed and static["decoder_ms_per_sample"] / deed["decoder_ms_per_sample"],
    "fastest_fixed_reaching_it": against.get("fastest_fixed"),
    "deed_speedup_over_it": against.get("deed_speedup_over_it"),
    "metric_name": static["metric_name"],
  }


def summarise(name: str, workdir: str) -> dict:
  config = read_json_file(os.path.join(workdir, "train_config.json"))
  results = read_json_file(os.path.join(workdir, "eval_results.json"))
  loss = config["loss"]
  return {
    "run": name,
    "workdir": workdir,
    "loss_mode": loss["mode"],
    "exits_per_step": loss.get("exits_per_step", 0),
    "exit_schedule": loss.get("exit_schedule", "random"),
    "total_steps": config["total_steps"],
    "step": results["step"],
    "training": training_time(workdir),
    "exit_exact_match": results["exit_exact_match"],
    "exit_token_accuracy": results["exit_token_accuracy"],
    "deed": _deed_point(workdir),
  }


def _print_table(rows: list[dict]) -> None:
  layers = len(rows[0]["exit_exact_match"])
  print("\nValidation exact match (%) at each exit, after training\n")
  print(
    f"{'run':>10} {'exits/step':>10} {'steps':>6} {'train s':>8} "
    + " ".join(f"{f'e{l}':>5}" for l in range(1, layers + 1))
  )
  for r in rows:
    exits = "all" if r["exits_per_step"] == 0 else f"{r['exits_per_step']} {r['exit_schedule']}"
    print(
      f"{r['run']:>10} {exits:>10} {r['step']:>6} {r['training']['seconds']:>8.0f} "
      + " ".join(f"{100 * m:>5.1f}" for m in r["exit_exact_match"])
    )
  print("\nCalibrated DEED on the test split (the evaluation report's)\n")
  print(
    f"{'run':>10} {'policy':>28} {'static':>7} {'static ms':>9} {'deed':>6} {'deed ms':>8} "
    f"{'speed-up':>8} {'mean exit':>9}"
  )
  for r in rows:
    d = r["deed"]
    if d is None or d["deed_metric"] is None:
      print(f"{r['run']:>10} {'(no calibrated evaluation)':>28}")
      continue
    policy = d["policy"] or {}
    text = (
      f"{policy.get('confidence')}>={policy.get('threshold')} from {policy.get('min_exit_layer')}"
    )
    print(
      f"{r['run']:>10} {text:>28} {d['static_metric']:>7.1f} {d['static_ms']:>9.2f} "
      f"{d['deed_metric']:>6.1f} {d['deed_ms']:>8.2f} {d['deed_speedup']:>7.2f}x "
      f"{d['deed_mean_exit_layer']:>9.2f}"
    )


def main(argv):
  del argv
  runs = []
  for item in _RUNS.value:
    name, sep, workdir = item.partition("=")
    if not sep or not os.path.isdir(workdir):
      raise app.UsageError(f"--runs entry {item!r} must be name=<an existing workdir>.")
    runs.append(summarise(name, workdir))
  _print_table(runs)
  write_result(_OUTPUT.value, {"runs": runs})


if __name__ == "__main__":
  app.run(main)
