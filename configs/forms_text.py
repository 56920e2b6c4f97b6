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
  runlocal = arg == "runlocal"
  config = training_defaults()
  config.task.dataset = "forms_text"
  config.task.dataset_config = "base"
  config.task.source_key = "source"
  config.task.target_key = "target"
  config.task.max_source_length = MAX_SOURCE_LENGTH
  config.model.update(dict(
      vocab_size=259, d_model=256, num_heads=8, d_ff=1024, encoder_layers=4, decoder_layers=6,
      max_target_length=forms.MAX_VALUE_LENGTH + 1, max_source_length=MAX_SOURCE_LENGTH,
      encoder="text", adapter="bottleneck", adapter_dim=64))
  config.total_steps = 10_000
  if runlocal:
    config.model.update(dict(d_model=64, num_heads=4, d_ff=128, encoder_layers=2, decoder_layers=3,
                             adapter_dim=16))
    config.task.dataset_config = "small"
    config.total_steps = 300
    config.log_every_steps = 25
    config.eval_every_steps = 300
    config.checkpoint_every_steps = 100
  return config
