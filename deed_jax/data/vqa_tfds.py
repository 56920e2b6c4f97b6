"""TFDS builders for document / scene-text VQA data a user has on disk (`manual_dir`): DocVQA,
ST-VQA and TextVQA, in the layouts their sites ship today (and the older ones; `vqa_layouts` reads
the files). Nothing is downloaded; the user points `task.manual_dir` at the folder they obtained.

Splits: `train`, `validation`, its halves `calibration` and `test` (cut by document / image, so
`python -m deed_jax.evaluate --calibrate` chooses its exit policy on questions about other pages than
those it reports on), and `test_unlabelled` (the release's test questions, whose answers are not
public). ST-VQA ships no validation file: its validation is cut from the train file by image.

Every example holds `question`, `question_id` (the record's id), `answers` (all of them, in file
order), `answer` (the first: the training target), `group` (the document or image), `prompt` (the
question in Donut's DocVQA task format, which a task with `prompt_key="prompt"` feeds to the decoder)
and `image`, fitted to the model's image size the way its Hugging Face image processor does
(`preprocessor_config.json`): `pad` (Donut: scaled to fit inside, keeping the aspect ratio, then
centred on a black canvas) or `resize` (ViT: stretched to the size). The builder config names both,
e.g. `160x320_pad`; `image_config_name` derives it from a converted workdir. Each builder's
`METRIC` is its leaderboard's (ANLS for DocVQA and ST-VQA, VQA accuracy for TextVQA).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from deed_jax.data import forms, vqa_layouts
from deed_jax.errors import UserError

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


class _VqaBuilder(tfds.core.GeneratorBasedBuilder):
  """Shared by the VQA datasets: their questions (`vqa_layouts.read`) -> splits of examples."""

  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {
    "1.0.0": "First release.",
    "2.0.0": "Current release layouts; `group` feature; calibration/test cut by document/image.",
  }
  BUILDER_CONFIGS = [ImageConfig(name="160x320_pad", height=160, width=320, fit="pad")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = "The layouts are in docs/datasets.md (deed_jax.data.vqa_layouts)."
  METRIC: str  # the leaderboard's metric (deed_jax.evaluation.metrics)

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
          "group": tfds.features.Text(),  # the document or image the question is about
        }
      ),
      description=self.__doc__,
    )

  @classmethod
  def read(cls, manual_dir: str) -> dict[str, list[vqa_layouts.Question]]:
    """Every split's questions; refuses bad layouts, files and image paths. Writes nothing."""
    return vqa_layouts.read(cls.name, manual_dir)

  def _split_generators(self, dl_manager):
    return {
      split: self._generate_examples(questions)
      for split, questions in self.read(str(dl_manager.manual_dir)).items()
    }

  def _generate_examples(self, questions: list[vqa_layouts.Question]):
    config = self.builder_config
    for index, question in enumerate(questions):
      with Image.open(question.image) as image:
        pixels = fit_image(image, config.height, config.width, config.fit)
      yield (
        index,
        {
          "image": forms.png_bytes(pixels),
          "question": question.question,
          "prompt": docvqa_prompt(question.question),
          "answer": question.answers[0] if question.answers else "",
          "answers": list(question.answers),
          "question_id": question.question_id,
          "group": question.group,
        },
      )


class DocVqa(_VqaBuilder):
  """DocVQA (single-page document images; scored with ANLS)."""

  name = "docvqa"
  METRIC = "anls"


class StVqa(_VqaBuilder):
  """ST-VQA, task 3 (scene text; scored with ANLS)."""

  name = "stvqa"
  METRIC = "anls"


class TextVqa(_VqaBuilder):
  """TextVQA 0.5.1 (scene text; scored with VQA accuracy over its 10 answers)."""

  name = "textvqa"
  METRIC = "vqa_accuracy"


BUILDERS = {"docvqa": DocVqa, "stvqa": StVqa, "textvqa": TextVqa}
