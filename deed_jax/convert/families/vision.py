"""`VisionEncoderDecoderModel` with a ViT encoder and a BART/mBART decoder (`...ForCausalLM`).

The ViT is a pre-norm stack with its own width, heads and eps (our `encoder_overrides`), a [CLS] token
and a patch-embedding convolution; `enc_to_dec_proj` maps its states to the decoder's width when they
differ. The pooler HF builds is never used by the encoder-decoder, so its weights are ignored.
"""

from __future__ import annotations

from deed_jax.convert.families import bart
from deed_jax.convert.options import ConvertOptions, activation, decoder_start_id, refuse
from deed_jax.convert.rules import (KeyMap, Rule, attention_rules, head_rules, leading_ones, linear_rules,
                                    norm_rules, patch_conv)
from deed_jax.models import ModelConfig

ARCHITECTURES = ("VisionEncoderDecoderModel",)
ENCODERS = ("vit",)
DECODERS = ("bart", "mbart")


def check_supported(hf: dict) -> None:
  encoder, decoder = hf["encoder"]["model_type"], hf["decoder"]["model_type"]
  if encoder not in ENCODERS or decoder not in DECODERS:
    refuse(f"a VisionEncoderDecoderModel with a {encoder!r} encoder and a {decoder!r} decoder is not "
           f"supported (encoders: {ENCODERS}, decoders: {DECODERS})")
  if not hf["encoder"].get("qkv_bias", True):
    refuse("the ViT encoder has qkv_bias=False; deed-jax attention has biases on all projections or none")


def _pair(value) -> tuple[int, int]:
  return (value, value) if isinstance(value, int) else tuple(value)


def model_config(hf: dict, options: ConvertOptions) -> ModelConfig:
  vit, decoder = hf["encoder"], hf["decoder"]
  ids = dict(pad_id=hf.get("pad_token_id", decoder["pad_token_id"]), bos_id=decoder_start_id(hf),
             eos_id=hf.get("eos_token_id", decoder["eos_token_id"]))
  return options.apply(ModelConfig(
      **{**bart.decoder_options(decoder), **ids}, encoder="image", encoder_layers=vit["num_hidden_layers"],
      image_size=_pair(vit["image_size"]), patch_size=_pair(vit["patch_size"]),
      num_channels=vit.get("num_channels", 3), image_cls_token=True, patch_positions="1d",
      encoder_overrides=dict(
          d_model=vit["hidden_size"], num_heads=vit["num_attention_heads"], d_ff=vit["intermediate_size"],
          mlp_activation=activation(vit, "hidden_act"), norm_position="pre",
          norm_eps=vit.get("layer_norm_eps", 1e-12), embedding_norm=False)))


def _vit_rules(config: ModelConfig) -> list[Rule]:
  embeddings = "encoder.embeddings"
  rules = [Rule("encoder/cls_token", f"{embeddings}.cls_token", leading_ones(2)),
           Rule("encoder/patch_positions", f"{embeddings}.position_embeddings", leading_ones(1)),
           Rule("encoder/patch_embedding", f"{embeddings}.patch_embeddings.projection.weight",
                patch_conv(config.patch_hw, config.num_channels)),
           Rule("encoder/patch_bias", f"{embeddings}.patch_embeddings.projection.bias")]
  for i in range(config.encoder_layers):
    ours, theirs = f"encoder/layers/{i}", f"encoder.encoder.layer.{i}"
    rules += attention_rules(f"{ours}/self_attention", *(f"{theirs}.attention.attention.{p}"
                                                         for p in ("query", "key", "value")),
                             f"{theirs}.attention.output.dense", bias=True)
    rules += norm_rules(f"{ours}/self_attention_norm", f"{theirs}.layernorm_before")
    rules += linear_rules(f"{ours}/mlp/wi", f"{theirs}.intermediate.dense", f"{ours}/mlp/wi_bias")
    rules += linear_rules(f"{ours}/mlp/wo", f"{theirs}.output.dense", f"{ours}/mlp/wo_bias")
    rules += norm_rules(f"{ours}/mlp_norm", f"{theirs}.layernorm_after")
  return rules + norm_rules("encoder/final_norm", "encoder.layernorm")


def keymap(config: ModelConfig, hf: dict) -> KeyMap:
  rules = head_rules(config.tie_word_embeddings, "decoder.model.decoder.embed_tokens.weight", (),
                     "decoder.lm_head.weight")
  rules += _vit_rules(config)
  if config.encoder_d_model != config.d_model:
    rules += linear_rules("encoder_projection", "enc_to_dec_proj", "encoder_projection_bias")
  rules += bart.stack_rules("decoder", "decoder.model.decoder", config.decoder_layers, cross=True,
                            pre_norm=bart.is_pre_norm(hf["decoder"]))
  return KeyMap(tuple(rules), ignored=("encoder.pooler.dense.weight", "encoder.pooler.dense.bias"))
