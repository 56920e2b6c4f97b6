"""TFDS builders for document / scene-text VQA data a user has on disk (`manual_dir`): DocVQA, and
ST-VQA / TextVQA style question files. Nothing is downloaded; the user points `task.manual_dir` at
the folder they obtained from the dataset's site.

Expected layouts (docs/datasets.md):

  docvqa:   <manual_dir>/train/train_v1.0.json, <manual_dir>/train/documents/*.png
            <manual_dir>/val/val_v1.0.json,     <manual_dir>/val/documents/*.png
            <manual_dir>/test/test_v1.0.json,   <manual_dir>/test/documents/*.png (optional)
            each JSON {"data": [{"questionId", "question", "image": "documents/x.png", "answers": [..]}]}
            (DocVQA's own release); `image` is relative to the JSON's folder.
  stvqa:    <manual_dir>/train.json, <manual_dir>/val.json, <manual_dir>/test.json (any present)
            each {"data": [{"question", "answers": [..], "file_path": "imgs/x.jpg"}]} (ST-VQA) or
            {"data": [{"question", "answers": [..], "image_id": "abc"}]} with images
            <manual_dir>/images/<image_id>.jpg (TextVQA); paths relative to <manual_dir>.

Splits: train and validation from the files, and the validation file's examples also split in two
halves, `calibration` and `test`, so `python -m deed_jax.evaluate --calibrate` chooses a threshold on
examples other than those it reports on (DocVQA's own test answers are not public; its test file,
when present, is the split `test_unlabelled`). Examples without answers are skipped in labelled splits.

Images are fitted to the model's image size the way its Hugging Face image processor does
(`preprocessor_config.json`): `pad` (Donut: scaled to fit inside, keeping the aspect ratio, then
centred on a black canvas) or `resize` (ViT: stretched to the size). The builder config names both,
e.g. `160x320_pad`; `image_config_name` derives it from a converted workdir. The question is a text
feature (`question`), and `prompt` holds it in Donut's DocVQA task format, which a task with
`prompt_key="prompt"` (configs/docvqa.py) feeds to the decoder in training and evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from deed_jax.data import forms
from deed_jax.errors import MissingPathError, UserError

# Donut's DocVQA task tokens (added to the tokenizer by its processor; a converted Donut-DocVQA
# checkpoint's tokenizer.json holds them), and its prompt: the decoder writes the answer after it.
DOCVQA_TASK_TOKENS = ("<s_docvqa>", "<s_question>", "</s_question>", "<s_answer>", "</s_answer>")


def docvqa_prompt(question: str) -> str:
  return f"<s_docvqa><s_question>{question}</s_question><s_answer>"


_CONFIG_NAME = re.compile(r"^(\d+)x(\d+)_(pad|resize)$")


@dataclasses.dataclass(eq=False)
class ImageConfig(tfds.core.BuilderConfig):
  """A builder config: the image size [height, width] and how images are fitted to it."""

  height: int = 0
  width: int = 0
  fit: str = "pad"  # pad | resize


def image_config(name: str) -> ImageConfig:
  """`<height>x<width>_<pad|resize>` -> its builder config; refuses anything else, naming it."""
  match = _CONFIG_NAME.match(name or "")
  if not match:
    raise UserError(
      f"Dataset config {name!r} of a VQA builder must be '<height>x<width>_pad' or "
      "'<height>x<width>_resize' (e.g. '160x320_pad'; see image_config_name)."
    )
  height, width, fit = int(match[1]), int(match[2]), match[3]
  if not (8 <= height <= 8192 and 8 <= width <= 8192):
    raise UserError(f"Dataset config {name!r}: the image size must be 8..8192 pixels per side.")
  return ImageConfig(name=name, height=height, width=width, fit=fit)


def image_config_name(workdir: str, image_size: int | tuple[int, int]) -> str:
  """The builder config a model needs: its image size (an int: square), fitted as its
  `preprocessor_config.json` says (do_pad -> pad, else resize; no such file -> pad)."""
  if isinstance(image_size, int):
    image_size = (image_size, image_size)
  path = os.path.join(workdir, "preprocessor_config.json")
  fit = "pad"
  if os.path.isfile(path):
    with open(path) as f:
      settings = json.load(f)
    fit = "pad" if settings.get("do_pad", settings.get("do_thumbnail", False)) else "resize"
  return f"{image_size[0]}x{image_size[1]}_{fit}"


def fit_image(image: Image.Image, height: int, width: int, fit: str) -> np.ndarray:
  """An RGB image fitted to [height, width, 3] uint8 (see the module docstring)."""
  image = image.convert("RGB")
  if fit == "resize":
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
  scale = min(height / image.height, width / image.width)
  size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
  resized = image.resize(size, Image.Resampling.BILINEAR)
  canvas = Image.new("RGB", (width, height))
  canvas.paste(resized, ((width - size[0]) // 2, (height - size[1]) // 2))
  return np.asarray(canvas)


def _read_questions(path: str) -> list[dict]:
  """The `data` list of a question file; refuses a file that is not one, naming it."""
  try:
    with open(path) as f:
      content = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f"{path} is not a readable JSON question file: {e}") from None
  data = content.get("data") if isinstance(content, dict) else None
  if not isinstance(data, list) or not all(isinstance(d, dict) and "question" in d for d in data):
    raise UserError(f'{path} must hold {{"data": [{{"question": ..., "answers": [...], ...}}]}}.')
  return data


def _record_name(entry: dict, index: int) -> str:
  """How an error names a question: its id where the file gives one, else its place in the file."""
  for key in ("questionId", "question_id"):
    if key in entry:
      return f"question {key}={entry[key]!r}"
  return f"question #{index} of the file"


def _check_inside(manual_dir: str, image: str, record: str) -> None:
  """An image path may not leave `manual_dir`, by `..`, an absolute path or a symlink: refused,
  naming the record, before any image is opened."""
  root = os.path.realpath(manual_dir)
  resolved = os.path.realpath(image)
  if os.path.commonpath([root, resolved]) != root:
    raise UserError(
      f"{record} names image {image!r}, which resolves to {resolved}, outside manual_dir {root}; "
      "images must lie inside manual_dir."
    )


class _VqaBuilder(tfds.core.GeneratorBasedBuilder):
  """Shared by both layouts: question files -> splits; each entry -> an example."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [ImageConfig(name="160x320_pad", height=160, width=320, fit="pad")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "See the module docstring of deed_jax.data.vqa_tfds for the layout."
  )

  def _info(self):
    config = self.builder_config
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(
            shape=(config.height, config.width, 3), encoding_format="png"
          ),
          "question": tfds.features.Text(),
          "prompt": tfds.features.Text(),
          "answer": tfds.features.Text(),  # the first answer: the training target
          "answers": tfds.features.Sequence(tfds.features.Text()),
          "question_id": tfds.features.Text(),
        }
      ),
      description=self.__doc__,
    )

  expected: str  # the layout, in words, for error messages
  question_paths: dict[str, tuple[str, ...]]  # file split -> the question file's path in manual_dir

  @classmethod
  def question_files(cls, manual_dir: str) -> dict[str, str]:
    """{file split: path} of the question files present."""
    paths = {split: os.path.join(manual_dir, *parts) for split, parts in cls.question_paths.items()}
    return {split: path for split, path in paths.items() if os.path.isfile(path)}

  @classmethod
  def image_path(cls, manual_dir: str, question_file: str, entry: dict) -> str:
    raise NotImplementedError

  @classmethod
  def read(cls, manual_dir: str) -> dict[str, tuple[str, list[dict]]]:
    """{file split: (question file, its usable entries)}; refuses, naming the file, a folder without
    question files, a malformed one, or a missing image. Writes nothing."""
    files = cls.question_files(manual_dir)
    if "train" not in files and "validation" not in files:
      raise UserError(
        f"manual_dir {manual_dir} holds no question files of the {cls.name} layout "
        f"(expected {cls.expected}); see docs/datasets.md."
      )
    out = {}
    for split, path in files.items():
      entries = _read_questions(path)
      if split != "test_unlabelled":
        entries = [e for e in entries if e.get("answers")]
        if not entries:
          raise UserError(f"{path} holds no question with answers.")
      for index, entry in enumerate(entries):
        image = cls.image_path(manual_dir, path, entry)
        _check_inside(manual_dir, image, f"{path}, {_record_name(entry, index)}")
        if not os.path.isfile(image):
          raise MissingPathError(f"{path} names image {image}, which is not there.")
      out[split] = (path, entries)
    return out

  def _split_generators(self, dl_manager):
    manual_dir = str(dl_manager.manual_dir)
    splits = {}
    for split, (path, entries) in self.read(manual_dir).items():
      labelled = split != "test_unlabelled"
      if split == "validation":
        half = len(entries) // 2
        splits["calibration"] = self._generate_examples(manual_dir, path, entries[:half], labelled)
        splits["test"] = self._generate_examples(manual_dir, path, entries[half:], labelled)
      splits[split] = self._generate_examples(manual_dir, path, entries, labelled)
    return splits

  def _generate_examples(
    self, manual_dir: str, question_file: str, entries: list[dict], labelled: bool
  ):
    config = self.builder_config
    for index, entry in enumerate(entries):
      path = self.image_path(manual_dir, question_file, entry)
      answers = [str(a) for a in entry.get("answers") or []] if labelled else []
      with Image.open(path) as image:
        pixels = fit_image(image, config.height, config.width, config.fit)
      question = str(entry["question"])
      yield (
        index,
        {
          "image": forms.png_bytes(pixels),
          "question": question,
          "prompt": docvqa_prompt(question),
          "answer": answers[0] if answers else "",
          "answers": answers,
          "question_id": str(entry.get("questionId", entry.get("question_id", index))),
        },
      )


