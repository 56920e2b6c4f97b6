"""Control flow the decoders share."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import jax
import jax.numpy as jnp

Carry = TypeVar("Carry")


def run_once(predicate: jax.Array, fn: Callable[[Carry], Carry], carry: Carry) -> Carry:
  """fn(carry) if predicate else carry, as a `while_loop` that runs at most once.

  Not a `lax.cond`: a cond copies the KV caches it carries (XLA copied them through every cond form
  tried, docs/decoding.md), and on XLA:CPU a run-once loop is also cheaper."""
  body = lambda c: (jnp.bool_(False), fn(c[1]))
  return jax.lax.while_loop(lambda c: c[0], body, (predicate, carry))[1]
