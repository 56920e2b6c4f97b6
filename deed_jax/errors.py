"""Errors that are a user's to fix (a config value, a flag, a path), as opposed to bugs.

They carry a message that names the value; the command-line tools (`deed_jax.cli`) print it as one
line and exit with status 2, where any other exception keeps its traceback.
"""


class UserError(ValueError):
  """A value a user gave that cannot work (also a `ValueError`, for callers that catch those)."""


class MissingPathError(FileNotFoundError):
  """A file or directory a user named that is not there (or is not what it should be)."""


class ExistingPathError(FileExistsError):
  """An output path a user named that already holds something (nothing is written into it)."""


USER_ERRORS = (UserError, MissingPathError, ExistingPathError)
