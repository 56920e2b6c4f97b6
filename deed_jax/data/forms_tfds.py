"""TFDS builders for the embedded forms task, prepared as ArrayRecord (no TensorFlow needed).

`forms_vqa`: image (PNG bytes of the rendered form, question drawn in its header row), question, answer,
and `prompt` (the question in Donut's DocVQA format, for a decoder prompt).
`forms_text`: the same forms written as one line of text (`source`) and the answer (`target`).

Example i of a split is `make_form(split_seed + i, style)`, so splits are reproducible and disjoint.
Builder configs set the size (`tiny` for tests, `base` for the local training run) and the form style
(`base`: plain answers; `base_normalised`: some answers normalised, see `deed_jax.data.forms`), and
whether the question is drawn (`*_prompted`: the header row blank; the question only in `prompt`).
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from deed_jax.data import forms

# size -> {split: number of examples}. `validation` is what training evaluates on; `calibration`
# chooses DEED's threshold (`python -m deed_jax.evaluate --calibrate`) and `test` measures it, so the
# threshold's guarantee is tested on examples it was not chosen on. A guarantee of a small drop needs
# many calibration examples: 0.25 points at delta 0.1 need ~920 without a single loss, and with 5000
# a threshold is certified with up to six losses. (With 1000, the loss counts of a good threshold
# were too few to tell it from a risky one: docs/evaluation.md.)
SIZES = {
  "tiny": {"train": 256, "validation": 64, "calibration": 64, "test": 64},
  "small": {"train": 2048, "validation": 128, "calibration": 128, "test": 128},
  "base": {"train": 20_000, "validation": 500, "calibration": 5000, "test": 1000},
}
# Builder config name -> (size, form style, question in the prompt only): "base" is the plain style,
# "base_normalised" the normalised one (see deed_jax.data.forms), "base_normalised_prompted" the
# latter with the header row blank.
CONFIGS = {
  **{size: (size, "plain", False) for size in SIZES},
  **{f"{size}_normalised": (size, "normalised", False) for size in SIZES},
  **{f"{size}_normalised_prompted": (size, "normalised", True) for size in SIZES},
}
_SPLIT_SEEDS = {
  "train": 1_000_000_000,
  "validation": 2_000_000_000,
  "calibration": 3_000_000_000,
  "test": 4_000_000_000,
}


class _FormsBuilder(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.4.0")
  RELEASE_NOTES = {
    "1.0.0": "First release.",
    "1.1.0": "Calibration and test splits.",
    "1.2.0": "Dates from a fixed range (1970-2025), the same whenever generated.",
    "1.3.0": "5000 calibration examples in `base` (was 1000); other splits unchanged.",
    "1.4.0": "forms_vqa: a `prompt` feature; `*_normalised_prompted` configs (question not drawn).",
  }
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name) for name in CONFIGS]
  DEFAULT_CONFIG_NAME = "base"

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is generated locally.
    size, style, prompted = CONFIGS[self.builder_config.name]
    return {
      split: self._generate_examples(split, count, style, prompted)
      for split, count in SIZES[size].items()
    }

  def _generate_examples(self, split: str, count: int, style: str, prompted: bool):
    for index in range(count):
      form = forms.make_form(_SPLIT_SEEDS[split] + index, style)
      yield index, self._example(form, prompted)

  def _example(self, form: forms.Form, prompted: bool) -> dict:
    raise NotImplementedError


class FormsVqa(_FormsBuilder):
  """Rendered forms; the question is drawn into the image and also stored as text."""

  def _info(self):
    height, width = forms.IMAGE_SIZE
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(height, width, 3), encoding_format="png"),
          "question": tfds.features.Text(),
          "answer": tfds.features.Text(),
          "prompt": tfds.features.Text(),
        }
      ),
      supervised_keys=None,
      description=__doc__,
    )

  def _example(self, form: forms.Form, prompted: bool) -> dict:
    return {
      "image": forms.png_bytes(forms.render_form(form, question_row=not prompted)),
      "question": form.question,
      "answer": form.answer,
      "prompt": forms.prompt_text(form.question),
    }


class FormsText(_FormsBuilder):
  """The same forms as text-to-text examples (their question is always in the text)."""

  BUILDER_CONFIGS = [
    tfds.core.BuilderConfig(name=name) for name, (*_, prompted) in CONFIGS.items() if not prompted
  ]

  def _info(self):
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {"source": tfds.features.Text(), "target": tfds.features.Text()}
      ),
      description=__doc__,
    )

  def _example(self, form: forms.Form, prompted: bool) -> dict:
    del prompted  # never: no prompted config
    return {"source": forms.form_as_text(form), "target": form.answer}


BUILDERS = {"forms_vqa": FormsVqa, "forms_text": FormsText}
