r"""Training step cost: deep supervision vs the final exit alone, and one device vs a data-parallel mesh.

  python -m deed_jax.bench.train                       # forms_vqa runlocal model, 1 and 8 devices
  python -m deed_jax.bench.train --config configs/forms_vqa.py --devices 1,4 --batch_size 64
  python -m deed_jax.bench.train --devices 1 --exits_per_step 0,1,2  # sampled exit supervision

Every variant is the trainer's own jitted step (`make_train_step` over a `train_state_layout`) on the
same model and global batch, timed side by side in one process: the median wall time of `--steps`
steps after two untimed ones, and the compiled step's memory (XLA's own account: arguments + outputs
- donated buffers + temporaries, per device; and the allocator's peak where the device reports one).
On a CPU without enough devices, `--devices` asks XLA for that many host devices; they share the
machine's cores, so 8 CPU "devices" measure partitioning overhead, not a speed-up.

Deep supervision costs one LM-head pass per exit ([B, T, D] x [D, V] each, recomputed in the
backward pass) on top of the final exit's: its ratio to the final-only step grows with the vocabulary
and shrinks with the layers' own cost. Sampled supervision (`--config.loss.exits_per_step`, or several
values side by side with `--exits_per_step`) runs the head on the final exit and k others. The
rows honour `--config.loss.*` (the `final` row supervises the final exit alone whatever it says).
The goal is <= 1.3x the final-only step.

Model FLOPs per step are counted from the step's shapes (`training.flops`: 3x the forward matmuls,
the supervised exits' heads included); with the step time they give FLOP/s, and where the device's
peak is known (TPU/GPU tables) the model-FLOPs utilisation.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from deed_jax import sharding
from deed_jax.bench.report import write_result
from deed_jax.config_defaults import model_config as model_config_of
from deed_jax.models import ModelConfig
from deed_jax.training.flops import model_flops_per_step, peak_flops
from deed_jax.training.losses import objective
from deed_jax.training.optimizer import make_optimizer
from deed_jax.training.train_step import make_loss_fn, make_train_step, train_state_layout

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  "configs/forms_vqa.py:runlocal",
  "Training config (file[:arg]); --config.<option> overrides.",
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Global batch (default: the config's).")
_DEVICES = flags.DEFINE_list(
  "devices", ["1", "8"], "Device counts to compare (data-parallel meshes)."
)
_LOSS_MODES = flags.DEFINE_list("loss_modes", ["deed", "final"], "Losses to compare.")
_EXITS_PER_STEP = flags.DEFINE_list(
  "exits_per_step",
  None,
  "Sampled intermediate exits per step to compare in each non-final row (0: every exit); "
  "default: the config's loss.exits_per_step.",
)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per variant.")
_OUTPUT = flags.DEFINE_string("output", "bench_results/train.json", "Where to write the JSON.")


def _ask_for_cpu_devices(count: int) -> None:
  """On a host without accelerators, have XLA make `count` CPU devices (before jax starts them)."""
  if os.environ.get("JAX_PLATFORMS", "") in ("", "cpu"):
    jax.config.update("jax_num_cpu_devices", count)


def _timed_steps(compiled, state, batch, key, steps: int) -> tuple[list[float], object]:
  """Wall seconds of `steps` steps after two untimed ones; -> (times, final state)."""
  times = []
  for index in range(steps + 2):
    start = time.perf_counter()
    state, metrics = compiled(state, batch, key)
    jax.block_until_ready(metrics)
    if index >= 2:
      times.append(time.perf_counter() - start)
  return times, state


def main(argv):
  del argv
  counts = sorted({int(d) for d in _DEVICES.value})
  _ask_for_cpu_devices(max(counts))
  config = _CONFIG.value
  batch_size = _BATCH_SIZE.value or config.batch_size
  model_config = model_config_of(config)
  if max(counts) > jax.device_count():
    raise app.UsageError(
      f"--devices asks for {max(counts)} devices; this host has "
      f"{jax.device_count()} ({jax.devices()[0].platform})."
    )
  for count in counts:
    if batch_size % count:
      raise app.UsageError(f"--batch_size={batch_size} does not split over {count} devices.")
  batch = _random_batch(model_config, batch_size)
  rows = [row for count in counts for row in _time_on(count, config, model_config, batch)]
  by = {(r["devices"], r["loss_mode"], r["exits_per_step"]): r for r in rows}
  for r in rows:
    final = by.get((r["devices"], "final", 0))
    one = by.get((counts[0], r["loss_mode"], r["exits_per_step"]))
    r["vs_final_only"] = r["step_ms"] / final["step_ms"] if final else None
    r["vs_one_device"] = r["step_ms"] / one["step_ms"] if one else None
  _print_table(rows, model_config, batch_size)
  write_result(
    _OUTPUT.value,
    {
      "config": flags.FLAGS["config"].serialize().split("=", 1)[-1],
      "batch_size": batch_size,
      "steps": _STEPS.value,
      "model": {
        "decoder_layers": model_config.decoder_layers,
        "d_model": model_config.d_model,
        "vocab_size": model_config.vocab_size,
        "max_target_length": model_config.max_target_length,
        "encoder": model_config.encoder,
      },
      "loss": config.loss.to_dict(),
      "peak_flops_per_device": peak_flops(jax.devices()[0]),
      "goal": "deed step <= 1.3x final-only step",
      "rows": rows,
    },
  )


def _random_batch(model_config: ModelConfig, batch_size: int) -> dict:
  """Random ids within the vocabulary (and random pixels): step time does not depend on them."""
  rng = np.random.default_rng(0)
  length, vocab = model_config.max_target_length, model_config.vocab_size
  batch = {
    "decoder_input_ids": rng.integers(3, vocab, (batch_size, length)).astype(np.int32),
    "targets": rng.integers(3, vocab, (batch_size, length)).astype(np.int32),
    "target_mask": np.ones((batch_size, length), np.int32),
  }
  if model_config.encoder == "text":
    batch["input_ids"] = rng.integers(
      3, vocab, (batch_size, model_config.max_source_length)
    ).astype(np.int32)
    batch["attention_mask"] = np.ones_like(batch["input_ids"])
  else:
    h, w = model_config.image_hw
    batch["pixel_values"] = rng.uniform(
      -1, 1, (batch_size, h, w, model_config.num_channels)
    ).astype(np.float32)
  return batch


def _variants(config) -> list[tuple[str, int]]:
  """(loss mode, exits per step) of each row: final alone, the other modes at each sampling."""
  sampled = [int(k) for k in _EXITS_PER_STEP.value or [config.loss.exits_per_step]]
  return [(mode, k) for mode in _LOSS_MODES.value for k in ([0] if mode == "final" else sampled)]


def _time_on(count: int, config, model_config: ModelConfig, batch: dict) -> list[dict]:
  """Each variant's train step on the first `count` devices: median step time, memory, FLOPs."""
  tx = make_optimizer(config.optimizer, config.total_steps)
  mesh = sharding.make_mesh({"data": count}, devices=jax.devices()[:count])
  layout = train_state_layout(model_config, tx, config.seed, (), mesh, config.sharding_rules)
  batch_sharding = sharding.batch_sharding(mesh, config.sharding_rules)
  global_batch = sharding.global_batch(batch, batch_sharding)
  batch_size = len(batch["targets"])
  peak = peak_flops(jax.devices()[0])
  rows = []
  for mode, sampled in _variants(config):
    loss = config.loss.copy_and_resolve_references()
    loss.update(mode=mode, exits_per_step=sampled)
    options = objective(loss, model_config.decoder_layers)
    step = make_train_step(
      layout.graphdef,
      tx,
      **options,
      state_shardings=layout.shardings,
      batch_sharding=batch_sharding,
      remat=config.remat,
    )
    state, key = layout.init(), jax.random.key(0)
    flops = model_flops_per_step(
      make_loss_fn(layout.graphdef, **options, remat=config.remat),
      layout.abstract.params,
      global_batch,
      state.step,
      key,
    )
    compiled = step.lower(state, global_batch, key).compile()
    memory = compiled.memory_analysis()
    times, state = _timed_steps(compiled, state, global_batch, key, _STEPS.value)
    stats = jax.devices()[0].memory_stats() or {}
    step_ms = 1e3 * float(np.median(times))
    flops_per_second = flops / (step_ms / 1e3)
    rows.append(
      {
        "devices": count,
        "loss_mode": mode,
        "exits_per_step": sampled,
        "batch_size": batch_size,
        "step_ms": step_ms,
        "steps_per_second": 1e3 / step_ms,
        "examples_per_second": batch_size * 1e3 / step_ms,
        "model_flops_per_step": flops,
        "model_flops_per_second": flops_per_second,
        "mfu": None if peak is None else flops_per_second / (peak * count),
        "compiled_bytes_per_device": int(
          memory.argument_size_in_bytes
          + memory.output_size_in_bytes
          - memory.alias_size_in_bytes
          + memory.temp_size_in_bytes
        ),
        "temp_bytes_per_device": int(memory.temp_size_in_bytes),
        "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
      }
    )
    del state
  return rows


