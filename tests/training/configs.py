"""A tiny training config on the `tiny` build of the embedded text task, for fast tests."""

from __future__ import annotations

import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_config(name: str, arg: str = ""):
  """Load `configs/<name>.py` the way `--config` does."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def tiny_text_config(tfds_dir: str, **overrides):
  config = load_config("forms_text", "runlocal")
  config.task.dataset_config = "tiny"
  config.task.data_dir = tfds_dir
  config.model.update(dict(d_model=32, num_heads=4, d_ff=48, encoder_layers=1, decoder_layers=2,
                           adapter_dim=8))
  config.batch_size = 8
  config.eval_batch_size = 32
  config.log_every_steps = 1
  config.eval_every_steps = 1000
  config.num_eval_samples = 0
  config.update(overrides)
  return config
