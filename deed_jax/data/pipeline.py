"""Input pipeline: a TFDS ArrayRecord data source read by grain into fixed-shape numpy batches.

Batches are global: `config.batch_size` examples per step whatever the topology. Each process reads
only the rows of each global batch its devices hold (`process_rows`), and the training order is a
function of the seed and the step alone (`train_batches`), so a resumed run, or one on another number
of processes or devices, sees exactly the batches an uninterrupted one-device run would have seen.

Batch features (per example; batched along a leading B axis):
  image tasks: pixel_values float32 [H, W, C] in [-1, 1]
  text tasks:  input_ids int32 [S], attention_mask int32 [S]  (the tokenizer's `encode_source`: with
               the special tokens a pretrained model saw around its sources)
  both:        decoder_input_ids int32 [T] = [p_1 .. p_P, y_1 .. y_n, pad...]
               targets           int32 [T] = [p_2 .. p_P, y_1 .. y_n, eos, pad...]
               target_mask       int32 [T] (1 on y_1 .. eos: never on a prompt's tokens)
               prompt_length     int32 []  P
  The decoder prompt p_1 .. p_P is the start token alone (the model's bos_id; P = 1) or, for a task
  with a `prompt_key`, the tokens of the example's prompt text as they are: Donut's
  "<s_docvqa><s_question>...</s_question><s_answer>", whose task token is its start token (as the
  `decoder_input_ids` Donut's processor gives Hugging Face's `generate`). Every exit's loss and the
  exit classifier's targets are masked on the prompt; decoding continues each row after its prompt.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import grain
import jax
import numpy as np

from deed_jax.data import datasets
from deed_jax.data.tokenizer import Tokenizer, get_tokenizer
from deed_jax.errors import UserError
from deed_jax.models.config import IMAGE_ENCODERS


@dataclasses.dataclass(frozen=True)
class TaskFeatures:
  """Which TFDS features feed the encoder and decoder, and the fixed lengths."""

  encoder: str  # "text", or an image encoder ("image", "swin")
  source_key: str  # "image" or e.g. "source"
  target_key: str  # e.g. "answer" or "target"
  max_source_length: int
  max_target_length: int
  prompt_key: str = ""  # the feature holding the decoder prompt's text; "": the start token alone


def _pad(ids: list[int], length: int, pad_id: int) -> np.ndarray:
  out = np.full((length,), pad_id, np.int32)
  out[: len(ids)] = ids
  return out


class Preprocess(grain.transforms.Map):
  """One TFDS example -> fixed-shape numpy features (see the module docstring).

  `decoder_start_id` is the model's first decoder input (ModelConfig.bos_id); it defaults to the
  tokenizer's BOS, but converted models have their own (BART starts with EOS, T5 with pad).
  """

  def __init__(self, task: TaskFeatures, tokenizer: Tokenizer, decoder_start_id: int | None = None):
    self.task = task
    self.tokenizer = tokenizer
    self.decoder_start_id = tokenizer.bos_id if decoder_start_id is None else decoder_start_id
    if self.decoder_start_id is None:
      raise UserError(
        "The tokenizer has no BOS token; give the decoder start id (the model's bos_id)."
      )

  def map(self, example: dict) -> dict:
    task, tok = self.task, self.tokenizer
    features = {}
    if task.encoder in IMAGE_ENCODERS:
      features["pixel_values"] = pixel_values(example[task.source_key])
    else:
      ids = tok.encode_source(_text(example[task.source_key]), task.max_source_length)
      features["input_ids"] = _pad(ids, task.max_source_length, tok.pad_id)
      features["attention_mask"] = _pad([1] * len(ids), task.max_source_length, 0)
    prompt = self.prompt(example)
    length = task.max_target_length
    answer = tok.encode(_text(example[task.target_key]))[: length - len(prompt)]
    features["decoder_input_ids"] = _pad(prompt + answer, length, tok.pad_id)
    features["targets"] = _pad(prompt[1:] + answer + [tok.eos_id], length, tok.pad_id)
    features["target_mask"] = _pad([0] * (len(prompt) - 1) + [1] * (len(answer) + 1), length, 0)
    features["prompt_length"] = np.int32(len(prompt))
    return features

  def prompt(self, example: dict) -> list[int]:
    """The decoder prompt's tokens (the start token first); refused when it leaves no room for an
    answer in the decoder's `max_target_length` positions."""
    if not self.task.prompt_key:
      return [self.decoder_start_id]
    text = _text(example[self.task.prompt_key])
    prompt = self.tokenizer.encode(text)
    if not 1 <= len(prompt) < self.task.max_target_length:
      raise UserError(
        f"The prompt {text!r:.120} has {len(prompt)} tokens; a prompt needs 1 to "
        f"max_target_length - 1 = {self.task.max_target_length - 1} (the rest is the answer's)."
      )
    return prompt


def task_preprocess(task, model_config, tokenizer: Tokenizer) -> Preprocess:
  """A config's `task` block and model config -> the Preprocess of its examples (training and
  evaluation read examples alike)."""
  features = TaskFeatures(
    encoder=model_config.encoder,
    source_key=task.source_key,
    target_key=task.target_key,
    max_source_length=task.max_source_length,
    max_target_length=model_config.max_target_length,
    prompt_key=task.get("prompt_key", ""),
  )
  return Preprocess(features, tokenizer, decoder_start_id=model_config.bos_id)


