r"""Forms as text: the same question and fields written on one line (text encoder, byte decoder).

Small and fast: the task the tests train on.

  python -m deed_jax.train --config configs/forms_text.py --workdir workdirs/forms_text
  python -m deed_jax.train --config configs/forms_text.py:runlocal --workdir workdirs/forms_text_local
"""

from deed_jax.config_defaults import training_defaults
from deed_jax.data import forms

# "? label | label  : value | ..." is at most 9 + 4 * (3 + 21) = 105 bytes.
MAX_SOURCE_LENGTH = 2 + 7 + forms.FIELDS_PER_FORM * (3 + forms.COLUMNS)


def get_config(arg: str = ""):
  runlocal = arg == "runlocal"  # The CPU-sized run: a smaller model and data set, fewer steps.
  config = training_defaults()
  config.task.dataset = "forms_text"
  config.task.dataset_config = "small" if runlocal else "base"
  config.task.source_key = "source"
  config.task.target_key = "target"
  config.task.max_source_length = MAX_SOURCE_LENGTH
  config.model.update(
    dict(
      vocab_size=259,
      d_model=64 if runlocal else 256,
      num_heads=4 if runlocal else 8,
      d_ff=128 if runlocal else 1024,
      encoder_layers=2 if runlocal else 4,
      decoder_layers=3 if runlocal else 6,
      max_target_length=forms.MAX_VALUE_LENGTH + 1,
      max_source_length=MAX_SOURCE_LENGTH,
      encoder="text",
      adapter="bottleneck",
      adapter_dim=16 if runlocal else 64,
    )
  )
  config.total_steps = 300 if runlocal else 10_000
  if runlocal:
    config.update(dict(log_every_steps=25, eval_every_steps=300, checkpoint_every_steps=100))
  return config
