"""Bad input raises a clear error that names the bad value."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from deed_jax.models import ModelConfig, MultiExitEncoderDecoder
from tests.conftest import TINY, random_inputs, tiny_config


def test_wrong_image_size_or_channel_count():
  config = tiny_config(encoder="image")  # image_size (8, 12), 3 channels
  model = MultiExitEncoderDecoder(config, rngs=nnx.Rngs(0))
  _, decoder_ids = random_inputs(config)
  with pytest.raises(ValueError, match=r"shape \(2, 8, 10, 3\).*\[B, 8, 12, 3\]"):
    model({"pixel_values": np.zeros((2, 8, 10, 3), np.float32)}, decoder_ids[:2])
  with pytest.raises(ValueError, match=r"shape \(2, 8, 12, 1\).*num_channels=3"):
    model({"pixel_values": np.zeros((2, 8, 12, 1), np.float32)}, decoder_ids[:2])
  with pytest.raises(ValueError, match=r"'input_ids'.*'image' encoder takes \['pixel_values'\]"):
    model({"input_ids": np.zeros((2, 4), np.int32)}, decoder_ids[:2])


def test_token_ids_outside_the_vocabulary():
  config = tiny_config()
  model = MultiExitEncoderDecoder(config, rngs=nnx.Rngs(0))
  encoder_inputs, decoder_ids = random_inputs(config)
  bad = dict(encoder_inputs, input_ids=encoder_inputs["input_ids"].copy())
  bad["input_ids"][0, 1] = 37
  with pytest.raises(ValueError, match=r"input_ids holds token id\(s\) \[37\] outside .*\[0, 37\)"):
    model(bad, decoder_ids)
  negative = decoder_ids.copy()
  negative[1, 2] = -4
  with pytest.raises(ValueError, match=r"decoder_input_ids holds token id\(s\) \[-4\]"):
    model(encoder_inputs, negative)


def test_sequences_longer_than_the_positions():
  config = tiny_config()
  model = MultiExitEncoderDecoder(config, rngs=nnx.Rngs(0))
  encoder_inputs, _ = random_inputs(config)
  with pytest.raises(ValueError, match="length 11 exceeds max_target_length=10"):
    model(encoder_inputs, np.ones((3, 11), np.int32))


@pytest.mark.parametrize(
  "field, value",
  [
    ("norm_type", "batchnorm"),
    ("encoder", "audio"),
    ("adapter", "lora"),
    ("mlp_activation", "swish"),
    ("position_embedding", "rope"),
    ("dtype", "int8"),
    ("patch_positions", "3d"),
  ],
)
def test_unknown_choice_is_named(field, value):
  with pytest.raises(ValueError, match=f"ModelConfig.{field}='{value}' is not one of"):
    tiny_config(**{field: value})


def test_unknown_option_and_bad_shapes_are_named():
  with pytest.raises(ValueError, match=r"Unknown ModelConfig option\(s\) \['num_experts'\]"):
    ModelConfig.from_dict({**TINY, "num_experts": 8})
  with pytest.raises(ValueError, match="d_model=30 is not divisible by num_heads=4"):
    tiny_config(d_model=30)
  with pytest.raises(ValueError, match=r"image_size=\(8, 12\) is not divisible by patch_size=5"):
    tiny_config(encoder="image", patch_size=5)
  with pytest.raises(ValueError, match="eos_id=40 is outside"):
    tiny_config(eos_id=40)


def test_config_round_trips_through_json():
  config = tiny_config(encoder="image", patch_positions="2d")
  assert ModelConfig.from_json(config.to_json()) == config