def _print_table(rows: list[dict], model_config: ModelConfig, batch_size: int) -> None:
  print(
    f"\nTrain step, {model_config.encoder} encoder: {model_config.decoder_layers} decoder layers, "
    f"d_model {model_config.d_model}, vocab {model_config.vocab_size}, global batch {batch_size}, "
    f"median of {_STEPS.value} steps; {jax.devices()[0].device_kind}\n"
  )
  print(
    f"{'devices':>7} {'loss':>6} {'exits/step':>10} {'step ms':>9} {'vs final':>9} "
    f"{'vs 1 dev':>9} {'GFLOP/step':>11} {'GFLOP/s':>8} {'MFU':>6} {'compiled MiB/dev':>17} "
    f"{'temp MiB':>9} {'peak MiB':>9}"
  )
  for r in rows:
    peak = "-" if r["peak_bytes_in_use"] is None else f"{r['peak_bytes_in_use'] / 2**20:.1f}"
    mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    exits = "all" if r["exits_per_step"] == 0 and r["loss_mode"] != "final" else r["exits_per_step"]
    print(
      f"{r['devices']:>7} {r['loss_mode']:>6} {exits:>10} {r['step_ms']:>9.2f} "
      f"{r['vs_final_only'] or float('nan'):>9.2f} {r['vs_one_device'] or float('nan'):>9.2f} "
      f"{r['model_flops_per_step'] / 1e9:>11.2f} {r['model_flops_per_second'] / 1e9:>8.1f} "
      f"{mfu:>6} {r['compiled_bytes_per_device'] / 2**20:>17.1f} "
      f"{r['temp_bytes_per_device'] / 2**20:>9.1f} {peak:>9}"
    )


if __name__ == "__main__":
  app.run(main)
