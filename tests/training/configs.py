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
  config.model.update(
    dict(d_model=32, num_heads=4, d_ff=48, encoder_layers=1, decoder_layers=2, adapter_dim=8)
  )
  config.batch_size = 8
  config.eval_batch_size = 32
  config.log_every_steps = 1
  config.eval_every_steps = 1000
  config.num_eval_samples = 0
  config.update(overrides)
  return config


def train_tiny(tmp_path_factory, tfds_dir: str, name: str, steps: int) -> str:
  """A workdir trained `steps` steps on the tiny text task (a checkpoint at the last), for tests that
  read one."""
  from deed_jax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top

  workdir = str(tmp_path_factory.mktemp(name) / "run")
  train_and_evaluate(
    tiny_text_config(tfds_dir, total_steps=steps, checkpoint_every_steps=steps),
    workdir,
    progress=False,
  )
  return workdir
