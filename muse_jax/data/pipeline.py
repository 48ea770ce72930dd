"""From a random-access source to globally sharded batches, one host's part at a time.

The example order is one global permutation (per epoch, seeded) of the source. Global batch b
holds examples [b*B, (b+1)*B) of that order; process p reads only rows [p*B/P, (p+1)*B/P) of it
(`HostRows`), exactly the block of the batch its devices hold in our process-major mesh, so P
processes see the same batches as one. Records that turn out unusable are dropped after
preprocessing and counted; the batch is then filled from the same host's next rows. The grain
iterator's state goes into every checkpoint, so a resumed run continues with the next unseen batch.
"""
import grain
import jax
import numpy as np

from muse_jax.data import preprocess


def local_batch_size(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ValueError(f"global batch size {global_batch} is not divisible by the number of "
                     f"processes {process_count}")
  return global_batch // process_count


class HostRows(grain.MapDataset):
  """Process p's rows of consecutive global batches of `parent` (an infinite or finite MapDataset)."""

  _MUTATES_ELEMENT_SPEC = False

  def __init__(self, parent: grain.MapDataset, global_batch: int, process_index: int,
               process_count: int):
    super().__init__(parent)
    self._global = global_batch
    self._local = local_batch_size(global_batch, process_count)
    self._offset = process_index * self._local
    self._length = (len(parent) // global_batch) * self._local

  def __len__(self) -> int:
    return self._length

  def _parent_index(self, index: int) -> int:
    batch, row = divmod(index, self._local)
    return batch * self._global + self._offset + row

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._parent_index(index)]

  def __str__(self) -> str:
    return f"HostRows(global={self._global}, local={self._local}, offset={self._offset})"


def make_iterator(source, global_batch: int, seed: int, *, process_index: int | None = None,
                  process_count: int | None = None, transform=None, counter=None,
                  num_threads: int = 4, prefetch: int = 8):
  """Checkpointable iterator (get_state/set_state) over this process's local batches.

  transform: record -> example or None (dropped), as grain map; if it has `cfg.needs_rng`, it is
  applied with random_map and gets a per-record np.random.Generator (deterministic per index).
  counter: a preprocess.SkipCounter; records a source marks "skip" are counted and dropped even
  without a transform.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  local = local_batch_size(global_batch, process_count)
  ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
  ds = HostRows(ds, global_batch, process_index, process_count)
  if transform is None:
    if counter is not None:
      ds = ds.map(_drop_marked(counter))
  elif getattr(getattr(transform, "cfg", None), "needs_rng", False):
    ds = ds.random_map(transform, seed=seed + 1)
  else:
    ds = ds.map(transform)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
  if transform is not None or counter is not None:
    it = it.filter(lambda x: x is not None)
  return iter(it.batch(local, drop_remainder=True))


def _drop_marked(counter: preprocess.SkipCounter):
  def fn(record):
    if "skip" in record:
      reason, detail = record["skip"]
      counter.record_skip(preprocess.SkipRecord(reason, str(record.get("key", "")), detail))
      return None
    counter.record_ok()
    return record
  return fn


def to_global_batch(local_batch: dict, shardings: dict) -> dict:
  """Assembles each host's local rows into global jax.Arrays with the given shardings."""
  out = {}
  for name, sharding in shardings.items():
    x = np.asarray(local_batch[name])
    global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
    out[name] = jax.make_array_from_process_local_data(sharding, x, global_shape)
  return out
