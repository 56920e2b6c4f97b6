"""Tiny random Hugging Face models of every supported family, built offline from configs, and inputs.

Variants differ in the options the conversion has to get right: head counts, vocab sizes, pre/post
norm, tied/untied heads, scale_embedding, activations, T5's d_kv != d_model / heads, and a ViT encoder
narrower than its decoder (enc_to_dec_proj).
"""

from __future__ import annotations

import numpy as np
import torch
import transformers as T

from deed_jax.convert.parity import PLAIN_SEARCH

IMAGE_HW = (16, 24)  # ViT: 8 x 8 patches, a 2 x 3 grid
DONUT_HW = (64, 88)  # DonutSwin: 4 x 4 patches, a 16 x 22 grid


def _bart_options(**overrides) -> dict:
  values = dict(
    vocab_size=60,
    d_model=32,
    encoder_layers=2,
    decoder_layers=3,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=48,
    decoder_ffn_dim=48,
    max_position_embeddings=40,
    forced_eos_token_id=None,
    dropout=0.0,
  )
  values.update(overrides)
  return values


def _t5_options(**overrides) -> dict:
  values = dict(
    vocab_size=64,
    d_model=32,
    d_kv=8,
    d_ff=48,
    num_layers=4,
    num_decoder_layers=3,
    num_heads=4,
    decoder_start_token_id=0,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=20,
    dropout_rate=0.0,
  )
  values.update(overrides)
  return values


def _vision(decoder_class, decoder_width: int, **decoder_overrides):
  vit = T.ViTConfig(
    hidden_size=24,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=40,
    image_size=IMAGE_HW,
    patch_size=8,
    num_channels=3,
  )
  # encoder_layers = decoder_layers: HF sizes a decoder-only BART's KV cache by `num_hidden_layers`,
  # which BartConfig maps to encoder_layers.
  decoder = decoder_class(
    **_bart_options(
      d_model=decoder_width,
      is_decoder=True,
      encoder_layers=3,
      add_cross_attention=True,
      **decoder_overrides,
    )
  )
  config = T.VisionEncoderDecoderConfig.from_encoder_decoder_configs(vit, decoder)
  config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = 2, 1, 2
  return T.VisionEncoderDecoderModel(config)


def donut(decoder_width: int, **decoder_overrides):
  """DonutSwin (3 stages; a 16 x 22 patch grid, so windows pad and the second merge is odd) + mBART."""
  swin = T.DonutSwinConfig(
    image_size=list(DONUT_HW),
    patch_size=4,
    embed_dim=8,
    depths=[2, 2, 2],
    num_heads=[2, 2, 4],
    window_size=4,
  )
  decoder = T.MBartConfig(
    **_bart_options(
      d_model=decoder_width,
      is_decoder=True,
      encoder_layers=3,
      add_cross_attention=True,
      **decoder_overrides,
    )
  )
  config = T.VisionEncoderDecoderConfig.from_encoder_decoder_configs(swin, decoder)
  config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = 2, 1, 2
  return T.VisionEncoderDecoderModel(config)


BUILDERS = {
  "bart": lambda: T.BartForConditionalGeneration(T.BartConfig(**_bart_options())),
  "bart_untied_scaled_relu": lambda: T.BartForConditionalGeneration(
    T.BartConfig(
      **_bart_options(
        vocab_size=75,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        scale_embedding=True,
        tie_word_embeddings=False,
        activation_function="relu",
      )
    )
  ),
  "mbart": lambda: T.MBartForConditionalGeneration(
    T.MBartConfig(**_bart_options(scale_embedding=True))
  ),
  "mbart_8heads_gelu_new": lambda: T.MBartForConditionalGeneration(
    T.MBartConfig(
      **_bart_options(
        encoder_attention_heads=8, decoder_attention_heads=8, activation_function="gelu_new"
      )
    )
  ),
  "t5_v1_0": lambda: T.T5ForConditionalGeneration(T.T5Config(**_t5_options())),
  "t5_v1_1": lambda: T.T5ForConditionalGeneration(
    T.T5Config(
      **_t5_options(
        d_kv=6,
        num_heads=3,
        vocab_size=70,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
      )
    )
  ),
  "vit_bart": lambda: _vision(T.BartConfig, 32),  # 24-wide ViT -> enc_to_dec_proj -> 32-wide BART
  "vit_mbart_untied": lambda: _vision(
    T.MBartConfig, 24, tie_word_embeddings=False, scale_embedding=True
  ),
  "donut": lambda: donut(32),  # Swin's last stage is 32 wide: no projection
  "donut_projected": lambda: donut(24),
}


