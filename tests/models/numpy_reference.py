"""An independent NumPy forward pass of the multi-exit encoder-decoder, one example at a time.

Written from the textbook definitions (loops over examples, explicit masks), sharing no code with
`deed_jax.models`; only the parameter names are common.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf


def _norm(x, p, cfg):
  if cfg.norm_type == "rmsnorm":
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + cfg.norm_eps) * p["scale"]
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + cfg.norm_eps) * p["scale"] + p["bias"]


def _act(x, name):
  if name in ("gelu",):
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))
  if name in ("gelu_tanh", "gated-gelu"):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
  return np.maximum(x, 0)


def _softmax(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def _attention(xq, xkv, p, allowed, cfg):
  """xq [T, D], xkv [S, D], allowed [T, S] bool."""
  heads = []
  dh = p["q"].shape[-1]
  for h in range(cfg.num_heads):
    q = xq @ p["q"][:, h] + (p["q_bias"][h] if cfg.attention_bias else 0)
    k = xkv @ p["k"][:, h] + (p["k_bias"][h] if cfg.attention_bias else 0)
    v = xkv @ p["v"][:, h] + (p["v_bias"][h] if cfg.attention_bias else 0)
    scores = q @ k.T * (dh**-0.5 if cfg.scale_attention else 1.0)
    scores = np.where(allowed, scores, -np.inf)
    heads.append(_softmax(scores) @ v @ p["o"][h])
  return sum(heads) + (p["o_bias"] if cfg.attention_bias else 0)


def _mlp(x, p, cfg):
  h = x @ p["wi"] + (p["wi_bias"] if cfg.mlp_bias else 0)
  if cfg.mlp_activation.startswith("gated-"):
    h = _act(x @ p["wi_gate"], cfg.mlp_activation) * h
  else:
    h = _act(h, cfg.mlp_activation)
  return h @ p["wo"] + (p["wo_bias"] if cfg.mlp_bias else 0)


def _layer(x, p, cfg, self_allowed, enc=None, enc_allowed=None):
  subs = [
    ("self_attention_norm", lambda h: _attention(h, h, p["self_attention"], self_allowed, cfg))
  ]
  if enc is not None:
    subs.append(
      ("cross_attention_norm", lambda h: _attention(h, enc, p["cross_attention"], enc_allowed, cfg))
    )
  subs.append(("mlp_norm", lambda h: _mlp(h, p["mlp"], cfg)))
  for norm_name, fn in subs:
    if cfg.norm_position == "pre":
      x = x + fn(_norm(x, p[norm_name], cfg))
    else:
      x = _norm(x + fn(x), p[norm_name], cfg)
  return x


def _sinusoid(positions, dim):
  half = dim // 2
  out = np.zeros((len(positions), dim))
  for i, pos in enumerate(positions):
    for j in range(half):
      angle = pos * math.exp(-math.log(10000.0) * j / (half - 1))
      out[i, j], out[i, half + j] = math.sin(angle), math.cos(angle)
  return out


def _positions(p, cfg, length):
  positions = np.arange(length) + cfg.position_offset
  if cfg.position_embedding == "learned":
    return p["table"][positions]
  return _sinusoid(positions, cfg.d_model)


def _embed_tokens(ids, params, cfg):
  x = params["decoder"]["token_embedding"]["embedding"][ids]
  return x * math.sqrt(cfg.d_model) if cfg.scale_embedding else x


def encode(params, cfg, encoder_inputs, b):
  """-> states [S, D], allowed key mask [S] for example b."""
  p = params["encoder"]
  if cfg.encoder == "image":
    image = encoder_inputs["pixel_values"][b]
    (ph, pw) = cfg.patch_hw
    rows, cols = image.shape[0] // ph, image.shape[1] // pw
    patches = [
      image[i * ph : (i + 1) * ph, j * pw : (j + 1) * pw, :].reshape(-1)
      for i in range(rows)
      for j in range(cols)
    ]
    if cfg.patch_positions == "2d":
      positions = np.stack(
        [
          p["patch_row_positions"][i] + p["patch_column_positions"][j]
          for i in range(rows)
          for j in range(cols)
        ]
      )
    else:
      positions = p["patch_positions"]
    x = np.stack(patches) @ p["patch_embedding"] + p["patch_bias"] + positions
    mask = np.ones(len(patches), bool)
  else:
    ids = encoder_inputs["input_ids"][b]
    mask = encoder_inputs["attention_mask"][b].astype(bool)
    x = _embed_tokens(ids, params, cfg) + _positions(p.get("positions", {}), cfg, len(ids))
  if cfg.embedding_norm:
    x = _norm(x, p["embedding_norm"], cfg)
  allowed = np.broadcast_to(mask[None, :], (len(x), len(x)))
  for i in range(cfg.encoder_layers):
    x = _layer(x, p["layers"][i], cfg, allowed)
  if cfg.norm_position == "pre":
    x = _norm(x, p["final_norm"], cfg)
  return x, mask


def exit_logits(params, cfg, encoder_inputs, decoder_input_ids):
  """Logits of every exit: [L, B, T, V], computed example by example."""
  out = []
  for b in range(len(decoder_input_ids)):
    enc, enc_mask = encode(params, cfg, encoder_inputs, b)
    p = params["decoder"]
    ids = decoder_input_ids[b]
    t = len(ids)
    x = _embed_tokens(ids, params, cfg) + _positions(p.get("positions", {}), cfg, t)
    if cfg.embedding_norm:
      x = _norm(x, p["embedding_norm"], cfg)
    causal = np.tril(np.ones((t, t), bool))
    enc_allowed = np.broadcast_to(enc_mask[None, :], (t, len(enc)))
    per_exit = []
    for i in range(cfg.decoder_layers):
      x = _layer(x, p["layers"][i], cfg, causal, enc, enc_allowed)
      a = p.get("adapters", {}).get(i)
      if cfg.adapter == "linear":
        h = x + x @ a["w"] + a["b"]
      elif cfg.adapter == "bottleneck":
        h = x + _act(x @ a["down"] + a["down_bias"], "gelu") @ a["up"] + a["up_bias"]
      else:
        h = x
      if cfg.norm_position == "pre":
        h = _norm(h, p["final_norm"], cfg)
      if cfg.tie_word_embeddings:
        if cfg.rescale_tied_output:
          h = h * cfg.d_model**-0.5
        logits = h @ params["decoder"]["token_embedding"]["embedding"].T
      else:
        logits = h @ params["lm_head"]
      if cfg.final_logits_bias:
        logits = logits + params["logits_bias"]
      per_exit.append(logits)
    out.append(np.stack(per_exit))
  return np.stack(out, axis=1)
