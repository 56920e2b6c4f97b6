"""Input pipeline: a TFDS ArrayRecord data source read by grain into fixed-shape numpy batches.

Deterministic (fixed seeds), sharded per JAX process, and checkpointable (the grain iterator's state is
saved beside the train state, so a resumed run sees exactly the batches it would have seen).

Batch features (per example; batched along a leading B axis):
  image tasks: pixel_values float32 [H, W, C] in [-1, 1]
  text tasks:  input_ids int32 [S], attention_mask int32 [S]  (the tokenizer's `encode_source`: with
               the special tokens a pretrained model saw around its sources)
  both:        decoder_input_ids int32 [T] = [start, y_1 .. y_n, pad...]  (start: the model's bos_id)
               targets           int32 [T] = [y_1 .. y_n, eos, pad...]
               target_mask       int32 [T] (1 on y_1 .. eos)
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import grain
import jax
import numpy as np

from deed_jax.data import datasets
from deed_jax.data.tokenizer import Tokenizer
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


def _pad(ids: list[int], length: int, pad_id: int) -> np.ndarray:
  out = np.full((length,), pad_id, np.int32)
  out[:len(ids)] = ids
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
      raise UserError("The tokenizer has no BOS token; give the decoder start id (the model's bos_id).")

  def map(self, example: dict) -> dict:
    task, tok = self.task, self.tokenizer
    features = {}
    if task.encoder in IMAGE_ENCODERS:
      features["pixel_values"] = example[task.source_key].astype(np.float32) / 127.5 - 1.0
    else:
      ids = tok.encode_source(_text(example[task.source_key]), task.max_source_length)
      features["input_ids"] = _pad(ids, task.max_source_length, tok.pad_id)
      features["attention_mask"] = _pad([1] * len(ids), task.max_source_length, 0)
    answer = tok.encode(_text(example[task.target_key]))[:task.max_target_length - 1]
    features["decoder_input_ids"] = _pad([self.decoder_start_id] + answer, task.max_target_length, tok.pad_id)
    features["targets"] = _pad(answer + [tok.eos_id], task.max_target_length, tok.pad_id)
    features["target_mask"] = _pad([1] * (len(answer) + 1), task.max_target_length, 0)
    return features


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


def make_loader(source, preprocess: Preprocess, batch_size: int, *, shuffle: bool, seed: int,
                num_epochs: int | None, drop_remainder: bool) -> grain.DataLoader:
  """A grain loader over this process's shard of `source`."""
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be >= 1.")
  shard = grain.sharding.ShardOptions(shard_index=jax.process_index(),
                                      shard_count=jax.process_count(), drop_remainder=True)
  sampler = grain.samplers.IndexSampler(num_records=len(source), shard_options=shard, shuffle=shuffle,
                                        num_epochs=num_epochs, seed=seed)
  return grain.DataLoader(data_source=source, sampler=sampler, worker_count=0,
                          operations=[preprocess, grain.transforms.Batch(batch_size, drop_remainder)])


def stack_examples(examples: Sequence[dict]) -> dict:
  """Per-example feature dicts (no batch axis) -> one batch."""
  return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}


def pad_rows(batch: dict, size: int) -> dict:
  """`batch` with its last row repeated up to `size` rows (a short last batch keeps the shapes a
  jitted function was compiled for)."""
  rows = len(next(iter(batch.values())))
  if rows >= size:
    return batch
  return {k: np.concatenate([np.asarray(v), np.repeat(np.asarray(v)[-1:], size - rows, axis=0)])
          for k, v in batch.items()}


def read_examples(source, preprocess: Preprocess, count: int, answers_key: str = ""
                  ) -> tuple[list[dict], list[list[str]]]:
  """The first `count` examples of `source` (0: all) in order, preprocessed (no batch axis), and each
  one's reference answers (the strings under `answers_key`; "" = its target text). For evaluation,
  where the metric needs every answer an example has, not only the trained target."""
  count = len(source) if count == 0 else min(count, len(source))
  raw = [source[i] for i in range(count)]
  key = answers_key or preprocess.task.target_key
  return [preprocess.map(example) for example in raw], [answers(example, key) for example in raw]
