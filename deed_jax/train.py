r"""Train a multi-exit encoder-decoder with deep supervision, evaluating every exit.

  python -m deed_jax.train --config configs/forms_vqa.py:runlocal --workdir workdirs/forms_vqa

Stages (as in big_vision's trainer), each a named piece below: check the config and workdir
(`_check_run`) -> mesh, input (`_Data`), model and optimizer (`_Trainer`) -> restore or initialise
the state (`_Trainer.restore_or_init`) -> the loop (`_Trainer.train`: step, log with `_TrainLog`,
checkpoint, evaluate per exit with `_Evaluator`). Rerunning the same command resumes from the newest
checkpoint in the workdir.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import NamedTuple

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
from deed_jax.data.tokenizer import Tokenizer
from deed_jax.errors import UserError
from deed_jax.evaluation.per_exit import evaluate_exits, make_eval_fn
from deed_jax.evaluation.report import exit_table
from deed_jax.models import ModelConfig, check_token_ids
from deed_jax.param_tree import merge_params
from deed_jax.training.flops import model_flops_per_step, peak_flops
from deed_jax.training.losses import objective
from deed_jax.training.metric_writer import MetricWriter
from deed_jax.training.optimizer import learning_rate_schedule, make_optimizer
from deed_jax.training.train_step import (
  TrainState,
  make_loss_fn,
  make_train_step,
  train_state_layout,
  trained_params,
)
from deed_jax.workdir import (
  TRAIN_CONFIG_FILE,
  check_compatible_workdir,
  copy_side_files,
  read_json,
  write_json,
)

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


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  stop_at_step: int | None = None,
  progress: bool = True,
  allow_config_change: bool = False,
) -> dict | None:
  """Train to `config.total_steps` (resuming if the workdir holds a checkpoint). Returns the final
  evaluation: per-exit loss, token accuracy and exact match on the validation split.

  `stop_at_step` ends the run early, right after a checkpoint of that step, as a preemption would
  (for jobs split into time-limited chunks); it then returns None and the next run resumes there, as
  it does after a SIGTERM (checkpoint, then return None). A resume whose config differs from the one
  the run started with in anything but `RUN_NEUTRAL` options is refused unless `allow_config_change`.

  Every process of a multi-process run calls this with the same arguments (after
  `deed_jax.distributed.initialize`); `config.batch_size` is the global batch. Decoding speed and
  accuracy under early exit are `python -m deed_jax.evaluate`'s job.
  """
  run = _check_run(config, workdir, stop_at_step, allow_config_change)  # before any file is written
  checkpointer = checkpoint.Checkpointer(
    workdir,
    run.model_config,
    keep=config.keep_checkpoints,
    save_interval_steps=config.checkpoint_every_steps,
  )
  preemption = Preemption(checkpointer)  # early: a SIGTERM while compiling stops at the first step
  try:
    trainer = _Trainer(config, run, workdir, checkpointer)
    state = trainer.restore_or_init()
    evaluator = _Evaluator(config, run, trainer, start=int(state.step))
    try:
      state, stopped = trainer.train(state, evaluator, preemption, stop_at_step, progress)
    finally:
      checkpointer.wait()
    if stopped is not None and int(state.step) < config.total_steps:
      _log(
        f"Stopped at step {int(state.step)} ({stopped}) after saving it; rerun the same command to "
        "resume."
      )
      evaluator.writer.close()
      return None
    results = evaluator(int(state.step), state.params)
    evaluator.writer.close()
    if jax.process_index() == 0:
      (epath.Path(workdir) / RESULTS_FILE).write_text(json.dumps(results, indent=2))
    return results
  finally:
    preemption.close()
    checkpointer.close()


class _Run(NamedTuple):
  """What the checks found about a run, before anything is built."""

  model_config: ModelConfig
  tokenizer: Tokenizer
  started_with: dict | None  # the config the workdir's run started with (None: a new run)
  changes: list[str]  # how this config changes that run's


def _check_run(
  config: ml_collections.ConfigDict,
  workdir: str,
  stop_at_step: int | None,
  allow_config_change: bool,
) -> _Run:
  """Everything a user can get wrong about the config and the workdir; writes nothing."""
  model_config = validate(config)
  if stop_at_step is not None and not 1 <= stop_at_step <= config.total_steps:
    raise UserError(f"stop_at_step={stop_at_step} must be in 1..total_steps={config.total_steps}.")
  tokenizer = pipeline.task_tokenizer(config.task)
  if tokenizer.vocab_size > model_config.vocab_size:
    raise UserError(
      f"The tokenizer has {tokenizer.vocab_size} ids but model.vocab_size="
      f"{model_config.vocab_size}."
    )
  # The decoder's start token is the model's bos_id, whatever the tokenizer calls BOS.
  for name, value in {"pad_id": tokenizer.pad_id, "eos_id": tokenizer.eos_id}.items():
    if getattr(model_config, name) != value:
      raise UserError(f"model.{name}={getattr(model_config, name)} but the tokenizer's is {value}.")
  check_compatible_workdir(workdir, model_config)  # another architecture: the more telling refusal
  started_with = read_json(workdir, TRAIN_CONFIG_FILE)
  changes = run_changes(started_with, config) if started_with is not None else []
  if changes and not allow_config_change:
    raise UserError(
      f"{workdir} holds a run started with another config; resuming with this one "
      f"would change it: {'; '.join(changes)}. Use another --workdir, or pass "
      "--allow_config_change to continue the run with the new values."
    )
  return _Run(model_config, tokenizer, started_with, changes)


class _Data:
  """The task's TFDS dataset (generated once) read by grain; each process reads its own rows."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    run: _Run,
    workdir: str,
    batch_sharding: jax.sharding.NamedSharding,
  ):
    task, model_config = config.task, run.model_config
    data_dir = os.path.expanduser(task.data_dir or "~/tensorflow_datasets")
    dataset_config = datasets.resolve_config(
      task.dataset, task.dataset_config, config.init_from or workdir, model_config.image_size
    )
    _log(f"Dataset {task.dataset}/{dataset_config} in {data_dir} (generated on first use).")
    _prepare_dataset(task.dataset, dataset_config, data_dir, task.manual_dir)
    self.preprocess = pipeline.task_preprocess(task, model_config, run.tokenizer)
    source = lambda split: pipeline.data_source(
      task.dataset, dataset_config, split, data_dir, task.manual_dir
    )
    self.train_source, self.eval_source = source("train"), source("validation")
    self.config, self.batch_sharding = config, batch_sharding

  def train_batches(self, first_step: int):
    size = self.config.batch_size
    return pipeline.train_batches(
      self.train_source,
      self.preprocess,
      size,
      pipeline.process_rows(self.batch_sharding, size),
      seed=self.config.seed,
      first_step=first_step,
    )

  def eval_batches(self):
    size = self.config.eval_batch_size
    return pipeline.eval_batches(
      self.eval_source, self.preprocess, size, pipeline.process_rows(self.batch_sharding, size)
    )


