"""Orbax checkpoints: train state + data-iterator state + config, saved atomically and async;
and params-only exports (muse-ema), which every reader of params takes as well.

Orbax writes each step into a temporary directory and renames it when complete, so a process
killed mid-save leaves no loadable half-written step; `latest_step` only sees finished ones.
Restores go straight into the target shardings, which may belong to a different mesh.

`load_params(path)` / `load_config(path)` are the one loader of trained params: `path` is a
training workdir (its latest step), its checkpoints/ folder, one step folder, or an export folder
(params.safetensors + config.json, written by `save_export`). Sampling, editing, evaluation, the
notebook and `config.init_from` all read through them.
"""
import json
import logging as std_logging
import os

import flax.traverse_util
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from safetensors import numpy as st_numpy

from muse_jax import errors, paths, treepath


CheckpointError = errors.CheckpointError   # defined with the other user errors (errors.py)


def _check_writable(directory: epath.Path) -> None:
  if jax.process_index() != 0:
    return
  try:
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f".write_probe_{os.getpid()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise CheckpointError(f"checkpoint directory {directory} is not writable ({e}); fix its "
                          f"permissions or free space, or pass another --workdir") from e


class Checkpointer:
  """Wraps an orbax CheckpointManager with the items every stage saves."""

  def __init__(self, directory, every: int, keep: int, async_save: bool = True,
               keep_period: int = 0):
    # orbax refuses relative paths only at the first save; entry points resolve theirs
    # (muse_jax/paths.py), this covers library callers.
    self.directory = epath.Path(paths.resolve(os.fspath(directory)))
    if every <= 0 or keep <= 0:
      raise ValueError(f"checkpoint.every and checkpoint.keep must be positive, got {every}, {keep}")
    self.every = int(every)
    _check_writable(self.directory)
    if keep_period < 0 or (keep_period and keep_period % self.every):
      raise ValueError(f"checkpoint.keep_period must be 0 (off) or a multiple of checkpoint.every "
                       f"({self.every}), got {keep_period}: only saved steps can be kept")
    # The cadence is decided here once (should_save, plus the loop's last step and preemption),
    # so orbax's own interval is 1: it saves whenever save() is called. keep_period: every step
    # divisible by it survives the max_to_keep cleanup, which is what an offline EMA over
    # checkpoints (muse-ema; the paper's every 5k steps) averages.
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=1, max_to_keep=keep, keep_period=keep_period or None,
        enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler(),
                       "config": ocp.JsonCheckpointHandler()})

  def latest_step(self):
    return self.manager.latest_step()

  def should_save(self, step: int) -> bool:
    """Every checkpoint.every steps (the loop also saves the last step and on preemption)."""
    return step % self.every == 0

  def save(self, step: int, state, data_iter, config_json: str) -> bool:
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iter),
        config=ocp.args.JsonSave(json.loads(config_json)))
    try:
      return self.manager.save(step, args=args)
    except OSError as e:
      raise CheckpointError(f"saving checkpoint step {step} to {self.directory} failed ({e}); "
                            f"earlier checkpoints are intact") from e

  def check_compatible(self, step: int, abstract_state) -> None:
    """Raises CheckpointError naming the first leaf whose path or shape differs."""
    meta = self.manager.item_metadata(step)["state"]
    if meta is not None:
      check_same_shapes(abstract_state, meta, f"checkpoint {self.directory}/{step}",
                        "it was written by another config or stage")

  def restore(self, step: int, abstract_state, data_iter):
    """Restores (state, data_iter) at `step`; abstract_state carries the target shardings."""
    self.check_compatible(step, abstract_state)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iter)))
    logging.info("restored checkpoint step %d from %s", step, self.directory)
    return restored["state"], restored["data"]

  def _finish(self, fn):
    """Runs fn (which waits for async saves); a failed background save (disk full, permissions
    changed) becomes a CheckpointError instead of a raw OSError from orbax's thread."""
    try:
      fn()
    except OSError as e:
      raise CheckpointError(f"writing a checkpoint to {self.directory} failed ({e}); earlier "
                            f"complete checkpoints are intact and a re-run resumes from the "
                            f"latest one; free space or pass another --workdir") from e

  def wait(self):
    self._finish(self.manager.wait_until_finished)

  def close(self):
    self._finish(self.manager.wait_until_finished)
    self.manager.close()


