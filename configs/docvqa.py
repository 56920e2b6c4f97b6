r"""Donut on DocVQA, the paper's headline setting: the decoder is prompted
"<s_docvqa><s_question>{question}</s_question><s_answer>" and writes the answer after it; scored by
ANLS against every answer of a question. The argument is a converted Donut workdir (its weights, its
tokenizer with the DocVQA task tokens, its image preprocessing); the DocVQA files are on disk
(`--config.task.manual_dir`, layout in docs/datasets.md).

  python -m deed_jax.convert --source path/to/donut-base-finetuned-docvqa --workdir workdirs/donut
  python -m deed_jax.evaluate --workdir workdirs/donut --config configs/docvqa.py:workdirs/donut \
      --config.task.manual_dir=/data/DocVQA --calibrate
  python -m deed_jax.train --config configs/docvqa.py:workdirs/donut --workdir workdirs/donut_ft \
      --config.task.manual_dir=/data/DocVQA           # fine-tune its exits with deep supervision

Training targets are the answer then EOS (Donut's own fine-tuning ends answers with </s_answer>
first; a converted Donut-DocVQA model still writes it, and decoding to text skips it, as it skips every
task token).
"""

import ml_collections

from deed_jax.config_defaults import training_defaults
from deed_jax.data import vqa_tfds


def get_config(arg: str = ""):
  if not arg:
    raise ValueError(
      "configs/docvqa.py needs the converted Donut workdir: configs/docvqa.py:<dir>."
    )
  config = training_defaults()
  config.init_from = arg
  config.model = ml_collections.ConfigDict()  # the architecture is the workdir's
  config.task.update(
    dict(
      dataset="docvqa",
      dataset_config="",  # the model's image size, fitted as its preprocessor_config.json says
      tokenizer=arg,
      added_tokens=vqa_tfds.DOCVQA_TASK_TOKENS,  # ids the tokenizer.json already holds are kept
      source_key="image",
      target_key="answer",
      answers_key="answers",
      prompt_key="prompt",
      metric="anls",
    )
  )
  config.batch_size = 8
  config.total_steps = 10_000
  return config