class DocVqa(_VqaBuilder):
  """DocVQA (document images; answers scored with ANLS)."""

  name = "docvqa"
  expected = "train/train_v1.0.json and/or val/val_v1.0.json, images under <split>/documents/"
  question_paths = {
    "train": ("train", "train_v1.0.json"),
    "validation": ("val", "val_v1.0.json"),
    "test_unlabelled": ("test", "test_v1.0.json"),
  }

  @classmethod
  def image_path(cls, manual_dir, question_file, entry):
    return os.path.join(os.path.dirname(question_file), str(entry.get("image", "")))


class StVqa(_VqaBuilder):
  """ST-VQA / TextVQA style scene-text VQA (answers scored with ANLS or VQA accuracy)."""

  name = "stvqa"
  expected = (
    "train.json and/or val.json (and test.json), images by file_path or images/<image_id>.jpg"
  )
  question_paths = {
    "train": ("train.json",),
    "validation": ("val.json",),
    "test_unlabelled": ("test.json",),
  }

  @classmethod
  def image_path(cls, manual_dir, question_file, entry):
    if "file_path" in entry:
      return os.path.join(manual_dir, str(entry["file_path"]))
    return os.path.join(manual_dir, "images", f"{entry.get('image_id', '')}.jpg")


BUILDERS = {"docvqa": DocVqa, "stvqa": StVqa}
