"""A Swin Transformer image encoder (Donut's DonutSwin): windowed attention over a patch grid that is
merged 2 x 2 between stages, so the encoder emits few, wide states.

Each block: LayerNorm -> attention inside `window x window` windows (every other block with the
windows shifted by half a window and a mask keeping attention inside each original region), with a
learned relative position bias -> residual; LayerNorm -> MLP -> residual. All shapes are static, so
the window layout, masks and bias indices are numpy constants built at trace time.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from deed_jax.models.config import ModelConfig
from deed_jax.models.layers import Attention, Mlp, Norm, TokenEmbedding, call_layer, param

Array = jax.Array
_MASKED = -100.0  # Swin's additive mask between shifted-window regions


def relative_position_index(window: int) -> np.ndarray:
  """[w*w, w*w] index into the [(2w - 1)^2, heads] bias table for each (query, key) pair."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
  # [N, N, 2]
  relative = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
  return relative[..., 0] * (2 * window - 1) + relative[..., 1]


def _partition(x: Array, window: int) -> Array:
  """[B, H, W, C] -> [B * nW, w*w, C], windows in row-major order per image (jax or numpy arrays)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, window * window, c)


def _merge(windows: Array, window: int, h: int, w: int) -> Array:
  """[B * nW, w*w, C] -> [B, H, W, C] (the inverse of `_partition`)."""
  c = windows.shape[-1]
  x = windows.reshape(-1, h // window, w // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, h, w, c)


def shifted_window_mask(h: int, w: int, window: int, shift: int) -> np.ndarray:
  """[nW, w*w, w*w]: 0 within a region of the rolled image, -100 across regions (Swin's mask)."""
  regions = np.zeros((h, w), np.float32)
  slices = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
  for i, (rows, cols) in enumerate((r, c) for r in slices for c in slices):
    regions[rows, cols] = i
  ids = _partition(regions[None, :, :, None], window)[
    ..., 0
  ]  # [nW, w*w], numpy: a trace-time constant
  return np.where(ids[:, None, :] != ids[:, :, None], _MASKED, 0.0).astype(np.float32)


class SwinBlock(nnx.Module):
  """One (shifted-)window block of a stage with `config.d_model` channels."""

  def __init__(self, config: ModelConfig, window: int, shift: int, rngs: nnx.Rngs):
    self.window, self.shift = window, shift
    self.attention_norm = Norm(config)
    self.attention = Attention(config, rngs)
    self.relative_bias = param(
      rngs, ((2 * window - 1) ** 2, config.num_heads), (None, "heads"), dtype=config.param_dtype
    )
    self.mlp_norm = Norm(config)
    self.mlp = Mlp(config, rngs)

  def __call__(self, x: Array) -> Array:  # [B, H, W, C] -> [B, H, W, C]
    b, h, w, c = x.shape
    win, shift = self.window, self.shift
    y = self.attention_norm(x)
    pad_h, pad_w = (-h) % win, (-w) % win
    y = jnp.pad(y, [(0, 0), (0, pad_h), (0, pad_w), (0, 0)])
    hp, wp = h + pad_h, w + pad_w
    if shift:
      y = jnp.roll(y, (-shift, -shift), axis=(1, 2))
    windows = _partition(y, win)  # [B * nW, w*w, C]
    index = relative_position_index(win)
    bias = jnp.transpose(self.relative_bias[...].astype(jnp.float32)[index], (2, 0, 1))  # [H, N, N]
    bias = jnp.broadcast_to(bias, (b, (hp // win) * (wp // win)) + bias.shape)  # [B, nW, H, N, N]
    if shift:
      bias = bias + shifted_window_mask(hp, wp, win, shift)[None, :, None]
    bias = bias.reshape((-1,) + bias.shape[2:])  # [B * nW, H, N, N]
    q = self.attention.project_q(windows)
    k, v = self.attention.project_kv(windows)
    y = _merge(self.attention.attend(q, k, v, bias), win, hp, wp)  # [B, Hp, Wp, C]
    if shift:
      y = jnp.roll(y, (shift, shift), axis=(1, 2))
    x = x + y[:, :h, :w]
    return x + self.mlp(self.mlp_norm(x).reshape(b, h * w, c)).reshape(b, h, w, c)


class PatchMerging(nnx.Module):
  """2 x 2 neighbours -> LayerNorm(4C) -> Linear(4C -> 2C, no bias).
  [B, H, W, C] -> [B, H/2, W/2, 2C]."""

  def __init__(self, config: ModelConfig, channels: int, rngs: nnx.Rngs):
    self.norm = Norm(dataclasses.replace(config, d_model=4 * channels))
    self.reduction = param(
      rngs, (4 * channels, 2 * channels), ("mlp", "embed"), dtype=config.param_dtype
    )

  def __call__(self, x: Array) -> Array:
    x = jnp.pad(x, [(0, 0), (0, x.shape[1] % 2), (0, x.shape[2] % 2), (0, 0)])
    x = jnp.concatenate(
      [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1
    )
    return self.norm(x) @ self.reduction[...].astype(x.dtype)


def stage_configs(config: ModelConfig) -> list[ModelConfig]:
  """Per stage: the config its blocks are built with (width, heads, MLP width)."""
  base = config.encoder_config
  return [
    dataclasses.replace(
      base,
      d_model=config.swin_embed_dim * 2**i,
      num_heads=heads,
      head_dim=None,
      d_ff=int(config.swin_embed_dim * 2**i * config.swin_mlp_ratio),
      attention_bias=True,
      mlp_bias=True,
      norm_type="layernorm",
    )
    for i, heads in enumerate(config.swin_heads)
  ]


def stage_resolutions(config: ModelConfig) -> list[tuple[int, int]]:
  rows, cols = config.patch_grid
  out = []
  for _ in config.swin_depths:
    out.append((rows, cols))
    rows, cols = (rows + 1) // 2, (cols + 1) // 2
  return out


class SwinEncoder(nnx.Module):
  """pixel_values [B, H, W, C] -> (states [B, N_last, C_last], mask [B, N_last])."""

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    self.config = config
    (ph, pw), channels, dim = config.patch_hw, config.num_channels, config.swin_embed_dim
    stage_config = stage_configs(config)
    self.patch_embedding = param(
      rngs, (ph * pw * channels, dim), (None, "embed"), dtype=config.param_dtype
    )
    self.patch_bias = param(None, (dim,), ("embed",), "zeros", config.param_dtype)
    self.embedding_norm = Norm(stage_config[0])
    self.stages = nnx.List()
    self.merges = nnx.List()
    for i, (depth, resolution) in enumerate(zip(config.swin_depths, stage_resolutions(config))):
      window, shift = config.swin_window_size, config.swin_window_size // 2
      if min(resolution) <= window:  # the whole grid fits one window: no shifting
        window, shift = min(resolution), 0
      self.stages.append(
        nnx.List(
          [SwinBlock(stage_config[i], window, shift if j % 2 else 0, rngs) for j in range(depth)]
        )
      )
      if i + 1 < len(config.swin_depths):
        self.merges.append(PatchMerging(config.encoder_config, stage_config[i].d_model, rngs))

  def __call__(
    self,
    encoder_inputs: dict,
    token_embedding: TokenEmbedding | None = None,
    dropout_rng: Array | None = None,
    remat: bool = False,
  ) -> tuple[Array, Array]:
    # Swin has no token input; dropout is not applied in the encoder.
    del (
      token_embedding,
      dropout_rng,
    )
    cfg = self.config
    (h, w), (ph, pw), c = cfg.image_hw, cfg.patch_hw, cfg.num_channels
    pixel_values = encoder_inputs["pixel_values"]
    if pixel_values.ndim != 4 or pixel_values.shape[1:] != (h, w, c):
      raise ValueError(
        f"pixel_values has shape {tuple(pixel_values.shape)}; this model expects "
        f"[B, {h}, {w}, {c}] (image_size={cfg.image_size}, num_channels={c})."
      )
    b, (rows, cols) = pixel_values.shape[0], cfg.patch_grid
    patches = pixel_values.astype(jnp.float32).reshape(b, rows, ph, cols, pw, c)
    patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(b, rows, cols, ph * pw * c)
    x = self.embedding_norm(
      patches @ self.patch_embedding[...].astype(jnp.float32) + self.patch_bias[...]
    ).astype(cfg.dtype)  # [B, rows, cols, D0]
    for i, blocks in enumerate(self.stages):
      for block in blocks:
        x = call_layer(block, remat, x)
      if i < len(self.merges):
        x = self.merges[i](x)
    states = x.reshape(b, -1, x.shape[-1])  # [B, N_last, C_last]
    return states, jnp.ones(states.shape[:2], jnp.int32)
