r"""Train a multi-exit encoder-decoder with deep supervision, evaluating every exit.

  python -m deed_jax.train --config configs/forms_vqa.py:runlocal --workdir workdirs/forms_vqa

Stages (as in big_vision's trainer): config -> checkpoint dir check -> input -> model/optimizer ->
restore -> steps -> loop (log, evaluate, checkpoint). Rerunning the same command resumes from the newest
checkpoint in the workdir.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import jax
import ml_collections
import numpy as np
import tqdm
from absl import flags, logging
from etils import epath
from jax.experimental import multihost_utils
from ml_collections import config_flags

from deed_jax import checkpoint, cli, distributed, sharding
from deed_jax.config_defaults import ADDABLE_PARAMS, run_changes, validate
from deed_jax.data import datasets, pipeline
from deed_jax.data.tokenizer import get_tokenizer
from deed_jax.errors import UserError
from deed_jax.evaluation.per_exit import evaluate_exits, make_eval_fn
from deed_jax.evaluation.report import exit_table, settings_table
from deed_jax.evaluation.sweep import Setting, decode_settings, summarise
from deed_jax.models import check_token_ids
from deed_jax.training.losses import exit_weights
from deed_jax.training.metric_writer import MetricWriter
from deed_jax.training.optimizer import learning_rate_schedule, make_optimizer
from deed_jax.training.train_step import (make_train_step, merge_model, train_state_layout,
                                          trained_params)
from deed_jax.workdir import (TRAIN_CONFIG_FILE, check_compatible_workdir, copy_side_files,
                              merge_params, read_json, write_json)

RESULTS_FILE = "eval_results.json"


def _log(message: str) -> None:
  """Console output of process 0 that does not break the progress bar."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(message)


def _prepare_dataset(name: str, config: str, data_dir: str, manual_dir: str) -> None:
  """Prepare a missing TFDS dataset on process 0 while the others wait; all raise if it fails."""
  if jax.process_count() == 1:
    datasets.prepare(name, config, data_dir, manual_dir)
    return
  if jax.process_index() == 0:
    prepared = False
    try:
      datasets.prepare(name, config, data_dir, manual_dir)
      prepared = True
    finally:  # tell the others either way: they must not wait for a dataset that never comes
      failed = multihost_utils.broadcast_one_to_all(np.int32(not prepared))
  else:
    failed = multihost_utils.broadcast_one_to_all(np.int32(0))
  if failed:
    raise RuntimeError(f"Process 0 failed to prepare {name}/{config} in {data_dir}.")


