"""Converted tiny models, shared by the conversion tests: each variant is saved by HF, converted to a
real orbax workdir on disk and loaded back once per test session."""

from __future__ import annotations

import pytest

# The conversion tests build their reference models with PyTorch `transformers`: without the convert
# and pytorch extras they are skipped (everything else runs).
torch = pytest.importorskip(
  "torch", reason="the conversion tests need PyTorch (pip install -e '.[convert,pytorch]')"
)
pytest.importorskip(
  "transformers", reason="the conversion tests need transformers (the convert extra)"
)

from deed_jax import checkpoint  # noqa: E402 (after the importorskips)
from deed_jax.convert import hf_to_orbax  # noqa: E402 (after the importorskips)
from tests.convert import hf_models  # noqa: E402 (after the importorskips)

# One intra-op thread: the suite runs on 2 xdist workers, and torch's spinning OpenMP threads would
# otherwise starve the other worker's XLA compiles (a 35 s test took 390 s that way).
torch.set_num_threads(1)


class Converted:
  """`trained`: a few steps on the copy task (varied generations); else every weight random."""

  def __init__(self, name: str, root, trained: bool):
    self.name = name
    self.hf_model = hf_models.build_trained(name) if trained else hf_models.build(name)
    self.hf_dir = str(root / "hf")
    self.hf_model.save_pretrained(self.hf_dir)
    self.workdir = str(root / "orbax")
    hf_to_orbax(self.hf_dir, self.workdir)
    self.model = checkpoint.load_model(self.workdir)


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
  cache = {}

  def get(name: str, trained: bool = False) -> Converted:
    if (name, trained) not in cache:
      cache[name, trained] = Converted(name, tmp_path_factory.mktemp(name), trained)
    return cache[name, trained]

  return get