def task_tokenizer(task) -> Tokenizer:
  """A config's `task` block -> its tokenizer, with the task's added tokens."""
  return get_tokenizer(task.tokenizer, tuple(task.get("added_tokens", ())))


def pixel_values(image: np.ndarray) -> np.ndarray:
  """uint8 pixels [H, W, C] -> float32 in [-1, 1] (Donut's and ViT's normalisation, mean = std = 0.5)."""
  return image.astype(np.float32) / 127.5 - 1.0


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def data_source(name: str, config: str, split: str, data_dir: str, manual_dir: str = ""):
  """The prepared split as a random-access source (`as_data_source` of its TFDS builder)."""
  return datasets.builder(name, config, data_dir, manual_dir).as_data_source(split=split)


def answers(example: dict, key: str) -> list[str]:
  """The reference answers of a raw example: the strings under `key` (one text, or a sequence)."""
  value = example[key]
  if isinstance(value, (bytes, str)):
    return [_text(value)]
  return [_text(v) for v in np.asarray(value).reshape(-1)]


def process_rows(sharding: jax.sharding.Sharding, global_batch_size: int) -> tuple[int, int]:
  """The rows [start, stop) of every global batch that this process's devices hold under `sharding`
  (a batch sharding over the leading axis). Processes whose devices hold the same rows read the same
  examples; a process never reads rows it does not hold."""
  spans = {
    (index[0].start or 0, global_batch_size if index[0].stop is None else index[0].stop)
    for index in sharding.addressable_devices_indices_map((global_batch_size,)).values()
  }
  start, stop = min(a for a, _ in spans), max(b for _, b in spans)
  if sum(b - a for a, b in spans) != stop - start:  # holes: not one contiguous run of rows
    raise ValueError(
      f"This process's devices hold rows {sorted(spans)} of each batch, not one "
      "contiguous run; order the mesh's devices by process."
    )
  return start, stop


def train_batches(
  source,
  preprocess: Preprocess,
  global_batch_size: int,
  rows: tuple[int, int],
  *,
  seed: int,
  first_step: int = 1,
) -> Iterator[dict]:
  """This process's `rows` of the global training batches of steps `first_step`, `first_step` + 1, ...

  The example at row r of step s is the (s - 1) * B + r-th of an endless stream that reshuffles
  `source` every epoch (grain's index shuffle, seeded by `seed` and the epoch). It depends on the seed,
  the step and the global batch size B alone, so any number of processes and devices train on the
  same examples in the same steps, and a resumed run continues at its step without saved reader state.
  """
  if global_batch_size < 1:
    raise ValueError(f"global_batch_size={global_batch_size} must be >= 1.")
  stream = grain.MapDataset.source(source).seed(seed).shuffle().repeat()
  start, stop = rows
  local = stop - start

  def example(j: int):  # the j-th example this process reads
    step, row = divmod(j, local)
    return stream[step * global_batch_size + start + row]

  first = (first_step - 1) * local
  local_examples = grain.MapDataset.range(first, sys.maxsize).map(example).map(preprocess)
  return iter(local_examples.batch(local).to_iter_dataset())


def eval_batches(
  source, preprocess: Preprocess, global_batch_size: int, rows: tuple[int, int]
) -> Iterator[dict]:
  """One pass over `source` in order: this process's `rows` of each global batch of B examples. The
  last batch is filled up with copies of the last example, marked `valid` = 0 (int32 [rows])."""
  size = len(source)
  start, stop = rows
  local = stop - start
  num_batches = -(-size // global_batch_size)

  def example(j: int):
    batch, row = divmod(j, local)
    index = batch * global_batch_size + start + row
    return {**preprocess.map(source[min(index, size - 1)]), "valid": np.int32(index < size)}

  local_examples = grain.MapDataset.range(num_batches * local).map(example)
  return iter(local_examples.batch(local).to_iter_dataset())


def stack_examples(examples: Sequence[dict]) -> dict:
  """Per-example feature dicts (no batch axis) -> one batch."""
  return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}


def pad_rows(batch: dict, size: int) -> dict:
  """`batch` with its last row repeated up to `size` rows (a short last batch keeps the shapes a
  jitted function was compiled for)."""
  rows = len(next(iter(batch.values())))
  if rows >= size:
    return batch
  return {
    k: np.concatenate([np.asarray(v), np.repeat(np.asarray(v)[-1:], size - rows, axis=0)])
    for k, v in batch.items()
  }


class EvalExamples(NamedTuple):
  examples: list[dict]  # preprocessed, no batch axis
  answers: list[list[str]]  # each example's reference answers
  groups: list[str]  # each example's document / image ("group" feature), else its index


def read_examples(
  source, preprocess: Preprocess, count: int, answers_key: str = ""
) -> EvalExamples:
  """The first `count` examples of `source` (0: all) in order, preprocessed, with each one's
  reference answers (the strings under `answers_key`; "" = its target text) and group. For
  evaluation, where the metric needs every answer an example has, not only the trained target, and
  calibration treats the questions about one document as one draw."""
  count = len(source) if count == 0 else min(count, len(source))
  raw = [source[i] for i in range(count)]
  key = answers_key or preprocess.task.target_key
  return EvalExamples(
    [preprocess.map(example) for example in raw],
    [answers(example, key) for example in raw],
    [_text(e["group"]) if "group" in e else str(i) for i, e in enumerate(raw)],
  )