class Preemption:
  """Whether the run has been told to stop (SIGTERM: a TPU preemption notice, Slurm's scancel or
  time limit), agreed by all processes at a step.

  One process: a SIGTERM handler sets a flag, read at the next step. Several: JAX's preemption
  service (started by `jax.distributed`) catches the signal and orbax's `reached_preemption` names
  the same step on every process."""

  def __init__(self, checkpointer: checkpoint.Checkpointer):
    self.checkpointer = checkpointer
    self.signalled = False
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_signal)

  def _on_signal(self, signum, frame):
    del signum, frame
    self.signalled = True

  def reached(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.signalled
    return self.checkpointer.manager.reached_preemption(step)

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stop_at_step: int | None = None, progress: bool = True,
                       allow_config_change: bool = False) -> dict | None:
  """Train to `config.total_steps` (resuming if the workdir holds a checkpoint). Returns the final
  evaluation: per-exit loss, token accuracy and exact match on the validation split.

  `stop_at_step` ends the run early, right after a checkpoint of that step, as a preemption would
  (for jobs split into time-limited chunks); it then returns None and the next run resumes there, as
  it does after a SIGTERM (checkpoint, then return None). A resume whose config differs from the one
  the run started with in anything but `RUN_NEUTRAL` options is refused unless `allow_config_change`.

  Every process of a multi-process run calls this with the same arguments (after
  `deed_jax.distributed.initialize`); `config.batch_size` is the global batch.
  """
  # ---------------------------------------------------------------------------------------------
  # Config: everything a user can get wrong is checked before any file is written.
  # ---------------------------------------------------------------------------------------------
  model_config = validate(config)
  if stop_at_step is not None and not 1 <= stop_at_step <= config.total_steps:
    raise UserError(f"stop_at_step={stop_at_step} must be in 1..total_steps={config.total_steps}.")
  task = config.task
  tokenizer = get_tokenizer(task.tokenizer)
  if tokenizer.vocab_size > model_config.vocab_size:
    raise UserError(f"The tokenizer has {tokenizer.vocab_size} ids but model.vocab_size="
                     f"{model_config.vocab_size}.")
  # The decoder's start token is the model's bos_id, whatever the tokenizer calls BOS.
  specials = {"pad_id": tokenizer.pad_id, "eos_id": tokenizer.eos_id}
  for name, value in specials.items():
    if getattr(model_config, name) != value:
      raise UserError(f"model.{name}={getattr(model_config, name)} but the tokenizer's is {value}.")
  check_compatible_workdir(workdir, model_config)  # another architecture: the more telling refusal
  started_with = read_json(workdir, TRAIN_CONFIG_FILE)
  changes = run_changes(started_with, config) if started_with is not None else []
  if changes and not allow_config_change:
    raise UserError(f"{workdir} holds a run started with another config; resuming with this one "
                     f"would change it: {'; '.join(changes)}. Use another --workdir, or pass "
                     "--allow_config_change to continue the run with the new values.")
  checkpointer = checkpoint.Checkpointer(
      workdir, model_config, keep=config.keep_checkpoints,
      save_interval_steps=config.checkpoint_every_steps)
  preemption = Preemption(checkpointer)  # early: a SIGTERM while compiling stops at the first step
  try:
    # ---------------------------------------------------------------------------------------------
    # Devices: one mesh over every process's devices; batches split over its `batch` axes.
    # ---------------------------------------------------------------------------------------------
    mesh = sharding.make_mesh(config.mesh)
    rules = config.sharding_rules
    batch_sharding = sharding.batch_sharding(mesh, rules)
    _log(f"Mesh {dict(mesh.shape)} over {jax.device_count()} devices in {jax.process_count()} "
         f"process(es); global batch {config.batch_size}.")

    # ---------------------------------------------------------------------------------------------
    # Input: the embedded TFDS dataset (generated once), read by grain; each process reads its rows.
    # ---------------------------------------------------------------------------------------------
    data_dir = os.path.expanduser(task.data_dir or "~/tensorflow_datasets")
    dataset_config = datasets.resolve_config(task.dataset, task.dataset_config,
                                             config.init_from or workdir, model_config.image_size)
    _log(f"Dataset {task.dataset}/{dataset_config} in {data_dir} (generated on first use).")
    _prepare_dataset(task.dataset, dataset_config, data_dir, task.manual_dir)
    features = pipeline.TaskFeatures(
        encoder=model_config.encoder, source_key=task.source_key, target_key=task.target_key,
        max_source_length=task.max_source_length, max_target_length=model_config.max_target_length)
    preprocess = pipeline.Preprocess(features, tokenizer, decoder_start_id=model_config.bos_id)
    train_source = pipeline.data_source(task.dataset, dataset_config, "train", data_dir, task.manual_dir)
    eval_source = pipeline.data_source(task.dataset, dataset_config, "validation", data_dir,
                                       task.manual_dir)

    def eval_batches():
      return pipeline.eval_batches(eval_source, preprocess, config.eval_batch_size,
                                   pipeline.process_rows(batch_sharding, config.eval_batch_size))

    # ---------------------------------------------------------------------------------------------
    # Model and optimizer state, created in their shards (or restored into them).
    # ---------------------------------------------------------------------------------------------
    tx = make_optimizer(config.optimizer, config.total_steps, config.gradient_accumulation_steps)
    layout = train_state_layout(model_config, tx, config.seed, config.train_only, mesh, rules)
    graphdef = layout.graphdef
    num_params = sum(x.size for x in jax.tree.leaves(layout.abstract.params))
    _log(f"Model: {num_params:,} parameters, {model_config.decoder_layers} decoder exits.")
    latest, state = checkpointer.restore_newest(layout.abstract, report=_log)
    if state is not None:
      _log(f"Resumed from step {latest} in {workdir}.")
    else:
      state = layout.init()
      if config.init_from:  # A fresh run from another workdir's model (a converted HF checkpoint).
        restored = checkpoint.restore_params(config.init_from, layout.abstract.params,
                                             may_lack=ADDABLE_PARAMS)
        params = merge_params(state.params, restored)  # an added exit classifier keeps its init
        init_opt = jax.jit(tx.init, out_shardings=layout.shardings.opt_state)
        state = state._replace(params=params,
                               opt_state=init_opt(trained_params(params, config.train_only)))
        if jax.process_index() == 0:  # its tokenizer and HF origin, so this run can be exported back
          copy_side_files(config.init_from, workdir)
        _log(f"Initialised from {config.init_from}.")

    if jax.process_index() == 0 and (started_with is None or changes):
      # The config the run follows (written once its checkpoint has been read, so that a refusal
      # leaves the workdir as it was): checked on resume; its task read by deed_jax.evaluate.
      epath.Path(workdir).mkdir(parents=True, exist_ok=True)
      write_json(workdir, TRAIN_CONFIG_FILE, config.to_dict())

    # ---------------------------------------------------------------------------------------------
    # Steps.
    # ---------------------------------------------------------------------------------------------
    weights = exit_weights(config.loss.mode, model_config.decoder_layers)
    train_step = make_train_step(graphdef, tx, weights, config.loss.label_smoothing,
                                 classifier_weight=config.loss.exit_classifier_weight,
                                 train_only=config.train_only, state_shardings=layout.shardings,
                                 batch_sharding=batch_sharding, remat=config.remat)
    eval_fn = make_eval_fn(graphdef, model_config.max_target_length, config.num_eval_samples,
                           layout.shardings.params, batch_sharding)
    schedule = learning_rate_schedule(config.optimizer,
                                      config.total_steps // config.gradient_accumulation_steps)
    start = int(state.step)
    writer = MetricWriter(workdir, resumed_at=start)
    rng = jax.random.key(config.seed)

    def evaluate(step: int) -> dict:
      results = evaluate_exits(eval_fn, state.params, eval_batches(), tokenizer.decode,
                               config.num_eval_samples,
                               to_device=lambda batch: sharding.global_batch(batch, batch_sharding))
      writer.write(step, {k: v for k, v in results.items() if k.startswith("exit_")}, prefix="eval/")
      _log(f"Validation at step {step}:\n{exit_table(results)}")
      for sample in results["samples"]:
        _log(f"  target {sample['target']!r} | exits 1..L {sample['exits']}")
      return {"step": step, **results}

    # ---------------------------------------------------------------------------------------------
    # Loop.
    # ---------------------------------------------------------------------------------------------
    train_iter = pipeline.train_batches(train_source, preprocess, config.batch_size,
                                        pipeline.process_rows(batch_sharding, config.batch_size),
                                        seed=config.seed, first_step=start + 1)
    bar = tqdm.tqdm(total=config.total_steps, initial=start, desc="train", dynamic_ncols=True,
                    disable=not progress or jax.process_index() > 0)
    last_time, last_step, stopped = time.time(), start, None
    try:
      for step in range(start + 1, config.total_steps + 1):
        batch = next(train_iter)
        for key in ("input_ids", "decoder_input_ids", "targets"):
          if key in batch:
            check_token_ids(batch[key], model_config.vocab_size, key)
        state, metrics = train_step(state, sharding.global_batch(batch, batch_sharding), rng)
        bar.update(1)
        if step % config.log_every_steps == 0 or step == config.total_steps:
          metrics = jax.device_get(metrics)
          now = time.time()
          metrics["steps_per_second"] = (step - last_step) / max(now - last_time, 1e-9)
          metrics["learning_rate"] = float(schedule((step - 1) // config.gradient_accumulation_steps))
          last_time, last_step = now, step
          writer.write(step, metrics, prefix="train/")
          bar.set_postfix(loss=f"{metrics['loss']:.3f}",
                          final_acc=f"{metrics['exit_token_accuracy'][-1]:.3f}",
                          steps_s=f"{metrics['steps_per_second']:.2f}")
        preempted = preemption.reached(step)
        checkpointer.save(step, state, force=preempted or step in (config.total_steps, stop_at_step))
        if preempted or step == stop_at_step:
          stopped = "SIGTERM" if preempted else "stop_at_step"
          break
        if step % config.eval_every_steps == 0 and step != config.total_steps:
          evaluate(step)
    finally:
      bar.close()
      checkpointer.wait()
    if stopped is not None and int(state.step) < config.total_steps:
      _log(f"Stopped at step {int(state.step)} ({stopped}) after saving it; rerun the same command to "
           "resume.")
      writer.close()
      return None
    results = evaluate(int(state.step))
    writer.close()
    if config.decode.thresholds:
      examples, answers = pipeline.read_examples(eval_source, preprocess, config.decode.num_examples,
                                                 task.answers_key)
      settings = [Setting("static")] + [Setting("deed", threshold=t) for t in config.decode.thresholds]
      # One example at a time: on one local device of each process (a copy of the params), not the mesh.
      params = jax.device_put(multihost_utils.process_allgather(state.params, tiled=True),
                              jax.local_devices()[0])
      runs = decode_settings(merge_model(graphdef, params),
                             [pipeline.stack_examples([e]) for e in examples],
                             settings, model_config.max_target_length)
      rows = summarise(runs, task.metric, tokenizer.decode, answers)
      _log(f"Greedy decoding, one example at a time ({len(examples)} validation examples):\n"
           f"{settings_table(rows)}")
      results["decoding"] = rows
    if jax.process_index() == 0:
      (epath.Path(workdir) / RESULTS_FILE).write_text(json.dumps(results, indent=2))
    return results
  finally:
    preemption.close()
    checkpointer.close()


_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
_STOP_AT_STEP = flags.DEFINE_integer("stop_at_step", None,
                                     "Checkpoint and stop at this step; rerun to resume.")
_INIT_FROM = flags.DEFINE_string("init_from", None,
                                 "Start from this workdir's model (sets config.init_from).")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume a run although the config differs from the one it started "
    "with (the differences are printed).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for a multi-process run (not needed on a "
    "TPU VM slice or under Slurm, where JAX finds it).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run (with "
                                      "--coordinator_address).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Join the multi-process run JAX detects by itself (a TPU VM slice; Slurm "
    "tasks are detected without it).")


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO.
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                         auto=_DISTRIBUTED.value)
  config = _CONFIG.value
  if _INIT_FROM.value is not None:
    with config.unlocked():
      config.init_from = _INIT_FROM.value
  train_and_evaluate(config, _WORKDIR.value, stop_at_step=_STOP_AT_STEP.value,
                     allow_config_change=_ALLOW_CONFIG_CHANGE.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  jax.config.config_with_absl()
  cli.run(main)
