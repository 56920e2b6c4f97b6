"""`VisionEncoderDecoderModel` with a ViT or Donut-Swin encoder and a BART/mBART decoder
(`...ForCausalLM`); Donut is the DonutSwin + mBART case.

The ViT is a pre-norm stack with its own width, heads and eps (our `encoder_overrides`), a [CLS] token
and a patch-embedding convolution; `enc_to_dec_proj` maps encoder states to the decoder's width when
they differ. Weights the encoder-decoder never uses (ViT's pooler, Swin's relative-position index
buffers) are ignored here and kept aside for the way back.
"""

from __future__ import annotations

from deed_jax.convert.families import bart
from deed_jax.convert.options import ConvertOptions, activation, decoder_start_id, refuse
from deed_jax.convert.rules import (
  KeyMap,
  Rule,
  attention_rules,
  head_rules,
  leading_ones,
  linear_rules,
  norm_rules,
  patch_conv,
)
from deed_jax.models import ModelConfig

ARCHITECTURES = ("VisionEncoderDecoderModel",)
ENCODERS = ("vit", "donut-swin")
DECODERS = ("bart", "mbart")


def check_supported(hf: dict) -> None:
  encoder, decoder = hf["encoder"]["model_type"], hf["decoder"]["model_type"]
  if encoder not in ENCODERS or decoder not in DECODERS:
    refuse(
      f"a VisionEncoderDecoderModel with a {encoder!r} encoder and a {decoder!r} decoder is not "
      f"supported (encoders: {ENCODERS}, decoders: {DECODERS})"
    )
  if not hf["encoder"].get("qkv_bias", True):
    refuse(
      f"the {encoder} encoder has qkv_bias=False; deed-jax attention has biases on all "
      "projections or none"
    )
  if hf["encoder"].get("use_absolute_embeddings"):
    refuse("the Swin encoder uses absolute position embeddings (use_absolute_embeddings=True)")


def _pair(value) -> tuple[int, int]:
  return (value, value) if isinstance(value, int) else tuple(value)


def _encoder_options(encoder: dict) -> dict:
  image = dict(
    image_size=_pair(encoder["image_size"]),
    patch_size=_pair(encoder["patch_size"]),
    num_channels=encoder.get("num_channels", 3),
  )
  if encoder["model_type"] == "donut-swin":
    return dict(
      **image,
      encoder="swin",
      encoder_layers=sum(encoder["depths"]),
      swin_depths=tuple(encoder["depths"]),
      swin_heads=tuple(encoder["num_heads"]),
      swin_embed_dim=encoder["embed_dim"],
      swin_window_size=encoder["window_size"],
      swin_mlp_ratio=encoder["mlp_ratio"],
      encoder_overrides=dict(
        mlp_activation=activation(encoder, "hidden_act"),
        norm_position="pre",
        norm_eps=encoder["layer_norm_eps"],
        embedding_norm=False,
      ),
    )
  return dict(
    **image,
    encoder="image",
    encoder_layers=encoder["num_hidden_layers"],
    image_cls_token=True,
    patch_positions="1d",
    encoder_overrides=dict(
      d_model=encoder["hidden_size"],
      num_heads=encoder["num_attention_heads"],
      d_ff=encoder["intermediate_size"],
      mlp_activation=activation(encoder, "hidden_act"),
      norm_position="pre",
      norm_eps=encoder["layer_norm_eps"],
      embedding_norm=False,
    ),
  )


def model_config(hf: dict, options: ConvertOptions) -> ModelConfig:
  decoder = hf["decoder"]
  ids = dict(
    pad_id=hf.get("pad_token_id", decoder["pad_token_id"]),
    bos_id=decoder_start_id(hf),
    eos_id=hf.get("eos_token_id", decoder["eos_token_id"]),
  )
  return options.apply(
    ModelConfig(**{**bart.decoder_options(decoder), **ids}, **_encoder_options(hf["encoder"]))
  )


