r"""Train a multi-exit encoder-decoder with deep supervision, evaluating every exit.

  python -m deed_jax.train --config configs/forms_vqa.py:runlocal --workdir workdirs/forms_vqa

Stages (as in big_vision's trainer): config -> checkpoint dir check -> input -> model/optimizer ->
restore -> steps -> loop (log, evaluate, checkpoint). Rerunning the same command resumes from the newest
checkpoint in the workdir.
"""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
import tqdm
from absl import flags, logging
from flax import nnx
from ml_collections import config_flags

from deed_jax import checkpoint, cli
from deed_jax.config_defaults import ADDABLE_PARAMS, validate
from deed_jax.data import datasets, pipeline
from deed_jax.data.tokenizer import get_tokenizer
from deed_jax.errors import UserError
from deed_jax.evaluation.per_exit import evaluate_exits, make_eval_fn
from deed_jax.evaluation.report import exit_table, settings_table
from deed_jax.evaluation.sweep import Setting, decode_settings, summarise
from deed_jax.models import MultiExitEncoderDecoder, check_token_ids
from deed_jax.training.losses import exit_weights
from deed_jax.training.metric_writer import MetricWriter
from deed_jax.training.optimizer import learning_rate_schedule, make_optimizer
from deed_jax.training.train_step import (init_train_state, make_train_step, merge_model,
                                          trained_params)
from deed_jax.workdir import (TRAIN_CONFIG_FILE, copy_side_files, merge_params, read_json,
                              write_json)

RESULTS_FILE = "eval_results.json"


