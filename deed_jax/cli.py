"""Running a deed-jax command: absl's `app.run`, with user errors printed as one line."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import NoReturn

from absl import app

from deed_jax.errors import USER_ERRORS


def _fail(message: str) -> NoReturn:
  print(f"error: {' '.join(message.split())}", file=sys.stderr)
  sys.exit(2)


def run(main: Callable[[list[str]], None]) -> None:
  """`app.run(main)`; a `UserError` or `MissingPathError` prints `error: <message>` on one line of
  stderr and exits with status 2, without a traceback (other exceptions are bugs and keep theirs).
  So does a `--config.<path>=...` override naming an option the config does not have (ml_collections
  raises AttributeError while absl parses the flags, before `main` runs)."""
  started = False

  def checked(argv):
    nonlocal started
    started = True
    try:
      return main(argv)
    except USER_ERRORS as e:
      _fail(str(e))

  try:
    app.run(checked)
  except (AttributeError, KeyError) as e:
    if started:
      raise
    unknown_option(e)


def unknown_option(error: Exception) -> NoReturn:
  """Refuse a `--config.<path>=...` override of an option the config lacks (ml_collections' error
  names it, quoted, maybe with a suggestion), in one line naming the flag."""
  match = re.search(r"[A-Za-z_][\w.]*", str(error))  # the first name in it
  name = match.group() if match else str(error)
  flags = [arg for arg in sys.argv[1:] if arg.startswith("--config") and name in arg]
  _fail(f"{flags[0] if flags else name}: the config has no option {name!r}.")
