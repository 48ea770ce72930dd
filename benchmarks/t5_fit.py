r"""Per-chip memory of the T5-XXL encode step, compiled ahead of time for a TPU topology.

  python benchmarks/t5_fit.py                                   # v4:4x8x8, batch 512 x 128, bf16
  python benchmarks/t5_fit.py --topology=v4:2x2x1 --batch=64 --mesh=1,4,1

Needs libtpu (`pip install -e ".[tpu]"`); runs on a CPU host with libtpu's compile-only devices,
like muse-fit. The step is text_encoder.encode_fn: (params, ids_BxT, mask_BxT) -> states_BxTxC
float32, params an explicit argument sharded by their logical axes (default rules: the embed
dimension over "fsdp", heads / MLP / vocabulary over "tensor") and the batch over (data, fsdp).
Prints memory_analysis() per chip and whether it fits the chip's HBM.
"""
import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from muse_jax.cli import fit  # noqa: E402  (sets the compile-only libtpu environment first)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from muse_jax.models import t5, text_encoder  # noqa: E402
from muse_jax.parallel import axes, mesh as mesh_lib  # noqa: E402


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--topology", default="v4:4x8x8")
  parser.add_argument("--batch", type=int, default=512, help="global batch of captions")
  parser.add_argument("--length", type=int, default=128, help="tokens per caption")
  parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
  parser.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor sizes (-1: fill)")
  args = parser.parse_args(argv)

  devices = fit.topology_devices(args.topology)
  kind = devices[0].device_kind
  hbm_gib, _ = fit.chip_spec(kind)
  sizes = dict(zip(axes.MESH_AXES, (int(s) for s in args.mesh.split(","))))
  shape = mesh_lib.mesh_shape(sizes, len(devices))
  mesh = Mesh(np.asarray(devices, dtype=object).reshape(shape), axes.MESH_AXES)
  rules = axes.DEFAULT_RULES
  if args.batch % mesh_lib.batch_axis_size(mesh, rules):
    raise SystemExit(f"error: --batch={args.batch} must divide over the "
                     f"{mesh_lib.batch_axis_size(mesh, rules)} batch shards of mesh {shape}")

  cfg = dataclasses.replace(t5.XXL, dtype=args.dtype)
  model = t5.T5Encoder(cfg)
  boxed = text_encoder.abstract_params(model, args.length)
  param_shardings = mesh_lib.tree_shardings(mesh, rules, boxed)
  params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        nn.unbox(boxed), param_shardings)
  batch_sharding = mesh_lib.logical_sharding(mesh, rules, (axes.BATCH, axes.TEXT_LENGTH))
  out_sharding = mesh_lib.logical_sharding(mesh, rules,
                                           (axes.BATCH, axes.TEXT_LENGTH, axes.TEXT_EMBED))
  ids = jax.ShapeDtypeStruct((args.batch, args.length), jnp.int32, sharding=batch_sharding)
  mask = jax.ShapeDtypeStruct((args.batch, args.length), jnp.bool_, sharding=batch_sharding)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  print(f"T5-XXL encoder ({n_params / 1e9:.3f}B params, {args.dtype} compute) on {args.topology}: "
        f"{len(devices)} x {kind}, mesh {dict(mesh.shape)}, batch {args.batch} x {args.length}",
        flush=True)

  step = jax.jit(text_encoder.encode_fn(model),
                 in_shardings=(param_shardings, batch_sharding, batch_sharding),
                 out_shardings=out_sharding)
  start = time.time()
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    compiled = step.lower(params, ids, mask).compile()
  seconds = time.time() - start
  m = compiled.memory_analysis()
  if m is None:
    raise SystemExit(f"error: the compiler gave no memory analysis for {kind}")
  gib = 2.0 ** 30
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes) / gib
  print(f"per chip: arguments {m.argument_size_in_bytes / gib:.3f} GiB, outputs "
        f"{m.output_size_in_bytes / gib:.3f} GiB, temporaries {m.temp_size_in_bytes / gib:.3f} GiB, "
        f"total {total:.3f} GiB of {hbm_gib} GiB HBM ({100 * total / hbm_gib:.1f}%); "
        f"compile {seconds:.0f} s")
  flops, loops = fit.compiled_flops(compiled)
  if flops is not None:
    print(f"compiled FLOPs per chip: {flops:.3e} (XLA counts each of the {loops} while-loop "
          "bodies once: one layer of the scan)")
  if total > hbm_gib:
    print("does not fit")
    return 1
  print("fits")
  return 0


if __name__ == "__main__":
  sys.exit(main())
