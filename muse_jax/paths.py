"""Paths a user types, made absolute once where they enter the program.

Orbax refuses relative checkpoint paths (and its metadata readers quietly return nothing for
them), and a relative path saved in a training config means something else from another working
directory. So every entry point (muse-train and the cli/ commands) resolves its path flags and a
config's path fields here, before anything reads or saves: `~` expanded, relative -> absolute
against the current directory, URL-like paths (gs://..., s3://..., file://...) and '' untouched.
"""
import os
import re
from typing import Iterable, Optional

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

# Dotted fields of the training configs (configs/*.py) that hold local paths or globs.
# data.path is a TFDS dataset name, not a path, when data.source is "tfds".
CONFIG_PATH_FIELDS = ("init_from", "data.path", "data.captions_file", "data.tfds_data_dir",
                      "data.tokenizer", "data.tokenizer_hi", "text_encoder.path",
                      "loss.perceptual_vgg_weights", "loss.perceptual_lin_weights")


def is_url(path: str) -> bool:
  """gs://bucket/x, s3://..., file://...: left to the filesystem layer (etils.epath) as given."""
  return bool(_URL.match(str(path)))


def resolve(path: Optional[str]) -> Optional[str]:
  """A user's path -> absolute with ~ expanded; None, '' and URL-like paths are returned as they
  are. Globs stay globs ('enc/train-*' -> '/cwd/enc/train-*')."""
  if not path or is_url(path):
    return path
  return os.path.abspath(os.path.expanduser(str(path)))


def resolve_args(args, names: Iterable[str]):
  """Resolves the attributes `names` of an argparse Namespace in place (absent or None: left);
  returns args."""
  for name in names:
    value = getattr(args, name, None)
    if isinstance(value, str):
      setattr(args, name, resolve(value))
  return args


def resolve_config(config):
  """Resolves CONFIG_PATH_FIELDS of a training ConfigDict in place (fields a stage's config does
  not have are skipped; a locked config takes new values of existing fields); returns it."""
  for dotted in CONFIG_PATH_FIELDS:
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
      node = node.get(part) if hasattr(node, "get") else None
    if node is None or not hasattr(node, "get") or not isinstance(node.get(leaf), str):
      continue
    if dotted == "data.path" and node.get("source") == "tfds":
      continue
    node[leaf] = resolve(node[leaf])
  return config
