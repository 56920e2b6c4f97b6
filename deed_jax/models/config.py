"""`ModelConfig`: every architectural choice of the multi-exit encoder-decoder.

The options cover what pretrained families need (BART/mBART: post/pre LayerNorm, learned positions with
offset 2, embedding LayerNorm; T5: RMSNorm, relative position bias, gated-gelu, untied head, no attention
scaling), so a converted checkpoint is this same model with other switches.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from deed_jax.errors import UserError

_CHOICES = {
  "encoder": ("text", "image", "swin"),
  "patch_positions": ("1d", "2d"),
  "norm_type": ("layernorm", "rmsnorm"),
  "norm_position": ("pre", "post"),
  "position_embedding": ("learned", "sinusoidal", "relative"),
  "mlp_activation": ("gelu", "gelu_tanh", "relu", "gated-gelu", "gated-relu"),
  "adapter": ("none", "linear", "bottleneck"),
  "exit_classifier": ("none", "linear", "mlp"),
  "dtype": ("float32", "bfloat16", "float16"),
  "param_dtype": ("float32", "bfloat16"),
}


IMAGE_ENCODERS = ("image", "swin")  # encoders that take pixel_values

# Options the encoder stack may set differently from the decoder (a ViT encoder under a BART decoder).
ENCODER_OVERRIDABLE = (
  "d_model",
  "num_heads",
  "d_ff",
  "head_dim",
  "attention_bias",
  "scale_attention",
  "mlp_activation",
  "mlp_bias",
  "norm_type",
  "norm_position",
  "norm_eps",
  "embedding_norm",
)


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
  return (value, value) if isinstance(value, int) else tuple(value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  """Shape and options of a `MultiExitEncoderDecoder`.

  `image_size` and `patch_size` take an int (square) or a (height, width) pair; a non-square patch lets
  one patch hold exactly one glyph of a monospace font, which is how the embedded forms task is drawn.
  """

  vocab_size: int
  d_model: int
  num_heads: int
  d_ff: int
  encoder_layers: int
  decoder_layers: int
  max_target_length: int
  # Encoder.
  encoder: str = "text"
  max_source_length: int = 512
  image_size: int | tuple[int, int] = 224
  patch_size: int | tuple[int, int] = 16
  num_channels: int = 3
  patch_positions: str = (
    "1d"  # "1d": one learned vector per patch (ViT); "2d": row + column vectors.
  )
  image_cls_token: bool = (
    False  # ViT: a learned [CLS] vector before the patches (it gets a position).
  )
  # encoder="swin" (Donut): stages of windowed attention, the patch grid merged 2 x 2 between stages;
  # stage i has swin_embed_dim * 2**i channels and swin_heads[i] heads. `encoder_layers` is unused.
  swin_depths: tuple[int, ...] = (2, 2, 6, 2)
  swin_heads: tuple[int, ...] = (3, 6, 12, 24)
  swin_embed_dim: int = 96
  swin_window_size: int = 7
  swin_mlp_ratio: float = 4.0
  # The encoder's own values of options in ENCODER_OVERRIDABLE, e.g. {"d_model": 768, "norm_eps": 1e-12}.
  # With another d_model a learned projection maps encoder states to the decoder's width (HF's
  # VisionEncoderDecoderModel `enc_to_dec_proj`). Stored as sorted (name, value) pairs (hashable).
  encoder_overrides: tuple[tuple[str, Any], ...] | dict[str, Any] = ()
  # Attention and MLP.
  head_dim: int | None = None  # Defaults to d_model // num_heads (T5 sets d_kv independently).
  attention_bias: bool = True  # Biases on q/k/v/o projections (BART yes, T5 no).
  scale_attention: bool = True  # Multiply q by head_dim**-0.5 (T5 folds it into the init instead).
  mlp_activation: str = "gelu"
  mlp_bias: bool = True
  # Normalisation.
  norm_type: str = "layernorm"
  norm_position: str = (
    "pre"  # "pre": norm before each sublayer + a final norm; "post": after (BART).
  )
  norm_eps: float = 1e-5
  embedding_norm: bool = False  # LayerNorm right after the embeddings (BART, mBART).
  # Positions.
  position_embedding: str = "learned"
  position_offset: int = 0  # BART's learned positions start at index 2.
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  # Embeddings and head.
  scale_embedding: bool = False  # Multiply token embeddings by sqrt(d_model).
  tie_word_embeddings: bool = True
  rescale_tied_output: bool = False  # T5 v1.0: hidden * d_model**-0.5 before a tied head.
  final_logits_bias: bool = False
  # Exits.
  adapter: str = "bottleneck"
  adapter_dim: int = 64
  # A learned probe per exit for DecodeConfig(confidence="classifier"): "linear" (sigmoid(f w + b)
  # on the exit features f) or "mlp" (one ReLU layer of exit_classifier_dim units first); "none": no
  # parameters.
  exit_classifier: str = "none"
  exit_classifier_dim: int = 64
  # Regularisation and numerics.
  dropout_rate: float = 0.0
  dtype: str = "float32"  # Compute dtype; logits are always float32.
  param_dtype: str = "float32"
  pad_id: int = 0
  bos_id: int = 1
  eos_id: int = 2

  def __post_init__(self):
    self._check_encoder_overrides()
    for name, allowed in _CHOICES.items():
      value = getattr(self, name)
      if value not in allowed:
        raise UserError(f"ModelConfig.{name}={value!r} is not one of {allowed}.")
    for name in (
      "vocab_size",
      "d_model",
      "num_heads",
      "d_ff",
      "decoder_layers",
      "max_target_length",
      "exit_classifier_dim",
    ):
      if getattr(self, name) < 1:
        raise UserError(f"ModelConfig.{name}={getattr(self, name)} must be >= 1.")
    if self.encoder_layers < 0:
      raise UserError(f"ModelConfig.encoder_layers={self.encoder_layers} must be >= 0.")
    if self.head_dim is None and self.d_model % self.num_heads:
      raise UserError(
        f"ModelConfig.d_model={self.d_model} is not divisible by num_heads={self.num_heads}; "
        "set head_dim explicitly."
      )
    for name in ("pad_id", "bos_id", "eos_id"):
      if not 0 <= getattr(self, name) < self.vocab_size:
        raise UserError(
          f"ModelConfig.{name}={getattr(self, name)} is outside [0, {self.vocab_size})."
        )
    self._check_image_encoder()
    if not 0.0 <= self.dropout_rate < 1.0:
      raise UserError(f"ModelConfig.dropout_rate={self.dropout_rate} must be in [0, 1).")

  def _check_encoder_overrides(self) -> None:
    """What the encoder may set apart from the decoder (stored sorted, so configs compare equal)."""
    overrides = dict(self.encoder_overrides)
    unknown = sorted(set(overrides) - set(ENCODER_OVERRIDABLE))
    if unknown:
      raise UserError(
        f"ModelConfig.encoder_overrides sets {unknown}; the encoder may override only "
        f"{list(ENCODER_OVERRIDABLE)}."
      )
    object.__setattr__(self, "encoder_overrides", tuple(sorted(overrides.items())))
    if self.encoder == "text" and overrides.get("d_model", self.d_model) != self.d_model:
      raise UserError(
        f"encoder_overrides d_model={overrides['d_model']} differs from d_model="
        f"{self.d_model}, but a text encoder shares the decoder's token embedding."
      )
    if overrides:
      _ = self.encoder_config  # validates the encoder's options

  def _check_image_encoder(self) -> None:
    """Swin stages, patches that tile the image, a [CLS] token only with a 1-d position table."""
    if self.encoder == "swin":
      if len(self.swin_depths) != len(self.swin_heads) or not self.swin_depths:
        raise UserError(
          f"ModelConfig.swin_depths={self.swin_depths} and swin_heads={self.swin_heads} "
          "need one entry per stage."
        )
      for i, heads in enumerate(self.swin_heads):
        if (self.swin_embed_dim * 2**i) % heads:
          raise UserError(
            f"Swin stage {i} has {self.swin_embed_dim * 2**i} channels, not divisible "
            f"by swin_heads[{i}]={heads}."
          )
    if self.encoder in IMAGE_ENCODERS:
      (h, w), (ph, pw) = self.image_hw, self.patch_hw
      if h % ph or w % pw:
        raise UserError(
          f"ModelConfig.image_size={self.image_size} is not divisible by patch_size={self.patch_size}."
        )
    if self.image_cls_token and self.patch_positions != "1d":
      raise UserError(
        "ModelConfig.image_cls_token needs patch_positions='1d' (the [CLS] position is "
        "one more row of that table)."
      )

  @property
  def encoder_config(self) -> ModelConfig:
    """The options the encoder stack is built with (this config with the overrides applied)."""
    if not self.encoder_overrides:
      return self
    return dataclasses.replace(self, encoder_overrides=(), **dict(self.encoder_overrides))

  @property
  def encoder_d_model(self) -> int:
    """The width of the encoder's output states."""
    if self.encoder == "swin":
      return self.swin_embed_dim * 2 ** (len(self.swin_depths) - 1)
    return dict(self.encoder_overrides).get("d_model", self.d_model)

  @property
  def resolved_head_dim(self) -> int:
    return self.head_dim or self.d_model // self.num_heads

  @property
  def image_hw(self) -> tuple[int, int]:
    return _pair(self.image_size)

  @property
  def patch_hw(self) -> tuple[int, int]:
    return _pair(self.patch_size)

  @property
  def patch_grid(self) -> tuple[int, int]:
    (h, w), (ph, pw) = self.image_hw, self.patch_hw
    return h // ph, w // pw

  @property
  def num_patches(self) -> int:
    rows, cols = self.patch_grid
    return rows * cols

  @property
  def is_gated_mlp(self) -> bool:
    return self.mlp_activation.startswith("gated-")

  # Serialisation: checkpoints store the config beside the weights as JSON.
  def to_dict(self) -> dict[str, Any]:
    values = dataclasses.asdict(self)
    values["encoder_overrides"] = dict(self.encoder_overrides)
    return values

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise UserError(f"Unknown ModelConfig option(s) {unknown}; known options: {sorted(known)}.")
    values = dict(values)
    for name in (
      "image_size",
      "patch_size",
      "swin_depths",
      "swin_heads",
    ):  # JSON turns tuples into lists.
      if isinstance(values.get(name), list):
        values[name] = tuple(values[name])
    return cls(**values)

  @classmethod
  def from_json(cls, text: str) -> ModelConfig:
    return cls.from_dict(json.loads(text))