def _log(message: str) -> None:
  """Console output of process 0 that does not break the progress bar."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(message)


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stop_at_step: int | None = None, progress: bool = True) -> dict | None:
  """Train to `config.total_steps` (resuming if the workdir holds a checkpoint). Returns the final
  evaluation: per-exit loss, token accuracy and exact match on the validation split.

  `stop_at_step` ends the run early, right after a checkpoint of that step, as a preemption would
  (for jobs split into time-limited chunks); it then returns None and the next run resumes there.
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
  checkpointer = checkpoint.Checkpointer(
      workdir, model_config, keep=config.keep_checkpoints,
      save_interval_steps=config.checkpoint_every_steps)
  if jax.process_index() == 0 and read_json(workdir, TRAIN_CONFIG_FILE) is None:
    # The config the run started with: its task, for `python -m deed_jax.evaluate`.
    os.makedirs(workdir, exist_ok=True)
    write_json(workdir, TRAIN_CONFIG_FILE, config.to_dict())

  # ---------------------------------------------------------------------------------------------
  # Input: the embedded TFDS dataset (generated once), read by grain.
  # ---------------------------------------------------------------------------------------------
  data_dir = os.path.expanduser(task.data_dir or "~/tensorflow_datasets")
  dataset_config = datasets.resolve_config(task.dataset, task.dataset_config,
                                           config.init_from or workdir, model_config.image_size)
  _log(f"Dataset {task.dataset}/{dataset_config} in {data_dir} (generated on first use).")
  datasets.prepare(task.dataset, dataset_config, data_dir, task.manual_dir)
  features = pipeline.TaskFeatures(
      encoder=model_config.encoder, source_key=task.source_key, target_key=task.target_key,
      max_source_length=task.max_source_length, max_target_length=model_config.max_target_length)
  preprocess = pipeline.Preprocess(features, tokenizer, decoder_start_id=model_config.bos_id)
  train_source = pipeline.data_source(task.dataset, dataset_config, "train", data_dir, task.manual_dir)
  eval_source = pipeline.data_source(task.dataset, dataset_config, "validation", data_dir,
                                     task.manual_dir)
  train_iter = iter(pipeline.make_loader(train_source, preprocess, config.batch_size, shuffle=True,
                                         seed=config.seed, num_epochs=None, drop_remainder=True))

  def eval_batches():
    return pipeline.make_loader(eval_source, preprocess, config.eval_batch_size, shuffle=False,
                                seed=config.seed, num_epochs=1, drop_remainder=False)

  # ---------------------------------------------------------------------------------------------
  # Model and optimizer.
  # ---------------------------------------------------------------------------------------------
  model = MultiExitEncoderDecoder(model_config, rngs=nnx.Rngs(config.seed))
  tx = make_optimizer(config.optimizer, config.total_steps)
  graphdef, state = init_train_state(model, tx, config.train_only)
  del model
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  _log(f"Model: {num_params:,} parameters, {model_config.decoder_layers} decoder exits.")

  # ---------------------------------------------------------------------------------------------
  # Restore the newest checkpoint (train state and data position), if any.
  # ---------------------------------------------------------------------------------------------
  latest = checkpointer.latest_step()
  if latest is not None:
    state = checkpointer.restore(latest, _abstract(state), train_iter)
    _log(f"Resumed from step {latest} in {workdir}.")
  elif config.init_from:  # A fresh run from another workdir's model (a converted HF checkpoint).
    restored = checkpoint.restore_params(config.init_from, _abstract(state.params),
                                         may_lack=ADDABLE_PARAMS)
    params = merge_params(state.params, restored)  # an added exit classifier keeps its init
    state = state._replace(params=params, opt_state=tx.init(trained_params(params, config.train_only)))
    if jax.process_index() == 0:  # its tokenizer and HF origin, so this run can be exported back
      copy_side_files(config.init_from, workdir)
    _log(f"Initialised from {config.init_from}.")

  # ---------------------------------------------------------------------------------------------
  # Steps.
  # ---------------------------------------------------------------------------------------------
  weights = exit_weights(config.loss.mode, model_config.decoder_layers)
  train_step = make_train_step(graphdef, tx, weights, config.loss.label_smoothing,
                               classifier_weight=config.loss.exit_classifier_weight,
                               train_only=config.train_only)
  eval_fn = make_eval_fn(graphdef, model_config.max_target_length)
  schedule = learning_rate_schedule(config.optimizer, config.total_steps)
  writer = MetricWriter(workdir)
  rng = jax.random.key(config.seed)

  def evaluate(step: int) -> dict:
    results = evaluate_exits(eval_fn, state.params, eval_batches(), config.eval_batch_size,
                             tokenizer.decode, config.num_eval_samples)
    writer.write(step, {k: v for k, v in results.items() if k.startswith("exit_")}, prefix="eval/")
    _log(f"Validation at step {step}:\n{exit_table(results)}")
    for sample in results["samples"]:
      _log(f"  target {sample['target']!r} | exits 1..L {sample['exits']}")
    return {"step": step, **results}

  # ---------------------------------------------------------------------------------------------
  # Loop.
  # ---------------------------------------------------------------------------------------------
  start = int(state.step)
  bar = tqdm.tqdm(total=config.total_steps, initial=start, disable=not progress, desc="train",
                  dynamic_ncols=True)
  last_time, last_step = time.time(), start
  for step in range(start + 1, config.total_steps + 1):
    batch = next(train_iter)
    for key in ("input_ids", "decoder_input_ids", "targets"):
      if key in batch:
        check_token_ids(batch[key], model_config.vocab_size, key)
    state, metrics = train_step(state, batch, rng)
    bar.update(1)
    if step % config.log_every_steps == 0 or step == config.total_steps:
      metrics = jax.device_get(metrics)
      now = time.time()
      metrics["steps_per_second"] = (step - last_step) / max(now - last_time, 1e-9)
      metrics["learning_rate"] = float(schedule(step - 1))
      last_time, last_step = now, step
      writer.write(step, metrics, prefix="train/")
      bar.set_postfix(loss=f"{metrics['loss']:.3f}",
                      final_acc=f"{metrics['exit_token_accuracy'][-1]:.3f}",
                      steps_s=f"{metrics['steps_per_second']:.2f}")
    checkpointer.save(step, state, train_iter, force=step in (config.total_steps, stop_at_step))
    if step == stop_at_step:
      break
    if step % config.eval_every_steps == 0 and step != config.total_steps:
      evaluate(step)
  bar.close()
  checkpointer.wait()
  checkpointer.close()
  if stop_at_step is not None and int(state.step) == stop_at_step < config.total_steps:
    writer.close()
    return None
  results = evaluate(int(state.step))
  writer.close()
  if config.decode.thresholds:
    examples, answers = pipeline.read_examples(eval_source, preprocess, config.decode.num_examples,
                                               task.answers_key)
    settings = [Setting("static")] + [Setting("deed", threshold=t) for t in config.decode.thresholds]
    runs = decode_settings(merge_model(graphdef, state.params),
                           [pipeline.stack_examples([e]) for e in examples],
                           settings, model_config.max_target_length)
    rows = summarise(runs, task.metric, tokenizer.decode, answers)
    _log(f"Greedy decoding, one example at a time ({len(examples)} validation examples):\n"
         f"{settings_table(rows)}")
    results["decoding"] = rows
  if jax.process_index() == 0:
    with open(os.path.join(workdir, RESULTS_FILE), "w") as f:
      json.dump(results, f, indent=2)
  return results


_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
_STOP_AT_STEP = flags.DEFINE_integer("stop_at_step", None,
                                     "Checkpoint and stop at this step; rerun to resume.")
_INIT_FROM = flags.DEFINE_string("init_from", None,
                                 "Start from this workdir's model (sets config.init_from).")


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO.
  config = _CONFIG.value
  if _INIT_FROM.value is not None:
    with config.unlocked():
      config.init_from = _INIT_FROM.value
  results = train_and_evaluate(config, _WORKDIR.value, stop_at_step=_STOP_AT_STEP.value)
  if results is None:
    print(f"Stopped at step {_STOP_AT_STEP.value}; rerun the same command to resume.")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  jax.config.config_with_absl()
  cli.run(main)