def _vit_rules(config: ModelConfig) -> list[Rule]:
  embeddings = "encoder.embeddings"
  rules = [
    Rule("encoder/cls_token", f"{embeddings}.cls_token", leading_ones(2)),
    Rule("encoder/patch_positions", f"{embeddings}.position_embeddings", leading_ones(1)),
    Rule(
      "encoder/patch_embedding",
      f"{embeddings}.patch_embeddings.projection.weight",
      patch_conv(config.patch_hw, config.num_channels),
    ),
    Rule("encoder/patch_bias", f"{embeddings}.patch_embeddings.projection.bias"),
  ]
  for i in range(config.encoder_layers):
    ours, theirs = f"encoder/layers/{i}", f"encoder.encoder.layer.{i}"
    rules += attention_rules(
      f"{ours}/self_attention",
      *(f"{theirs}.attention.attention.{p}" for p in ("query", "key", "value")),
      f"{theirs}.attention.output.dense",
      bias=True,
    )
    rules += norm_rules(f"{ours}/self_attention_norm", f"{theirs}.layernorm_before")
    rules += linear_rules(f"{ours}/mlp/wi", f"{theirs}.intermediate.dense", f"{ours}/mlp/wi_bias")
    rules += linear_rules(f"{ours}/mlp/wo", f"{theirs}.output.dense", f"{ours}/mlp/wo_bias")
    rules += norm_rules(f"{ours}/mlp_norm", f"{theirs}.layernorm_after")
  return rules + norm_rules("encoder/final_norm", "encoder.layernorm")


def _swin_rules(config: ModelConfig) -> tuple[list[Rule], list[str]]:
  """-> (rules, ignored keys): the relative-position index buffers are constants we rebuild."""
  embeddings = "encoder.embeddings"
  rules = [
    Rule(
      "encoder/patch_embedding",
      f"{embeddings}.patch_embeddings.projection.weight",
      patch_conv(config.patch_hw, config.num_channels),
    ),
    Rule("encoder/patch_bias", f"{embeddings}.patch_embeddings.projection.bias"),
  ]
  rules += norm_rules("encoder/embedding_norm", f"{embeddings}.norm")
  ignored = []
  for i, depth in enumerate(config.swin_depths):
    stage = f"encoder.encoder.layers.{i}"
    for j in range(depth):
      ours, theirs = f"encoder/stages/{i}/{j}", f"{stage}.blocks.{j}"
      rules += norm_rules(f"{ours}/attention_norm", f"{theirs}.layernorm_before")
      rules += attention_rules(
        f"{ours}/attention",
        *(f"{theirs}.attention.self.{p}" for p in ("query", "key", "value")),
        f"{theirs}.attention.output.dense",
        bias=True,
      )
      rules.append(
        Rule(f"{ours}/relative_bias", f"{theirs}.attention.self.relative_position_bias_table")
      )
      ignored.append(f"{theirs}.attention.self.relative_position_index")
      rules += norm_rules(f"{ours}/mlp_norm", f"{theirs}.layernorm_after")
      rules += linear_rules(f"{ours}/mlp/wi", f"{theirs}.intermediate.dense", f"{ours}/mlp/wi_bias")
      rules += linear_rules(f"{ours}/mlp/wo", f"{theirs}.output.dense", f"{ours}/mlp/wo_bias")
    if i + 1 < len(config.swin_depths):
      rules += norm_rules(f"encoder/merges/{i}/norm", f"{stage}.downsample.norm")
      rules += linear_rules(f"encoder/merges/{i}/reduction", f"{stage}.downsample.reduction")
  return rules, ignored


def keymap(config: ModelConfig, hf: dict) -> KeyMap:
  rules = head_rules(
    config.tie_word_embeddings,
    "decoder.model.decoder.embed_tokens.weight",
    (),
    "decoder.lm_head.weight",
  )
  ignored = ["encoder.pooler.dense.weight", "encoder.pooler.dense.bias"]
  if config.encoder == "swin":
    swin, buffers = _swin_rules(config)
    rules += swin
    ignored += buffers
  else:
    rules += _vit_rules(config)
  if config.encoder_d_model != config.d_model:
    rules += linear_rules("encoder_projection", "enc_to_dec_proj", "encoder_projection_bias")
  rules += bart.stack_rules(
    "decoder",
    "decoder.model.decoder",
    config.decoder_layers,
    cross=True,
    pre_norm=bart.is_pre_norm(hf["decoder"]),
  )
  return KeyMap(tuple(rules), ignored=tuple(ignored))