def shapes_by_name(tree) -> dict:
  """{"a/b/c": shape} of a pytree's leaves (arrays, ShapeDtypeStructs or orbax metadata)."""
  return {treepath.show(p): tuple(getattr(l, "shape", ()) or ())
          for p, l in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_same_shapes(want_tree, have_tree, what: str, why: str) -> None:
  """Raises CheckpointError naming the first entry of `what` (have_tree) that `want_tree` lacks,
  misses or shapes differently; `why` is the likely cause, appended to the message."""
  want, have = shapes_by_name(want_tree), shapes_by_name(have_tree)
  for key, shape in want.items():
    if key not in have:
      raise CheckpointError(f"{what} has no entry {key} (expected shape {shape}): {why}")
    if have[key] != shape:
      raise CheckpointError(f"{what}: {key} has shape {have[key]} but this config expects "
                            f"{shape}: {why}")
  extra = sorted(set(have) - set(want))
  if extra:
    raise CheckpointError(f"{what} has entry {extra[0]} that this config does not: {why}")


def abstract_with_shardings(abstract_tree, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_tree, shardings)


def step_dir(path) -> epath.Path:
  """The checkpoint folder that `path` names: a workdir (its latest step), its checkpoints/
  folder, or one step folder. Always absolute: orbax's readers find no metadata under a relative
  path."""
  path = epath.Path(paths.resolve(os.fspath(path)))
  for candidate in (path / "checkpoints", path):
    steps = [int(p.name) for p in candidate.iterdir() if p.name.isdigit()] if candidate.is_dir() else []
    if steps:
      path = candidate / str(max(steps))
      break
  if not (path / "state").is_dir():
    raise CheckpointError(f"{path} holds no checkpoint (expected WORKDIR, WORKDIR/checkpoints or "
                          f"WORKDIR/checkpoints/STEP with a 'state' item)")
  return path


def load_params(path, prefer_ema: bool = True) -> dict:
  """The params of a training checkpoint (see step_dir for `path`) on this process's first
  device, whatever mesh wrote it; the EMA params when saved (prefer_ema). The optimizer state is
  not read. An export folder (is_export) gives its params (host numpy, float32)."""
  if is_export(path):
    return load_export(path)[1]
  directory = step_dir(path) / "state"
  quiet = _NoStepMetadataWarning()
  std_logging.getLogger("absl").addFilter(quiet)
  try:
    return _read_params(directory, prefer_ema)
  finally:
    std_logging.getLogger("absl").removeFilter(quiet)


class _NoStepMetadataWarning(std_logging.Filter):
  """Reading the `state` item of a step directory on its own, orbax warns that the item has no
  _CHECKPOINT_METADATA (that file lives one level up, in the step directory): not a problem."""

  def filter(self, record):
    return "_CHECKPOINT_METADATA" not in record.getMessage()


def _read_params(directory, prefer_ema: bool) -> dict:
  with ocp.PyTreeCheckpointer() as reader:
    meta = reader.metadata(directory)
    meta = getattr(meta, "item_metadata", meta)
    if meta is None:    # orbax logs why and returns None: unreadable or not a PyTree item
      raise CheckpointError(f"{directory} holds no readable checkpoint metadata (expected the "
                            f"'state' item of a training checkpoint)")
    meta = dict(meta.tree)
    extra = meta.get("extra") or {}
    ema = prefer_ema and isinstance(extra, dict) and "ema_params" in extra
    want = {"extra": {"ema_params": extra["ema_params"]}} if ema else {"params": meta["params"]}
    # Only the params (no optimizer state), every array onto this process's first device
    # whatever mesh saved it: a checkpoint written by a pod (or by 8 simulated devices) loads
    # on a laptop or a Colab runtime.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), want)
    state = reader.restore(directory, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))
  return state["extra"]["ema_params"] if ema else state["params"]


def load_config(path) -> dict:
  """The config (as a plain dict) saved with a training checkpoint (see step_dir for `path`), or
  the one an export carries."""
  if is_export(path):
    return _export_meta(path)["config"]   # config.json only: the params are not read
  directory = step_dir(path) / "config"
  with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as reader:
    return reader.restore(directory)


# Params-only exports --------------------------------------------------------------------------
EXPORT_PARAMS = "params.safetensors"
EXPORT_CONFIG = "config.json"
EXPORT_FORMAT = "muse_jax.ema_export.v1"


def is_export(path) -> bool:
  """Whether `path` is an export folder: params.safetensors and a config.json of EXPORT_FORMAT
  (a muse-convert tokenizer folder has the same two files with another format marker)."""
  path = epath.Path(paths.resolve(os.fspath(path)))
  if not ((path / EXPORT_CONFIG).is_file() and (path / EXPORT_PARAMS).is_file()):
    return False
  try:
    return json.loads((path / EXPORT_CONFIG).read_text()).get("format") == EXPORT_FORMAT
  except (ValueError, AttributeError):    # not JSON, or not a JSON object: not ours
    return False


def save_export(out_dir, params, config: dict, metadata: dict | None = None) -> None:
  """Writes a params-only export: params.safetensors (flattened "a/b/c" keys, float32) and
  config.json (the training config the params belong to, and `metadata`)."""
  os.makedirs(out_dir, exist_ok=True)
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  meta = {"format": EXPORT_FORMAT, **{k: str(v) for k, v in (metadata or {}).items()}}
  st_numpy.save_file({k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in flat.items()},
                     os.path.join(out_dir, EXPORT_PARAMS), metadata=meta)
  with open(os.path.join(out_dir, EXPORT_CONFIG), "w") as f:
    json.dump({"format": EXPORT_FORMAT, "config": config, **(metadata or {})}, f, indent=2)


def load_export(path) -> tuple:
  """An export folder -> (training config dict, params tree of float32 numpy)."""
  path = paths.resolve(os.fspath(path))
  meta = _export_meta(path)
  flat = st_numpy.load_file(os.path.join(path, EXPORT_PARAMS))
  return meta["config"], flax.traverse_util.unflatten_dict(flat, sep="/")


def _export_meta(path) -> dict:
  """An export's config.json contents (format, training config, metadata), checked."""
  path = paths.resolve(os.fspath(path))
  if not is_export(path):
    raise CheckpointError(f"{path} is not an export (expected {EXPORT_CONFIG} and "
                          f"{EXPORT_PARAMS}, as muse-ema writes)")
  with open(os.path.join(path, EXPORT_CONFIG)) as f:
    meta = json.load(f)
  if "config" not in meta:
    raise CheckpointError(f"{path}/{EXPORT_CONFIG} has no training config")
  return meta
