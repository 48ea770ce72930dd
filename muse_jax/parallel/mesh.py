"""Device mesh over ("data", "fsdp", "tensor") and the shardings derived from logical axes."""
import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from muse_jax.parallel import axes


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
  """Resolves a {data, fsdp, tensor} config (one entry may be -1) against `num_devices`."""
  sizes = [int(mesh_cfg[a]) for a in axes.MESH_AXES]
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh sizes must be positive or -1, got {dict(zip(axes.MESH_AXES, sizes))}")
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1 (fill), got {dict(zip(axes.MESH_AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"mesh {dict(zip(axes.MESH_AXES, sizes))}: {num_devices} devices do not divide "
                       f"into the fixed axes (product {known})")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f"mesh {dict(zip(axes.MESH_AXES, sizes))} needs {math.prod(sizes)} devices but "
                     f"{num_devices} are available; set config.mesh so the product equals the device "
                     f"count (use -1 for one axis to fill)")
  return tuple(sizes)


def parse_mesh_flag(text: str) -> dict:
  """A command-line mesh, e.g. "fsdp=-1" or "data=2,fsdp=4,tensor=1" -> {data, fsdp, tensor}
  (axes not named are 1)."""
  sizes = {a: 1 for a in axes.MESH_AXES}
  for item in filter(None, (part.strip() for part in text.split(","))):
    name, sep, value = item.partition("=")
    if not sep or name.strip() not in sizes:
      raise ValueError(f"mesh {text!r}: expected AXIS=SIZE items separated by commas, AXIS one "
                       f"of {axes.MESH_AXES} (e.g. 'fsdp=-1' or 'data=2,fsdp=4'), got {item!r}")
    try:
      sizes[name.strip()] = int(value)
    except ValueError:
      raise ValueError(f"mesh {text!r}: size of {name.strip()!r} must be an integer, got "
                       f"{value!r}") from None
  return sizes


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  """Builds the mesh. Devices are taken in process-major order, so each host's devices form a
  contiguous block of the batch axes and its local batch is a contiguous slice of the global one."""
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(mesh_cfg, len(devices))
  devices = sorted(devices, key=lambda d: (d.process_index, d.id))
  return Mesh(np.asarray(devices, dtype=object).reshape(shape), axes.MESH_AXES)


def logical_sharding(mesh: Mesh, rules, logical_names) -> NamedSharding:
  """NamedSharding for an array whose dimensions carry `logical_names`."""
  return NamedSharding(mesh, nn.logical_to_mesh_axes(logical_names, rules))


def tree_shardings(mesh: Mesh, rules, abstract_tree):
  """Shardings for a tree of (possibly nn.Partitioned-boxed) abstract values; unboxed leaves replicate."""
  specs = nn.get_partition_spec(abstract_tree)
  mesh_specs = nn.logical_to_mesh(specs, rules)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), mesh_specs,
                      is_leaf=lambda x: isinstance(x, P))


def batch_axis_size(mesh: Mesh, rules) -> int:
  """How many ways the batch dimension is split under `rules`."""
  spec = nn.logical_to_mesh_axes((axes.BATCH,), rules)[0]
  if spec is None:
    return 1
  names = (spec,) if isinstance(spec, str) else spec
  return math.prod(mesh.shape[n] for n in names)
