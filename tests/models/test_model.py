"""The multi-exit model against an independent NumPy forward pass, per option set."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from deed_jax.models import MultiExitEncoderDecoder
from tests.conftest import random_inputs, randomize, tiny_config
from tests.models import numpy_reference

VARIANTS = {
  "text_pre_layernorm_learned_gelu": dict(),
  "text_post_norm_bart_like": dict(
    norm_position="post",
    embedding_norm=True,
    position_offset=2,
    scale_embedding=True,
    final_logits_bias=True,
    adapter="linear",
  ),
  "text_rms_gated_untied_t5_like": dict(
    norm_type="rmsnorm",
    mlp_activation="gated-gelu",
    attention_bias=False,
    mlp_bias=False,
    scale_attention=False,
    tie_word_embeddings=False,
    adapter="none",
    head_dim=6,
  ),
  "text_sinusoidal_relu_rescaled": dict(
    position_embedding="sinusoidal", mlp_activation="relu", rescale_tied_output=True
  ),
  "image_vit_pre_norm": dict(encoder="image"),
  "image_vit_post_norm_2d_positions": dict(
    encoder="image", norm_position="post", adapter="linear", patch_positions="2d"
  ),
}


def _params(model):
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_exit_logits_match_numpy_reference(variant):
  config = tiny_config(**VARIANTS[variant])
  model = randomize(MultiExitEncoderDecoder(config, rngs=nnx.Rngs(1)), seed=2)
  encoder_inputs, decoder_ids = random_inputs(config, batch=3, target_length=7)
  logits = np.asarray(model(encoder_inputs, decoder_ids))
  assert logits.shape == (config.decoder_layers, 3, 7, config.vocab_size)  # [L, B, T, V]
  assert logits.dtype == np.float32
  expected = numpy_reference.exit_logits(_params(model), config, encoder_inputs, decoder_ids)
  np.testing.assert_allclose(logits, expected, atol=2e-4, rtol=2e-4)


def test_final_exit_equals_plain_forward_and_shallow_exits_equal_truncated_models():
  config = tiny_config(decoder_layers=4)
  model = randomize(MultiExitEncoderDecoder(config, rngs=nnx.Rngs(0)), seed=3)
  encoder_inputs, decoder_ids = random_inputs(config)
  all_exits = np.asarray(model(encoder_inputs, decoder_ids))
  for depth in range(1, config.decoder_layers + 1):
    truncated = model.logits(model.exit_features(encoder_inputs, decoder_ids, num_layers=depth))
    np.testing.assert_allclose(all_exits[depth - 1], np.asarray(truncated[-1]), atol=1e-5)
  # Exits really differ from each other (the test above is not comparing equal copies).
  assert np.abs(all_exits[0] - all_exits[-1]).max() > 1e-2


@pytest.mark.parametrize("adapter", ["none", "linear", "bottleneck"])
def test_adapters_start_as_identity(adapter):
  model = MultiExitEncoderDecoder(tiny_config(adapter=adapter), rngs=nnx.Rngs(0))
  hidden = np.random.default_rng(0).normal(size=(2, 5, 32)).astype(np.float32)
  for exit_adapter in model.decoder.adapters:
    np.testing.assert_array_equal(np.asarray(exit_adapter(hidden)), hidden)


def test_padding_in_the_encoder_is_ignored():
  config = tiny_config()
  model = randomize(MultiExitEncoderDecoder(config, rngs=nnx.Rngs(0)), seed=1)
  encoder_inputs, decoder_ids = random_inputs(config)
  changed = dict(encoder_inputs)
  changed["input_ids"] = np.where(
    encoder_inputs["attention_mask"] == 1, encoder_inputs["input_ids"], 5
  )
  assert (changed["input_ids"] != encoder_inputs["input_ids"]).any()
  np.testing.assert_allclose(
    np.asarray(model(encoder_inputs, decoder_ids)),
    np.asarray(model(changed, decoder_ids)),
    atol=1e-6,
  )


def test_every_parameter_has_logical_axis_names():
  for overrides in (
    {},
    {
      "encoder": "image",
      "tie_word_embeddings": False,
      "final_logits_bias": True,
      "position_embedding": "relative",
      "adapter": "linear",
    },
  ):
    model = MultiExitEncoderDecoder(tiny_config(**overrides), rngs=nnx.Rngs(0))
    allowed = {"embed", "mlp", "heads", "kv", "vocab", "layers", None}
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
      axes = variable.get_metadata().get("out_sharding")
      assert axes is not None and len(axes) == variable[...].ndim, path
      assert set(axes) <= allowed, (path, axes)
      assert any(a is not None for a in axes), path


def test_bfloat16_compute_keeps_float32_logits():
  config = tiny_config(dtype="bfloat16")
  model = MultiExitEncoderDecoder(config, rngs=nnx.Rngs(0))
  logits = model(*random_inputs(config))
  assert logits.dtype == np.float32 and np.isfinite(np.asarray(logits)).all()
