"""Shardings of whole train states: params from their logical axis names, optimizer state from
the parameter each of its leaves belongs to."""
import math

import flax.linen as nn
import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from muse_jax import treepath


def _derived_spec(param_shape, param_spec, shape):
  """Spec for a leaf derived from a parameter: same shape -> same spec; one axis reduced (factored
  second moments) -> the spec without that axis; otherwise None (not derived from it)."""
  spec = tuple(param_spec) + (None,) * (len(param_shape) - len(param_spec))
  if tuple(shape) == tuple(param_shape):
    return P(*spec)
  if len(shape) == len(param_shape) - 1:
    for drop in reversed(range(len(param_shape))):
      if tuple(shape) == tuple(param_shape[:drop] + param_shape[drop + 1:]):
        return P(*(spec[:drop] + spec[drop + 1:]))
  return None


def fit_spec(mesh, spec, shape) -> P:
  """`spec` with every mesh axis dropped from a dimension it does not divide (that dimension is
  replicated instead): e.g. a tokenizer's 3-channel output conv under a 2-way "tensor" axis."""
  out = []
  for dim, names in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    group = (names,) if isinstance(names, str) else tuple(names or ())
    out.append(names if dim % math.prod(mesh.shape[n] for n in group) == 0 else None)
  return P(*out)


def state_shardings(mesh, rules, boxed_params, abstract_state):
  """NamedShardings for an (unboxed) train-state pytree.

  boxed_params: an abstract parameter tree with nn.Partitioned logical-axis boxes (from
  jax.eval_shape of a model's init), or a tuple of them (a stage with several models). Every state
  leaf whose key path ends with a parameter's path (the params themselves, optimizer moments, EMA
  copies) follows that parameter's logical axes; all other leaves (step counters, scalars) are
  replicated. A mesh axis that does not divide a dimension is dropped from it (fit_spec).
  """
  trees = boxed_params if isinstance(boxed_params, tuple) else (boxed_params,)
  by_path = {}
  for tree in trees:
    specs = nn.logical_to_mesh(nn.get_partition_spec(tree), rules)
    for (path, leaf), spec in zip(jax.tree_util.tree_flatten_with_path(nn.unbox(tree))[0],
                                  jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))):
      by_path.setdefault(treepath.names(path), []).append((leaf.shape, spec))
  longest = max((len(p) for p in by_path), default=0)

  def leaf_sharding(path, leaf):
    keys = treepath.names(path)
    for n in range(min(longest, len(keys)), 0, -1):
      for shape, spec in by_path.get(keys[-n:], ()):
        derived = _derived_spec(shape, spec, leaf.shape)
        if derived is not None:
          return NamedSharding(mesh, fit_spec(mesh, derived, leaf.shape))
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(leaf_sharding, abstract_state)
