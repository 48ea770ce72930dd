"""The errors a user can cause, in one place.

Every entry point reports a `UsageError` (a flag, path, file, prompt, config or checkpoint that
cannot be used: the message names it and what was expected) in one line without a traceback, and
re-raises anything else, which is a bug. The library raises the subclasses where they arise, so a
CLI needs one `except UsageError` instead of a list of module-specific classes; `report` is that
one except, shared by the CLIs.
"""
import sys


class UsageError(ValueError):
  """Input the user gave cannot be used; the message names it and what was expected."""


class CheckpointError(UsageError, RuntimeError):
  """A checkpoint that cannot be read or written, or does not fit the configured model.
  (A RuntimeError as well, as it was before it joined UsageError.)"""


class PipelineError(UsageError):
  """Models given to the sampling pipeline that are missing, unreadable or do not fit together."""


# What an entry point reports in one line: every user error above, a file that is not there, an
# optional package that is not installed. Anything else is a bug and keeps its traceback.
REPORTED = (UsageError, FileNotFoundError, ImportError)


def report(prog: str, fn, *args, also: tuple = ()) -> int:
  """fn(*args), with REPORTED (and `also`) errors printed as "PROG: error: ..." on stderr and
  exit code 1."""
  try:
    return fn(*args)
  except REPORTED + tuple(also) as e:
    print(f"{prog}: error: {e}", file=sys.stderr)
    return 1
