"""T5 v1.0 and v1.1 (`T5ForConditionalGeneration`): RMSNorm, bucketed relative position bias (held by
the first layer of each stack, shared by all), no attention scaling, no biases; v1.0 ties the head and
rescales the decoder output by d_model**-0.5, v1.1 has gated-gelu and an untied head."""

from __future__ import annotations

from deed_jax.convert.options import ConvertOptions, decoder_start_id, refuse
from deed_jax.convert.rules import (
  KeyMap,
  Rule,
  attention_rules,
  head_rules,
  linear_rules,
  norm_rules,
)
from deed_jax.models import ModelConfig

ARCHITECTURES = ("T5ForConditionalGeneration",)
DEFAULT_MAX_TARGET_LENGTH = (
  512  # Relative positions have no table; this sizes our decoder's positions.
)
_FEED_FORWARD = {
  "relu": "relu",
  "gelu": "gelu",
  "gated-gelu": "gated-gelu",
  "gated-relu": "gated-relu",
}


def model_config(hf: dict, options: ConvertOptions) -> ModelConfig:
  proj = hf.get("feed_forward_proj", "relu")
  if proj not in _FEED_FORWARD:
    refuse(f"feed_forward_proj={proj!r} is not supported (supported: {sorted(_FEED_FORWARD)})")
  tied = hf.get("tie_word_embeddings", True)
  return options.apply(
    ModelConfig(
      vocab_size=hf["vocab_size"],
      d_model=hf["d_model"],
      num_heads=hf["num_heads"],
      d_ff=hf["d_ff"],
      head_dim=hf["d_kv"],
      encoder_layers=hf["num_layers"],
      decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
      max_target_length=DEFAULT_MAX_TARGET_LENGTH,
      attention_bias=False,
      scale_attention=False,
      mlp_activation=_FEED_FORWARD[proj],
      mlp_bias=False,
      norm_type="rmsnorm",
      norm_position="pre",
      norm_eps=hf.get("layer_norm_epsilon", 1e-6),
      position_embedding="relative",
      relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
      relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
      tie_word_embeddings=tied,
      rescale_tied_output=tied,
      dropout_rate=hf.get("dropout_rate", 0.0),
      pad_id=hf["pad_token_id"],
      bos_id=decoder_start_id(hf),
      eos_id=hf["eos_token_id"],
    )
  )


def _stack_rules(stack: str, num_layers: int, config: ModelConfig) -> list[Rule]:
  cross = stack == "decoder"
  rules = [
    Rule(
      f"{stack}/relative_bias/embedding",
      f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
    )
  ]
  for i in range(num_layers):
    ours, theirs = f"{stack}/layers/{i}", f"{stack}.block.{i}.layer"
    sublayers = [("self_attention", "SelfAttention")] + (
      [("cross_attention", "EncDecAttention")] if cross else []
    )
    for index, (name, hf_name) in enumerate(sublayers):
      prefix = f"{theirs}.{index}.{hf_name}"
      rules += attention_rules(f"{ours}/{name}", *(f"{prefix}.{p}" for p in "qkvo"), bias=False)
      rules += norm_rules(f"{ours}/{name}_norm", f"{theirs}.{index}.layer_norm", bias=False)
    mlp = f"{theirs}.{len(sublayers)}"
    if config.is_gated_mlp:  # HF: act(wi_0 x) * wi_1 x; ours: act(wi_gate x) * wi x.
      rules += linear_rules(f"{ours}/mlp/wi_gate", f"{mlp}.DenseReluDense.wi_0")
      rules += linear_rules(f"{ours}/mlp/wi", f"{mlp}.DenseReluDense.wi_1")
    else:
      rules += linear_rules(f"{ours}/mlp/wi", f"{mlp}.DenseReluDense.wi")
    rules += linear_rules(f"{ours}/mlp/wo", f"{mlp}.DenseReluDense.wo")
    rules += norm_rules(f"{ours}/mlp_norm", f"{mlp}.layer_norm", bias=False)
  return rules + norm_rules(f"{stack}/final_norm", f"{stack}.final_layer_norm", bias=False)


def keymap(config: ModelConfig, hf: dict) -> KeyMap:
  del hf
  rules = head_rules(
    config.tie_word_embeddings,
    "shared.weight",
    ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"),
    "lm_head.weight",
  )
  rules += _stack_rules("encoder", config.encoder_layers, config)
  rules += _stack_rules("decoder", config.decoder_layers, config)
  # Some T5 checkpoints carry a cross-attention relative bias that T5 never uses (HF ignores it too).
  unused = "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"
  return KeyMap(tuple(rules), ignored=(unused,))
