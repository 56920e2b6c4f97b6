"""A split as the evaluator reads it (examples in order, each one's answers and document / image, the
task's metric and tokenizer), and the per-example quality of a decoding setting on it: what the
evaluator's report, calibration and the benchmarks that reuse a task's data all decode."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np
import tqdm

from deed_jax.data import datasets, pipeline
from deed_jax.decoding.config import CONSTRAINT_FIELDS
from deed_jax.errors import UserError
from deed_jax.evaluation import metrics
from deed_jax.evaluation.sweep import Setting, SettingRun, decode_settings, per_example_scores
from deed_jax.models import ModelConfig
from deed_jax.task_config import scoring
from deed_jax.workdir import workdir_decode_config


class Split:
  """A split as the evaluator reads it: examples in order, each one's answers, the tokenizer."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    model_config: ModelConfig,
    split: str,
    num_examples: int,
    workdir: str,
  ):
    task = config.task
    data_dir = os.path.expanduser(task.data_dir or "~/tensorflow_datasets")
    dataset_config = datasets.resolve_config(
      task.dataset, task.dataset_config, workdir, model_config.image_size
    )
    builder = datasets.prepare(task.dataset, dataset_config, data_dir, task.manual_dir)
    if split not in builder.info.splits:
      raise UserError(
        f"Split {split!r} is not in {task.dataset}/{dataset_config}; it has "
        f"{sorted(builder.info.splits)}."
      )
    self.tokenizer = pipeline.task_tokenizer(task)
    preprocess = pipeline.task_preprocess(task, model_config, self.tokenizer)
    self.name = split
    self.dataset = f"{task.dataset}/{dataset_config}"
    self.metric, answers_key = scoring(task)
    self.examples, self.answers, self.groups = pipeline.read_examples(
      builder.as_data_source(split=split), preprocess, num_examples, answers_key
    )
    unlabelled = sum(not any(a.strip() for a in answers) for answers in self.answers)
    if unlabelled:
      raise UserError(
        f"Split {split!r} of {task.dataset} holds {unlabelled} of {len(self.answers)} examples "
        f"without answers under {answers_key or task.target_key!r}: an unlabelled split cannot be "
        "scored or calibrated on (use calibration or test)."
      )
    # Every batch's prompts are laid out at the split's longest (one compiled program), and leave the
    # decoder max_target_length - prompt_width + 1 new tokens.
    self.prompt_width = max((int(e["prompt_length"]) for e in self.examples), default=1)
    self.max_new_tokens = model_config.max_target_length - self.prompt_width + 1
    # A converted model's own generation constraints (n-gram blocking, bad words, forced ids, ...),
    # for every setting alike.
    generation = workdir_decode_config(workdir, self.prompt_width, max_new_tokens=1)
    self.constraints = {k: getattr(generation, k) for k in CONSTRAINT_FIELDS}

  def subset(self, indices: Sequence[int], name: str) -> Split:
    """The examples at `indices` (in that order), as a split called `name`; the prompt width (one
    compiled program) and everything else stay the whole split's."""
    part = copy.copy(self)
    part.name = name
    part.examples = [self.examples[i] for i in indices]
    part.answers = [self.answers[i] for i in indices]
    part.groups = [self.groups[i] for i in indices]
    return part

  def batches(self, size: int) -> list[dict]:
    return [
      pipeline.stack_examples(self.examples[i : i + size])
      for i in range(0, len(self.examples), size)
    ]


def progress_bar(total: int, desc: str, progress: bool):
  return tqdm.tqdm(total=total, desc=desc, unit="decode", disable=not progress, dynamic_ncols=True)


def check_per_example_metric(metric: str) -> None:
  """Calibration scores examples one by one; a corpus metric (BLEU) has no per-example value."""
  if metric in metrics.CORPUS_METRICS:
    raise UserError(
      f"Calibration needs a per-example metric; {metric!r} is scored over a corpus "
      f"(use one of {sorted(metrics.METRICS)})."
    )


def split_quality(
  model,
  split: Split,
  setting: Setting,
  confidence: str,
  batch_size: int,
  progress: Callable[[int], None] | None = None,
) -> np.ndarray:
  """Per-example quality [n] in [0, 1], higher is better, of `setting` on `split` (decoded untimed)."""
  (run,) = decode_settings(
    model,
    split.batches(batch_size),
    [setting],
    split.max_new_tokens,
    confidence=confidence,
    timing=False,
    progress=progress,
    prompt_width=split.prompt_width,
    constraints=split.constraints,
  )
  return run_quality(run, split)


def run_quality(run: SettingRun, split: Split) -> np.ndarray:
  """Per-example quality [n] in [0, 1], higher is better, of a run decoded on `split`."""
  scores = per_example_scores(run, split.metric, split.tokenizer.decode, split.answers)
  return quality(scores, split.metric)


def quality(values: np.ndarray, metric: str) -> np.ndarray:
  """Per-example values as a score in [0, 1] where higher is better (CER is an error rate)."""
  return 1.0 - np.clip(values, 0.0, 1.0) if metric in metrics.LOWER_IS_BETTER else values


def loss_words(metric: str) -> str:
  """What calibration bounds, in words (an error rate enters clipped at 1 per example)."""
  if metric in metrics.LOWER_IS_BETTER:
    return f"the rise in {metric} (each example's {metric} clipped at 1)"
  return f"the drop in {metric}"
