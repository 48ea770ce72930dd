"""From a random-access source to globally sharded batches, one host's part at a time.

The example order is one global permutation (per epoch) of the source. Global batch b holds
examples [b*B, (b+1)*B) of that order; process p reads only rows [p*B/P, (p+1)*B/P) of it, which
is exactly the block of the batch held by its devices in our process-major mesh. The grain
iterator's state is checkpointed, so a resumed run continues with the next unseen batch.
"""
import grain
import jax
import numpy as np


def local_batch_size(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ValueError(f"global batch size {global_batch} is not divisible by the number of "
                     f"processes {process_count}")
  return global_batch // process_count


def make_dataset(source, global_batch: int, seed: int, process_index: int, process_count: int,
                 transform=None) -> grain.MapDataset:
  """Infinite MapDataset of this process's local batches (dicts of numpy arrays)."""
  local = local_batch_size(global_batch, process_count)
  ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
  if transform is not None:
    ds = ds.map(transform)
  ds = ds.batch(local, drop_remainder=True)
  return ds[process_index::process_count]


def make_iterator(ds: grain.MapDataset, num_threads: int = 4, prefetch: int = 8):
  """A checkpointable iterator (get_state/set_state) with background reading."""
  opts = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  return iter(ds.to_iter_dataset(opts))


def to_global_batch(local_batch: dict, shardings: dict) -> dict:
  """Assembles each host's local rows into global jax.Arrays with the given shardings."""
  out = {}
  for name, sharding in shardings.items():
    x = np.asarray(local_batch[name])
    global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
    out[name] = jax.make_array_from_process_local_data(sharding, x, global_shape)
  return out
