"""Every TFDS builder a task config may name, and getting one ready: the embedded forms tasks
(generated here) and the VQA builders over data a user has on disk (`task.manual_dir`)."""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from deed_jax.data import forms_tfds, vqa_tfds
from deed_jax.errors import MissingPathError, UserError

BUILDERS = {**forms_tfds.BUILDERS, **vqa_tfds.BUILDERS}


def check(name: str, config: str, manual_dir: str = "") -> None:
  """Refuse, naming the value, a dataset, config or manual_dir that cannot work (the files in a
  manual_dir are read by `prepare`, when it builds the dataset). Writes nothing."""
  if name not in BUILDERS:
    raise UserError(f"Unknown dataset {name!r}; datasets: {sorted(BUILDERS)}.")
  if name in forms_tfds.BUILDERS:
    if config not in forms_tfds.CONFIGS:
      raise UserError(
        f"Unknown config {config!r} of {name}; configs: {sorted(forms_tfds.CONFIGS)}."
      )
    return
  if config:  # "" is resolved from the model (resolve_config)
    vqa_tfds.image_config(config)
  if not manual_dir:
    raise UserError(
      f"Dataset {name!r} is built from files you have: set task.manual_dir to their "
      "folder (the layout is in docs/datasets.md)."
    )
  if not os.path.isdir(manual_dir) or not os.listdir(manual_dir):
    raise MissingPathError(
      f"task.manual_dir={manual_dir!r} is not a directory holding the {name} "
      "files (it is missing or empty)."
    )


def scoring(name: str) -> tuple[str, str]:
  """(metric, answers feature) a dataset is scored with unless its task config says otherwise: a VQA
  builder's leaderboard metric against every answer of a question; the forms tasks' exact match
  against the target (answers feature "": the target text)."""
  if name in vqa_tfds.BUILDERS:
    return vqa_tfds.BUILDERS[name].METRIC, "answers"
  return "exact_match", ""


def resolve_config(name: str, config: str, model_dir: str, image_size: tuple[int, int]) -> str:
  """The builder config to use: `config`, or for a VQA builder left at "" the model's image size,
  fitted as the `preprocessor_config.json` in `model_dir` says (a converted Donut or ViT model)."""
  if config or name not in vqa_tfds.BUILDERS:
    return config
  return vqa_tfds.image_config_name(model_dir, image_size)


def builder(
  name: str, config: str, data_dir: str, manual_dir: str = ""
) -> tfds.core.DatasetBuilder:
  """The builder of `name`/`config` over `data_dir` (checked first; prepares nothing)."""
  check(name, config, manual_dir)
  if name in forms_tfds.BUILDERS:
    return forms_tfds.BUILDERS[name](config=config, data_dir=data_dir, file_format="array_record")
  return vqa_tfds.BUILDERS[name](
    config=vqa_tfds.image_config(config), data_dir=data_dir, file_format="array_record"
  )


def prepare(
  name: str, config: str, data_dir: str, manual_dir: str = ""
) -> tfds.core.DatasetBuilder:
  """The builder, its data generated (forms) or read from `manual_dir` (VQA) into `data_dir` unless
  it is already there (idempotent)."""
  ready = builder(name, config, data_dir, manual_dir)
  if name in vqa_tfds.BUILDERS and not ready.is_prepared():
    # Every question file and image checked before TFDS writes anything (once: not on later runs).
    vqa_tfds.BUILDERS[name].read(manual_dir)
  tfds.disable_progress_bar()
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir or None)
  ready.download_and_prepare(download_config=download_config)
  return ready
