"""--help for the absl entry points (muse-train, muse-fit) when started by their console script.

absl's --help prints the docstring of `__main__` and the key flags of the module named by
sys.argv[0]. Behind a console script both are the generated script, not the module that defines
the flags, so `muse-train --help` printed a bare usage line and only --helpfull listed the flags.
"""
import sys

from absl import flags


def adopt_for_main(module_name: str, doc: str) -> None:
  """Makes module_name's flags (and its docstring, when __main__ has none) what --help shows."""
  for flag in flags.FLAGS.get_key_flags_for_module(module_name):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  main = sys.modules.get("__main__")
  if main is not None and not getattr(main, "__doc__", None):
    main.__doc__ = doc
