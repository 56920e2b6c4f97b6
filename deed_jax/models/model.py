"""`MultiExitEncoderDecoder`: encoder + multi-exit decoder + one LM head shared by all exits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from deed_jax.errors import UserError
from deed_jax.models.config import IMAGE_ENCODERS, ModelConfig
from deed_jax.models.decoder import Decoder
from deed_jax.models.encoder import Encoder
from deed_jax.models.head_loss import HeadWeights
from deed_jax.models.layers import TokenEmbedding, param, split_rng
from deed_jax.models.swin import SwinEncoder

Array = jax.Array


# The keys of a batch the encoder reads (the rest belong to the decoder and the loss).
ENCODER_KEYS = ("pixel_values", "input_ids", "attention_mask")


def encoder_inputs(batch: dict) -> dict:
  """The encoder's part of a batch."""
  return {k: batch[k] for k in ENCODER_KEYS if k in batch}


def check_token_ids(ids, vocab_size: int, name: str) -> None:
  """Raise if concrete token ids fall outside [0, vocab_size). Traced ids are checked by the caller."""
  if isinstance(ids, jax.core.Tracer):
    return
  ids = np.asarray(ids)
  if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
    bad = ids[(ids < 0) | (ids >= vocab_size)]
    raise UserError(
      f"{name} holds token id(s) {sorted(set(bad.tolist()))[:8]} outside the vocabulary "
      f"[0, {vocab_size})."
    )


class MultiExitEncoderDecoder(nnx.Module):
  """Every decoder layer can predict: logits of all exits come from one call, shape [L, B, T, V]."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.encoder = (
      SwinEncoder(config, rngs)
      if config.encoder == "swin"
      else Encoder(config.encoder_config, rngs)
    )
    if config.encoder_d_model != config.d_model:  # HF VisionEncoderDecoderModel's enc_to_dec_proj.
      self.encoder_projection = param(
        rngs, (config.encoder_d_model, config.d_model), (None, "embed"), dtype=config.param_dtype
      )
      self.encoder_projection_bias = param(
        None, (config.d_model,), ("embed",), "zeros", config.param_dtype
      )
    self.decoder = Decoder(config, rngs)
    if not config.tie_word_embeddings:
      self.lm_head = param(
        rngs, (config.d_model, config.vocab_size), ("embed", "vocab"), dtype=config.param_dtype
      )
    if config.final_logits_bias:
      self.logits_bias = param(None, (config.vocab_size,), ("vocab",), "zeros", config.param_dtype)

  @property
  def token_embedding(self) -> TokenEmbedding:
    """The one token table (owned by the decoder; the text encoder and a tied head read it)."""
    return self.decoder.token_embedding

  # -- validation -----------------------------------------------------------------------------------
  def check_inputs(self, encoder_inputs: dict, decoder_input_ids=None) -> None:
    """Clear errors for inputs this model cannot take (shapes always; id ranges when concrete)."""
    cfg = self.config
    pixels = cfg.encoder in IMAGE_ENCODERS
    expected = {"pixel_values"} if pixels else {"input_ids", "attention_mask"}
    required = {"pixel_values"} if pixels else {"input_ids"}
    keys = set(encoder_inputs)
    if not required <= keys or not keys <= expected:
      raise UserError(
        f"encoder_inputs has keys {sorted(keys)}; a {cfg.encoder!r} encoder takes "
        f"{sorted(expected)} (required: {sorted(required)})."
      )
    if cfg.encoder == "text":
      length = encoder_inputs["input_ids"].shape[1]
      if cfg.position_embedding != "relative" and length > cfg.max_source_length:
        raise UserError(
          f"input_ids length {length} exceeds max_source_length={cfg.max_source_length}."
        )
      check_token_ids(encoder_inputs["input_ids"], cfg.vocab_size, "input_ids")
    if decoder_input_ids is not None:
      length = decoder_input_ids.shape[1]
      if length > cfg.max_target_length:
        raise UserError(
          f"decoder_input_ids length {length} exceeds max_target_length={cfg.max_target_length}."
        )
      check_token_ids(decoder_input_ids, cfg.vocab_size, "decoder_input_ids")

  # -- pieces used by training and decoding ---------------------------------------------------------
  def encode(
    self, encoder_inputs: dict, dropout_rng: Array | None = None, remat: bool = False
  ) -> tuple[Array, Array]:
    """-> encoder states [B, S, D], encoder mask [B, S]. `remat` rematerialises every layer."""
    # [B, S, D_enc]
    states, mask = self.encoder(encoder_inputs, self.token_embedding, dropout_rng, remat=remat)
    if self.config.encoder_d_model != self.config.d_model:
      dtype = states.dtype
      states = states @ self.encoder_projection[...].astype(dtype) + self.encoder_projection_bias[
        ...
      ].astype(dtype)  # [B, S, D]
    return states, mask

  def exit_features(
    self,
    encoder_inputs: dict,
    decoder_input_ids: Array,
    *,
    num_layers: int | None = None,
    dropout_rng: Array | None = None,
    return_states: bool = False,
    remat: bool = False,
  ) -> Array | tuple[Array, Array]:
    """Teacher-forced features of exits 1..num_layers (pre-head): [L', B, T, D] (and with
    `return_states` the layer states [L' + 1, B, T, D], the embedding first). `remat`
    rematerialises every encoder and decoder layer in the backward pass."""
    self.check_inputs(encoder_inputs, decoder_input_ids)
    enc_rng, dec_rng = split_rng(dropout_rng, 2)
    encoder_out, encoder_mask = self.encode(encoder_inputs, enc_rng, remat=remat)
    return self.decoder(
      decoder_input_ids,
      encoder_out,
      encoder_mask,
      num_layers=num_layers,
      dropout_rng=dec_rng,
      return_states=return_states,
      remat=remat,
    )

  def head_weights(self) -> HeadWeights:
    """The shared LM head as float32 weights (the table a tied head shares with the embedding)."""
    cfg = self.config
    bias = self.logits_bias[...].astype(jnp.float32) if cfg.final_logits_bias else None
    if cfg.tie_word_embeddings:
      return HeadWeights(self.token_embedding.embedding[...].astype(jnp.float32), bias, 0)
    return HeadWeights(self.lm_head[...].astype(jnp.float32), bias, 1)

  def head_inputs(self, features: Array) -> Array:
    """Exit features as the head reads them: float32, rescaled where a tied head rescales. [..., D]"""
    cfg = self.config
    h = features.astype(jnp.float32)
    return h * cfg.d_model**-0.5 if cfg.tie_word_embeddings and cfg.rescale_tied_output else h

  def logits(self, features: Array) -> Array:
    """The shared LM head: [..., D] -> [..., V] float32."""
    return self.head_weights().logits(self.head_inputs(features))

  def __call__(
    self, encoder_inputs: dict, decoder_input_ids: Array, *, dropout_rng: Array | None = None
  ) -> Array:
    """Logits of every exit: [L, B, T, V] float32. For training, prefer `exit_features` + a loss that
    applies `logits` one exit at a time (see `deed_jax.training.losses`)."""
    return self.logits(
      self.exit_features(encoder_inputs, decoder_input_ids, dropout_rng=dropout_rng)
    )