def build(name: str, seed: int = 0) -> torch.nn.Module:
  """A random model in eval mode. Every weight is random (HF zero-inits biases), so biases matter."""
  torch.manual_seed(seed)
  return randomized(BUILDERS[name]().eval())


def randomized(model: torch.nn.Module) -> torch.nn.Module:
  """Every floating weight of `model` redrawn from N(0, 0.3^2), in place."""
  with torch.no_grad():
    for name, tensor in model.state_dict().items():
      if tensor.is_floating_point() and "relative_position_index" not in name:
        tensor.normal_(0.0, 0.3)
  return model


def is_image(model) -> bool:
  return isinstance(model, T.VisionEncoderDecoderModel)


def image_hw(model) -> tuple[int, int]:
  return DONUT_HW if model.config.encoder.model_type == "donut-swin" else IMAGE_HW


def random_inputs(model, batch: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
  """HF-side encoder inputs: text ids with padded rows, or NCHW pixels."""
  g = torch.Generator().manual_seed(seed)
  if is_image(model):
    return {"pixel_values": torch.randn(batch, 3, *image_hw(model), generator=g)}
  ids = torch.randint(3, model.config.vocab_size, (batch, 9), generator=g)
  mask = torch.ones_like(ids)
  mask[1, 6:] = 0
  mask[2, 3:] = 0
  ids = torch.where(mask.bool(), ids, model.config.pad_token_id)
  return {"input_ids": ids, "attention_mask": mask}


def to_ours(inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
  """The same inputs as deed-jax takes them (images NHWC)."""
  if "pixel_values" in inputs:
    return {"pixel_values": inputs["pixel_values"].permute(0, 2, 3, 1).numpy()}
  return {k: v.numpy() for k, v in inputs.items()}


def copy_task_batch(
  model, batch: int, seed: int, lengths: tuple[int, ...] | None = None
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
  """A copy task: the target is the source's tokens then EOS. Images draw token i as a fixed random
  8x8 template in cell i of a 2 x 3 grid (left to right, top to bottom), blank after the last token.
  `lengths` (one per row) fixes how many tokens each row copies; by default they are random."""
  g = torch.Generator().manual_seed(seed)
  text = model.config.get_text_config(decoder=True)
  eos, pad = model.config.eos_token_id, model.config.pad_token_id
  num_tokens = 6 if is_image(model) else 8  # image: one token per patch of the 2 x 3 grid
  vocab = range(3, 13) if is_image(model) else range(3, text.vocab_size)
  random_lengths = torch.randint(2, num_tokens + 1, (batch,), generator=g)
  lengths = random_lengths if lengths is None else torch.tensor(lengths)
  tokens = torch.tensor(vocab)[torch.randint(0, len(vocab), (batch, num_tokens), generator=g)]
  real = torch.arange(num_tokens)[None, :] < lengths[:, None]  # [B, n]
  labels = torch.full((batch, num_tokens + 1), -100)
  labels[:, :num_tokens] = torch.where(real, tokens, -100)
  labels[torch.arange(batch), lengths] = eos
  if is_image(model):
    templates = torch.randn(13, 3, 8, 8, generator=torch.Generator().manual_seed(123))
    patches = templates[tokens] * real[:, :, None, None, None]  # [B, 6, 3, 8, 8]
    pixels = (
      patches.reshape(batch, 2, 3, 3, 8, 8).permute(0, 3, 1, 4, 2, 5).reshape(batch, 3, *IMAGE_HW)
    )
    if image_hw(model) != IMAGE_HW:  # the same drawing, scaled to this model's input size
      pixels = torch.nn.functional.interpolate(pixels, size=image_hw(model), mode="nearest")
    return {"pixel_values": pixels}, labels
  ids = torch.where(real, tokens, pad)
  return {"input_ids": ids, "attention_mask": real.long()}, labels


# The rows the generation parity tests decode: one copy length each, so that a model which has learned
# the task ends them with EOS at four different steps, all before the tests' token limit.
PARITY_LENGTHS = (2, 6, 3, 5)
PARITY_MAX_NEW_TOKENS = 10


def parity_batch(model) -> dict[str, torch.Tensor]:
  return copy_task_batch(model, len(PARITY_LENGTHS), seed=7, lengths=PARITY_LENGTHS)[0]


# How far every decision of a trained model on the parity batch must be from flipping, in logits (greedy)
# or log-probs (beam): float differences between PyTorch and XLA (~1e-5) then cannot flip one.
DECISION_MARGIN = 1e-3
# The beam settings the parity tests use; (length_penalty, early_stopping).
PARITY_BEAMS = 4
PARITY_BEAM_SEARCHES = ((0.6, False), (2.0, True))


class Jitter(T.LogitsProcessor):
  """Adds uniform noise in [-DECISION_MARGIN, DECISION_MARGIN] to every score."""

  def __init__(self, seed: int):
    self.generator = torch.Generator().manual_seed(seed)

  def __call__(self, input_ids, scores):
    noise = torch.rand(scores.shape, generator=self.generator, dtype=scores.dtype)
    return scores + DECISION_MARGIN * (2 * noise - 1)


def _generate(model, inputs, **search):
  """HF `generate` with the same search settings as `parity.hf_generate`, keeping its raw output."""
  with torch.inference_mode():
    return model.generate(
      **inputs,
      max_new_tokens=PARITY_MAX_NEW_TOKENS,
      return_dict_in_generate=True,
      output_scores=True,
      **{**PLAIN_SEARCH, **search},
    )


def generation_problem(model, inputs: dict[str, torch.Tensor]) -> str | None:
  """Why generations on `inputs` do not yet test decoding well (None when they do). Greedy: every row
  ends with EOS before the limit, at >= 3 different lengths, and each token beats the runner-up by
  DECISION_MARGIN. Beam search (each of PARITY_BEAM_SEARCHES): scores jittered by DECISION_MARGIN
  give the same hypotheses, on three draws (a near-tie between candidates would show)."""
  eos = model.config.eos_token_id
  out = _generate(model, inputs, num_beams=1)
  tokens = out.sequences[:, 1:]  # [B, n <= PARITY_MAX_NEW_TOKENS]
  is_eos = (tokens == eos).long()
  if not is_eos.any(1).all():
    return f"greedy rows without EOS: {tokens.tolist()}"
  lengths = is_eos.argmax(1) + 1  # [B] tokens up to and including the first EOS
  if len(set(lengths.tolist())) < 3:
    return f"too few distinct greedy lengths: {tokens.tolist()}"
  top2 = torch.stack(out.scores, 1).topk(2, -1).values  # [B, n, 2]
  live = torch.arange(tokens.shape[1])[None] < lengths[:, None]  # [B, n]
  gap = (top2[..., 0] - top2[..., 1])[live].min().item()
  if gap < DECISION_MARGIN:
    return f"a greedy choice wins by only {gap:.2g}"
  for length_penalty, early_stopping in PARITY_BEAM_SEARCHES:
    search = dict(
      num_beams=PARITY_BEAMS,
      num_return_sequences=PARITY_BEAMS,
      length_penalty=length_penalty,
      early_stopping=early_stopping,
    )
    plain = _generate(model, inputs, **search).sequences
    for seed in range(3):
      jittered = _generate(
        model, inputs, logits_processor=T.LogitsProcessorList([Jitter(seed)]), **search
      ).sequences
      if plain.shape != jittered.shape or not torch.equal(plain, jittered):
        return f"beam search (length_penalty={length_penalty}) has a near-tie"
  return None


MIN_STEPS = {"donut": 300}  # the tiny Swin needs longer before its outputs depend on the image
MAX_STEPS = 1500
CHECK_EVERY = 25


def build_trained(name: str, seed: int = 0) -> torch.nn.Module:
  """HF's own init, then Adam steps on the copy task until greedy and beam outputs depend on the input,
  vary from token to token and end with EOS at different lengths (random weights emit one token
  forever): training goes on until `generation_problem` finds nothing wrong on the parity batch.
  A fixed step count would not do: a few hundred Adam steps end somewhere else on another CPU."""
  torch.manual_seed(seed)
  model = BUILDERS[name]()
  optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
  check = parity_batch(model)
  problem = "not trained"
  for step in range(MAX_STEPS):
    model.train()
    inputs, labels = copy_task_batch(model, 32, seed=1000 + step)
    loss = model(**inputs, labels=labels).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step + 1 >= MIN_STEPS.get(name, 150) and (step + 1) % CHECK_EVERY == 0:
      problem = generation_problem(model.eval(), check)
      if problem is None:
        return model
  raise AssertionError(f"{name} did not learn the copy task in {MAX_STEPS} steps: {problem}")