class _Trainer:
  """The run's devices, input, model and optimizer, and the loop that steps them."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    run: _Run,
    workdir: str,
    checkpointer: checkpoint.Checkpointer,
  ):
    self.config, self.run, self.workdir, self.checkpointer = config, run, workdir, checkpointer
    # Devices: one mesh over every process's devices; batches split over its `batch` axes.
    mesh = sharding.make_mesh(config.mesh)
    self.batch_sharding = sharding.batch_sharding(mesh, config.sharding_rules)
    _log(
      f"Mesh {dict(mesh.shape)} over {jax.device_count()} devices in {jax.process_count()} "
      f"process(es); global batch {config.batch_size}."
    )
    self.data = _Data(config, run, workdir, self.batch_sharding)
    # Model and optimizer state, created in their shards (or restored into them).
    self.tx = make_optimizer(
      config.optimizer, config.total_steps, config.gradient_accumulation_steps
    )
    self.layout = train_state_layout(
      run.model_config, self.tx, config.seed, config.train_only, mesh, config.sharding_rules
    )

  def restore_or_init(self) -> TrainState:
    """The newest readable checkpoint of the workdir, else a fresh state in its shards (from
    `config.init_from`'s model when set); then the config the run follows is stored."""
    config, run, layout = self.config, self.run, self.layout
    num_params = sum(x.size for x in jax.tree.leaves(layout.abstract.params))
    _log(f"Model: {num_params:,} parameters, {run.model_config.decoder_layers} decoder exits.")
    latest, state = self.checkpointer.restore_newest(layout.abstract, report=_log)
    if state is not None:
      _log(f"Resumed from step {latest} in {self.workdir}.")
    elif config.init_from:  # A fresh run from another workdir's model (a converted HF checkpoint).
      state = self._init_from(config.init_from)
    else:
      state = layout.init()
    if jax.process_index() == 0 and (run.started_with is None or run.changes):
      # The config the run follows (written once its checkpoint has been read, so that a refusal
      # leaves the workdir as it was): checked on resume; its task read by deed_jax.evaluate.
      epath.Path(self.workdir).mkdir(parents=True, exist_ok=True)
      write_json(self.workdir, TRAIN_CONFIG_FILE, config.to_dict())
    return state

  def _init_from(self, source: str) -> TrainState:
    state, layout = self.layout.init(), self.layout
    restored = checkpoint.restore_params(source, layout.abstract.params, may_lack=ADDABLE_PARAMS)
    params = merge_params(state.params, restored)  # an added exit classifier keeps its init
    init_opt = jax.jit(self.tx.init, out_shardings=layout.shardings.opt_state)
    opt_state = init_opt(trained_params(params, self.config.train_only))
    if jax.process_index() == 0:  # its tokenizer and HF origin, so this run can be exported back
      copy_side_files(source, self.workdir)
    _log(f"Initialised from {source}.")
    return state._replace(params=params, opt_state=opt_state)

  def train(
    self,
    state: TrainState,
    evaluator: _Evaluator,
    preemption: Preemption,
    stop_at_step: int | None,
    progress: bool,
  ) -> tuple[TrainState, str | None]:
    """Steps from the state's step to total_steps: log, checkpoint, evaluate. -> (state, why it
    stopped early: "SIGTERM", "stop_at_step", or None)."""
    config, train_step = self.config, self._train_step()
    rng = jax.random.key(config.seed)
    start = int(state.step)
    train_iter = self.data.train_batches(first_step=start + 1)
    log = _TrainLog(config, evaluator.writer, start, progress)
    try:
      for step in range(start + 1, config.total_steps + 1):
        batch = next(train_iter)
        for key in ("input_ids", "decoder_input_ids", "targets"):
          if key in batch:
            check_token_ids(batch[key], self.run.model_config.vocab_size, key)
        batch = sharding.global_batch(batch, self.batch_sharding)
        if log.model_flops is None:
          log.set_model_flops(self._model_flops(state, batch, rng))
        state, metrics = train_step(state, batch, rng)
        if step % config.log_every_steps == 0 or step == config.total_steps:
          log(step, metrics)
        preempted = preemption.reached(step)
        force = preempted or step in (config.total_steps, stop_at_step)
        self.checkpointer.save(step, state, force=force)
        if preempted or step == stop_at_step:
          return state, "SIGTERM" if preempted else "stop_at_step"
        if step % config.eval_every_steps == 0 and step != config.total_steps:
          evaluator(step, state.params)
      return state, None
    finally:
      log.close()

  def _model_flops(self, state: TrainState, batch: dict, rng: jax.Array) -> float:
    """Model FLOPs of one train step on this batch's shapes (`training.flops`), traced not run."""
    options = objective(self.config.loss, self.run.model_config.decoder_layers)
    loss_fn = make_loss_fn(self.layout.graphdef, **options, remat=self.config.remat)
    return model_flops_per_step(loss_fn, self.layout.abstract.params, batch, state.step, rng)

  def _train_step(self):
    config, layout = self.config, self.layout
    return make_train_step(
      layout.graphdef,
      self.tx,
      **objective(config.loss, self.run.model_config.decoder_layers),
      train_only=config.train_only,
      state_shardings=layout.shardings,
      batch_sharding=self.batch_sharding,
      remat=config.remat,
    )


class _TrainLog:
  """Training metrics every `log_every_steps`: written, and shown on the progress bar.

  The bar counts completed steps: it advances where metrics are fetched (which waits for the step to
  finish), not at each asynchronous dispatch, so its rate and ETA stay steady."""

  def __init__(self, config: ml_collections.ConfigDict, writer: MetricWriter, start: int, progress):
    self.writer, self.last_time, self.last_step = writer, time.time(), start
    self.model_flops: float | None = None  # per step, set once the first batch's shapes are known
    peak = peak_flops(jax.devices()[0])
    self.peak = None if peak is None else peak * jax.device_count()
    self.accumulation = config.gradient_accumulation_steps
    self.schedule = learning_rate_schedule(
      config.optimizer, config.total_steps // self.accumulation
    )
    self.bar = tqdm.tqdm(
      total=config.total_steps,
      initial=start,
      desc="train",
      dynamic_ncols=True,
      disable=not progress or jax.process_index() > 0,
    )

  def __call__(self, step: int, metrics: dict) -> None:
    metrics = jax.device_get(metrics)
    now = time.time()
    metrics["steps_per_second"] = (step - self.last_step) / max(now - self.last_time, 1e-9)
    metrics["learning_rate"] = float(self.schedule((step - 1) // self.accumulation))
    if self.model_flops is not None:
      metrics["model_flops_per_second"] = self.model_flops * metrics["steps_per_second"]
      if self.peak is not None:
        metrics["mfu"] = metrics["model_flops_per_second"] / self.peak
    self.last_time, self.last_step = now, step
    self.writer.write(step, metrics, prefix="train/")
    self.bar.update(step - self.bar.n)
    self.bar.set_postfix(
      loss=f"{metrics['loss']:.3f}",
      final_acc=f"{metrics['exit_token_accuracy'][-1]:.3f}",
      steps_s=f"{metrics['steps_per_second']:.2f}",
    )

  def set_model_flops(self, flops: float) -> None:
    self.model_flops = flops
    peak = "" if self.peak is None else f", {self.peak / 1e12:.0f} TFLOP/s peak over all devices"
    _log(f"Model FLOPs per step: {flops / 1e9:.2f} GFLOP (3x the forward matmuls{peak}).")

  def close(self) -> None:
    self.bar.close()


class _Evaluator:
  """Per-exit validation (loss, token accuracy, exact match), logged and written as metrics."""

  def __init__(self, config: ml_collections.ConfigDict, run: _Run, trainer: _Trainer, start: int):
    self.config, self.run, self.data = config, run, trainer.data
    self.eval_fn = make_eval_fn(
      trainer.layout.graphdef,
      run.model_config.max_target_length,
      config.num_eval_samples,
      trainer.layout.shardings.params,
      trainer.batch_sharding,
    )
    self.writer = MetricWriter(trainer.workdir, resumed_at=start)

  def __call__(self, step: int, params) -> dict:
    results = evaluate_exits(
      self.eval_fn,
      params,
      self.data.eval_batches(),
      self.run.tokenizer.decode,
      self.config.num_eval_samples,
      to_device=lambda batch: sharding.global_batch(batch, self.data.batch_sharding),
    )
    self.writer.write(
      step, {k: v for k, v in results.items() if k.startswith("exit_")}, prefix="eval/"
    )
    _log(f"Validation at step {step}:\n{exit_table(results)}")
    for sample in results["samples"]:
      _log(f"  target {sample['target']!r} | exits 1..L {sample['exits']}")
    return {"step": step, **results}


_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Training config file (configs/*.py[:arg]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
_STOP_AT_STEP = flags.DEFINE_integer(
  "stop_at_step", None, "Checkpoint and stop at this step; rerun to resume."
)
_INIT_FROM = flags.DEFINE_string(
  "init_from", None, "Start from this workdir's model (sets config.init_from)."
)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
  "allow_config_change",
  False,
  "Resume a run although the config differs from the one it started "
  "with (the differences are printed).",
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address",
  None,
  "host:port of process 0, for a multi-process run (not needed on a "
  "TPU VM slice or under Slurm, where JAX finds it).",
)
_NUM_PROCESSES = flags.DEFINE_integer(
  "num_processes", None, "Processes in the run (with --coordinator_address)."
)
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed",
  False,
  "Join the multi-process run JAX detects by itself (a TPU VM slice; Slurm "
  "tasks are detected without it).",
)


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO.
  distributed.initialize(
    _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, auto=_DISTRIBUTED.value
  )
  config = _CONFIG.value
  if _INIT_FROM.value is not None:
    with config.unlocked():
      config.init_from = _INIT_FROM.value
  train_and_evaluate(
    config,
    _WORKDIR.value,
    stop_at_step=_STOP_AT_STEP.value,
    allow_config_change=_ALLOW_CONFIG_CHANGE.value,
  )


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  jax.config.config_with_absl()
  cli.run(main)
