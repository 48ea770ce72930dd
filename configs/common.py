"""Shared config pieces: argument parsing, mesh, checkpoint and train defaults."""
import ml_collections

from muse_jax.parallel import axes


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses "size=tiny,foo=bar" (the part after ':' in --config) over typed defaults."""
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"config argument {item!r} must look like key=value")
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
    kind = type(defaults[key])
    out[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
  return out


def check_size(size: str, presets) -> None:
  if size not in presets:
    raise ValueError(f"unknown size preset {size!r}; expected one of {sorted(presets)}")


def mesh(data=-1, fsdp=1, tensor=1) -> ml_collections.ConfigDict:
  """Mesh over (data, fsdp, tensor); one axis may be -1 to take the remaining devices."""
  return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor})


def train_common(config: ml_collections.ConfigDict, *, batch_size: int, num_steps: int,
                 log_every: int, ckpt_every: int, keep: int = 3) -> None:
  """Fills the loop-level fields every stage shares."""
  config.seed = 0
  config.train = ml_collections.ConfigDict({
      "batch_size": batch_size, "num_steps": num_steps, "log_every": log_every})
  config.checkpoint = ml_collections.ConfigDict({
      "every": ckpt_every, "keep": keep, "async_save": True})
  config.mesh = mesh()
  config.axis_rules = axes.DEFAULT_RULES


def text_encoder(text_dim: int, max_length: int) -> ml_collections.ConfigDict:
  """config.text_encoder: which frozen encoder made (pre-encoded data) and makes (sampling) the
  text states. 384-d states are the bundled MiniLM ("bert", path ""); anything else is a T5
  snapshot the user points `path` at (4096-d: T5-XXL / FLAN-T5-XXL)."""
  kind = "bert" if text_dim == 384 else "t5"
  return ml_collections.ConfigDict({"kind": kind, "path": "", "max_length": max_length,
                                    "dtype": "float32" if kind == "bert" else "bfloat16"})
