"""BART and mBART (`...ForConditionalGeneration`, and the `...ForCausalLM` decoders of
`VisionEncoderDecoderModel`): learned positions with offset 2, embedding LayerNorm; BART is post-norm,
mBART pre-norm with a final LayerNorm per stack."""

from __future__ import annotations

from deed_jax.convert.options import ConvertOptions, activation, decoder_start_id, refuse
from deed_jax.convert.rules import (
  ROW,
  KeyMap,
  Rule,
  attention_rules,
  head_rules,
  linear_rules,
  norm_rules,
)
from deed_jax.models import ModelConfig

ARCHITECTURES = ("BartForConditionalGeneration", "MBartForConditionalGeneration")


def is_pre_norm(hf: dict) -> bool:
  return hf["model_type"] == "mbart"


def decoder_options(hf: dict) -> dict:
  """The ModelConfig options of a BART/mBART decoder (shared with the vision encoder-decoder)."""
  return dict(
    vocab_size=hf["vocab_size"],
    d_model=hf["d_model"],
    num_heads=hf["decoder_attention_heads"],
    d_ff=hf["decoder_ffn_dim"],
    decoder_layers=hf["decoder_layers"],
    max_target_length=hf["max_position_embeddings"],
    mlp_activation=activation(hf, "activation_function"),
    norm_position="pre" if is_pre_norm(hf) else "post",
    norm_eps=1e-5,
    embedding_norm=True,
    position_embedding="learned",
    position_offset=2,
    scale_embedding=bool(hf.get("scale_embedding")),
    tie_word_embeddings=hf.get("tie_word_embeddings", True),
    dropout_rate=hf.get("dropout", 0.0),
    pad_id=hf["pad_token_id"],
    bos_id=decoder_start_id(hf),
    eos_id=hf["eos_token_id"],
  )


def model_config(hf: dict, options: ConvertOptions) -> ModelConfig:
  for ours, theirs in (
    ("encoder_attention_heads", "decoder_attention_heads"),
    ("encoder_ffn_dim", "decoder_ffn_dim"),
  ):
    if hf[ours] != hf[theirs]:
      refuse(
        f"{ours}={hf[ours]} differs from {theirs}={hf[theirs]}; deed-jax uses one value for both "
        "stacks"
      )
  return options.apply(
    ModelConfig(
      **decoder_options(hf),
      encoder="text",
      encoder_layers=hf["encoder_layers"],
      max_source_length=hf["max_position_embeddings"],
      final_logits_bias=True,
    )
  )


def stack_rules(stack: str, hf: str, num_layers: int, *, cross: bool, pre_norm: bool) -> list[Rule]:
  """Positions, embedding norm, layers (and the final norm of a pre-norm stack) of one BART stack."""
  rules = [Rule(f"{stack}/positions/table", f"{hf}.embed_positions.weight")]
  rules += norm_rules(f"{stack}/embedding_norm", f"{hf}.layernorm_embedding")
  for i in range(num_layers):
    ours, theirs = f"{stack}/layers/{i}", f"{hf}.layers.{i}"
    sublayers = [("self_attention", "self_attn")]
    if cross:
      sublayers.append(("cross_attention", "encoder_attn"))
    for name, hf_name in sublayers:
      rules += attention_rules(
        f"{ours}/{name}",
        *(f"{theirs}.{hf_name}.{p}_proj" for p in "qkv"),
        f"{theirs}.{hf_name}.out_proj",
        bias=True,
      )
      rules += norm_rules(f"{ours}/{name}_norm", f"{theirs}.{hf_name}_layer_norm")
    rules += linear_rules(f"{ours}/mlp/wi", f"{theirs}.fc1", f"{ours}/mlp/wi_bias")
    rules += linear_rules(f"{ours}/mlp/wo", f"{theirs}.fc2", f"{ours}/mlp/wo_bias")
    rules += norm_rules(f"{ours}/mlp_norm", f"{theirs}.final_layer_norm")
  if pre_norm:
    rules += norm_rules(f"{stack}/final_norm", f"{hf}.layer_norm")
  return rules


def keymap(config: ModelConfig, hf: dict) -> KeyMap:
  pre_norm = is_pre_norm(hf)
  rules = head_rules(
    config.tie_word_embeddings,
    "model.shared.weight",
    ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"),
    "lm_head.weight",
  )
  rules += [Rule("logits_bias", "final_logits_bias", ROW)]
  rules += stack_rules(
    "encoder", "model.encoder", config.encoder_layers, cross=False, pre_norm=pre_norm
  )
  rules += stack_rules(
    "decoder", "model.decoder", config.decoder_layers, cross=True, pre_norm=pre_norm
  )
  return KeyMap(tuple(rules))
