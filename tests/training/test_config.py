"""Training configs: every shipped config validates; unknown options are named before anything runs."""

from __future__ import annotations

import os

import pytest

from deed_jax.config_defaults import validate
from deed_jax.train import train_and_evaluate
from deed_jax.workdir import MODEL_CONFIG_FILE, write_json
from tests.conftest import tiny_config
from tests.training.configs import REPO, load_config, tiny_text_config

# Configs whose argument is a converted model's workdir (they fine-tune or evaluate it).
MODEL_CONFIGS = ("docvqa",)
CONFIGS = sorted(
  f[:-3]
  for f in os.listdir(os.path.join(REPO, "configs"))
  if f.endswith(".py") and f[:-3] not in MODEL_CONFIGS
)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", ["", "runlocal"])
def test_shipped_configs_validate(name, arg):
  config = load_config(name, arg)
  model_config = validate(config)
  assert model_config.decoder_layers >= 2
  doc = open(os.path.join(REPO, "configs", f"{name}.py")).read()
  assert f"python -m deed_jax.train --config configs/{name}.py" in doc


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_configs_of_a_converted_model_validate(name, tmp_path):
  """Given a workdir's model (here a Donut-shaped one), the config takes its architecture."""
  write_json(
    str(tmp_path), MODEL_CONFIG_FILE, tiny_config(encoder="swin", image_size=(32, 32)).to_dict()
  )
  with pytest.raises(ValueError, match="needs the converted Donut workdir"):
    load_config(name, "")
  config = load_config(name, str(tmp_path))
  with pytest.raises(ValueError, match="set task.manual_dir"):
    validate(config)
  config.task.manual_dir = str(tmp_path)
  model_config = validate(config)
  assert model_config == tiny_config(encoder="swin", image_size=(32, 32))
  doc = open(os.path.join(REPO, "configs", f"{name}.py")).read()
  assert f"python -m deed_jax.train --config configs/{name}.py" in doc


def test_unknown_options_are_named_and_nothing_is_written(tmp_path):
  workdir = tmp_path / "run"
  config = tiny_text_config(str(tmp_path / "tfds"))
  config.model.num_experts = 4
  with pytest.raises(ValueError, match=r"Unknown ModelConfig option\(s\) \['num_experts'\]"):
    train_and_evaluate(config, str(workdir), progress=False)
  config = tiny_text_config(str(tmp_path / "tfds"))
  config.loss.mode = "calm"
  with pytest.raises(ValueError, match="config.loss.mode='calm'"):
    train_and_evaluate(config, str(workdir), progress=False)
  for option, value, message in (
    ("exits_per_step", 2, r"config.loss.exits_per_step=2 must be an integer in 0..1"),
    ("exit_schedule", "cyclic", "config.loss.exit_schedule='cyclic'"),
    ("vocab_chunk", 0, "config.loss.vocab_chunk=0"),
  ):
    config = tiny_text_config(str(tmp_path / "tfds"))
    config.loss[option] = value
    with pytest.raises(ValueError, match=message):
      train_and_evaluate(config, str(workdir), progress=False)
  config = tiny_text_config(str(tmp_path / "tfds"))
  config.model.decoder_layers = 3
  config.loss.update(mode="final", exits_per_step=1)
  with pytest.raises(ValueError, match="mode='final' supervises none"):
    train_and_evaluate(config, str(workdir), progress=False)
  config = tiny_text_config(str(tmp_path / "tfds"))
  config.optimizer.momentum = 0.9
  with pytest.raises(ValueError, match=r"config.optimizer.\['momentum'\]"):
    train_and_evaluate(config, str(workdir), progress=False)
  config = tiny_text_config(str(tmp_path / "tfds"))
  config.task.metric = "rouge"
  with pytest.raises(ValueError, match=r"Unknown config.task.metric 'rouge'; known: \['anls'"):
    train_and_evaluate(config, str(workdir), progress=False)
  config = tiny_text_config(str(tmp_path / "tfds"))
  config.batch_size = 0
  with pytest.raises(ValueError, match="config.batch_size=0"):
    train_and_evaluate(config, str(workdir), progress=False)
  with pytest.raises(ValueError, match="stop_at_step=9 must be in 1..total_steps=5"):
    train_and_evaluate(
      tiny_text_config(str(tmp_path / "tfds"), total_steps=5),
      str(workdir),
      stop_at_step=9,
      progress=False,
    )
  assert not workdir.exists() and not (tmp_path / "tfds").exists()
