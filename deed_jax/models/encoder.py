"""The encoder: a text transformer or a ViT-style image transformer (patch embedding + the same layers).

Both share one stack of `TransformerLayer`s; only the input stage differs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from deed_jax.models.config import ModelConfig
from deed_jax.models.layers import (
  Norm,
  PositionEmbedding,
  RelativePositionBias,
  TokenEmbedding,
  call_layer,
  dropout,
  param,
  split_rng,
)
from deed_jax.models.transformer_layer import TransformerLayer, padding_bias

Array = jax.Array


class Encoder(nnx.Module):
  """Text or image encoder; `__call__` returns (states [B, S, D_enc], mask [B, S]).

  Built from `config.encoder_config` (the model's options with the encoder's overrides applied).
  """

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    self.config = config
    if config.encoder == "image":
      (ph, pw), c = config.patch_hw, config.num_channels
      self.patch_embedding = param(
        rngs, (ph * pw * c, config.d_model), (None, "embed"), dtype=config.param_dtype
      )
      self.patch_bias = param(None, (config.d_model,), ("embed",), "zeros", config.param_dtype)
      if config.image_cls_token:
        self.cls_token = param(rngs, (config.d_model,), ("embed",), dtype=config.param_dtype)
      if config.patch_positions == "2d":  # Factorised: rows and columns of the patch grid.
        rows, cols = config.patch_grid
        self.patch_row_positions = param(
          rngs, (rows, config.d_model), (None, "embed"), dtype=config.param_dtype
        )
        self.patch_column_positions = param(
          rngs, (cols, config.d_model), (None, "embed"), dtype=config.param_dtype
        )
      else:
        num_positions = config.num_patches + int(config.image_cls_token)  # [CLS] comes first
        self.patch_positions = param(
          rngs, (num_positions, config.d_model), (None, "embed"), dtype=config.param_dtype
        )
    else:
      self.positions = PositionEmbedding(config, config.max_source_length, rngs)
    if config.position_embedding == "relative":
      self.relative_bias = RelativePositionBias(config, bidirectional=True, rngs=rngs)
    if config.embedding_norm:
      self.embedding_norm = Norm(config)
    self.layers = nnx.List(
      [
        TransformerLayer(config, cross_attention=False, rngs=rngs)
        for _ in range(config.encoder_layers)
      ]
    )
    if config.norm_position == "pre":
      self.final_norm = Norm(config)

  def _embed_text(self, input_ids: Array, token_embedding: TokenEmbedding) -> Array:
    # [B, S, D]
    return token_embedding.embed(input_ids) + self.positions(jnp.arange(input_ids.shape[1]))

  def _embed_image(self, pixel_values: Array) -> Array:
    cfg = self.config
    (h, w), (ph, pw), c = cfg.image_hw, cfg.patch_hw, cfg.num_channels
    if pixel_values.ndim != 4 or pixel_values.shape[1:] != (h, w, c):
      raise ValueError(
        f"pixel_values has shape {tuple(pixel_values.shape)}; this model expects [B, {h}, {w}, {c}] "
        f"(image_size={cfg.image_size}, num_channels={c})."
      )
    b = pixel_values.shape[0]
    patches = pixel_values.astype(jnp.float32).reshape(b, h // ph, ph, w // pw, pw, c)
    # [B, N, P]
    patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(b, cfg.num_patches, ph * pw * c)
    x = patches @ self.patch_embedding[...].astype(jnp.float32) + self.patch_bias[...]  # [B, N, D]
    if cfg.patch_positions == "2d":
      # [rows, cols, D]
      positions = (
        self.patch_row_positions[...][:, None, :] + self.patch_column_positions[...][None, :, :]
      )
      positions = positions.reshape(cfg.num_patches, cfg.d_model)
    else:
      positions = self.patch_positions[...]
    if cfg.image_cls_token:
      cls = jnp.broadcast_to(self.cls_token[...].astype(jnp.float32), (b, 1, cfg.d_model))
      x = jnp.concatenate([cls, x], axis=1)  # [B, 1 + N, D]
    return x + positions.astype(jnp.float32)

  def __call__(
    self,
    encoder_inputs: dict[str, Array],
    token_embedding: TokenEmbedding,
    dropout_rng: Array | None = None,
    remat: bool = False,
  ) -> tuple[Array, Array]:
    cfg = self.config
    if cfg.encoder == "image":
      x = self._embed_image(encoder_inputs["pixel_values"])
      mask = jnp.ones(x.shape[:2], jnp.int32)  # [B, N]
    else:
      input_ids = encoder_inputs["input_ids"]
      mask = encoder_inputs.get("attention_mask")
      mask = jnp.ones_like(input_ids) if mask is None else mask
      x = self._embed_text(input_ids, token_embedding)
    if cfg.embedding_norm:
      x = self.embedding_norm(x)
    rngs = split_rng(dropout_rng, len(self.layers) + 1)
    x = dropout(x, cfg.dropout_rate, rngs[-1]).astype(cfg.dtype)
    bias = padding_bias(mask)  # [B, 1, 1, S]
    if cfg.position_embedding == "relative":
      positions = jnp.arange(x.shape[1])
      bias = bias + self.relative_bias(positions, positions)  # [B, H, S, S]
    for layer, rng in zip(self.layers, rngs):
      x, _ = call_layer(layer, remat, x, bias, dropout_rng=rng)
    if cfg.norm_position == "pre":
      x = self.final_norm(x)
    return x, mask
