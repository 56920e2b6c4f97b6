"""A training config's `task` block: what is learnt and how it is scored (dataset, tokenizer,
features, metric), its defaults and its validation. The evaluator reads it too, from the config a
workdir was trained with."""

from __future__ import annotations

import ml_collections

from deed_jax.data import datasets
from deed_jax.errors import UserError
from deed_jax.evaluation import metrics


def task_defaults() -> ml_collections.ConfigDict:
  """What is learnt and how it is scored: dataset, tokenizer, features, metric."""
  return ml_collections.ConfigDict(
    dict(
      # A TFDS builder of deed_jax.data.datasets: an embedded forms task (forms_vqa, forms_text) or
      # one over VQA files on disk (docvqa, stvqa, textvqa: they need manual_dir).
      dataset="forms_vqa",
      # Its config. Forms: size tiny | small | base, plain or with "_normalised". VQA builders: the
      # image size and fit, "<height>x<width>_pad|resize" (deed_jax.data.vqa_tfds).
      dataset_config="base",
      data_dir="",  # TFDS data dir; "" = TFDS's default (~/tensorflow_datasets).
      manual_dir="",  # The folder holding a VQA dataset's own files (docvqa, stvqa).
      tokenizer="byte",  # "byte", or a local tokenizer.json / sentencepiece .model.
      source_key="image",
      target_key="answer",
      max_source_length=0,  # Text encoders: input length in tokens.
      # The metric deed_jax.evaluate scores decoded strings with (deed_jax.evaluation.metrics):
      # exact_match | anls | vqa_accuracy | cer | bleu; "" = the dataset's leaderboard metric (DocVQA,
      # ST-VQA: anls; TextVQA: vqa_accuracy; forms: exact_match).
      metric="",
      # The feature holding the reference answers the metric compares with; "" = the dataset's: every
      # answer of a question for the VQA builders ("answers"), the target text for the forms tasks.
      # "answer" scores a VQA question against its first answer alone.
      answers_key="",
      # The feature holding each example's decoder prompt text (Donut's task format; the VQA builders'
      # and forms_vqa's "prompt"); "" = the decoder starts from the start token alone.
      prompt_key="",
      # Tokens the task adds to the tokenizer (Donut's task tokens), appended after its vocabulary.
      added_tokens=(),
    )
  )


def validate_task(task: ml_collections.ConfigDict) -> None:
  """Check a config's task block: its dataset (and manual_dir) and metric. Writes nothing."""
  unknown = sorted(set(task.keys()) - set(task_defaults().keys()))
  if unknown:
    raise UserError(
      f"Unknown config option(s) config.task.{unknown}; known: {sorted(task_defaults().keys())}."
    )
  datasets.check(task.dataset, task.dataset_config, task.get("manual_dir", ""))
  if task.metric:
    metrics.check_metric(task.metric, "config.task.metric")


def scoring(task: ml_collections.ConfigDict) -> tuple[str, str]:
  """(metric, answers feature) the task is scored with: its own, else its dataset's."""
  metric, answers_key = datasets.scoring(task.dataset)
  return task.get("metric") or metric, task.get("answers_key") or answers_key
