"""Running the Hugging Face PyTorch model the way deed-jax decodes, for parity checks and benchmarks.

`hf_generate` calls `generate` with every setting that would change the search turned off (HF reads
forced BOS/EOS, n-gram blocking, etc. from the config), or with the model's own generation config
(`plain=False`), and returns tokens laid out as our `DecodeOutput.tokens`: without the decoder start
token or prompt, pad after each sequence's first EOS.
"""

from __future__ import annotations

import numpy as np

# Settings HF would otherwise take from the model's config or generation_config.json.
PLAIN_SEARCH = dict(
  do_sample=False,
  forced_bos_token_id=None,
  forced_eos_token_id=None,
  no_repeat_ngram_size=0,
  repetition_penalty=1.0,
  min_new_tokens=None,  # (None, not 0: with min_length also set HF warns on every call)
  min_length=0,
  bad_words_ids=None,
  length_penalty=1.0,
  early_stopping=False,
)


def hf_generate(
  hf_model,
  inputs: dict,
  max_new_tokens: int | None,
  *,
  eos_id: int,
  pad_id: int,
  prompt=None,
  plain: bool = True,
  **search,
) -> tuple[np.ndarray, np.ndarray | None]:
  """-> tokens [B * num_return_sequences, <= max_new_tokens], beam scores (None for greedy).
  `prompt` ([B, P] ids, the start token first) is passed as `decoder_input_ids`; the tokens returned
  are those after it. `plain=False` and `max_new_tokens=None`: HF's generation config decides."""
  import torch  # pylint: disable=g-import-not-at-top

  extra = {} if prompt is None else {"decoder_input_ids": torch.as_tensor(np.asarray(prompt))}
  if max_new_tokens is not None:
    extra["max_new_tokens"] = max_new_tokens
  with torch.inference_mode():
    out = hf_model.generate(
      **inputs,
      **extra,
      return_dict_in_generate=True,
      output_scores=True,
      **{**(PLAIN_SEARCH if plain else {}), **search},
    )
  start = 1 if prompt is None else np.shape(prompt)[1]
  tokens = out.sequences[:, start:].cpu().numpy()  # drop the decoder start token / the prompt
  # What HF leaves after a hypothesis' EOS is filler (EOS or pad, by version); ours is pad.
  is_eos = tokens == eos_id
  tokens = np.where(np.cumsum(is_eos, axis=1) - is_eos > 0, pad_id, tokens)
  scores = out.get("sequences_scores")
  return tokens, None if scores is None else scores.cpu().numpy()


def pad_to(tokens: np.ndarray, length: int, pad_id: int) -> np.ndarray:
  """HF stops when every row is done; ours always returns `length` positions."""
  return np.pad(tokens, [(0, 0), (0, length - tokens.shape[1])], constant_values=pad_id)
