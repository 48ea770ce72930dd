r"""muse-fit --config=configs/base.py:size=3b --topology=v4:4x8x8 [--mfu=0.5]

Ahead-of-time check, on any host (CPU is enough, with the `tpu` extra installed): compiles the
config's train step for a TPU topology via libtpu's compile-only devices and prints per-chip memory
(from the compiled executable), FLOPs per step and the expected step time at a given MFU. Exits
non-zero when the step does not fit the chip's HBM. Any config field can be overridden as in
training, e.g. --config.train.batch_size=1024 --config.mesh.data=2 --config.mesh.fsdp=-1.

Topology strings are libtpu's: v4:AxBxC, v5p:AxBxC (one device per chip, megacore), v5e:AxB,
v6e:AxB. The host's own devices are never used, so JAX_PLATFORMS defaults to cpu here.
"""
import os
import sys

# Compile-only use of libtpu: keep it from probing GCE metadata and printing warnings. setdefault,
# so explicit settings win. Done before jax is imported.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v4-8")  # only silences a warning; no effect here
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # no TPU is opened: skip libtpu's lockfile

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from muse_jax import paths  # noqa: E402
from muse_jax import flag_help  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:args]).",
                                          lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU topology, e.g. v4:4x8x8, v5e:16x16.")
_MFU = flags.DEFINE_float("mfu", 0.5, "Model FLOPs utilisation assumed for the step time.")
flags.mark_flags_as_required(["config", "topology"])

GIB = 2.0 ** 30
# device_kind -> (HBM GiB per chip, peak bf16 FLOP/s per chip).
CHIPS = {
    "TPU v4": (32, 275e12),
    "TPU v5 lite": (16, 197e12), "TPU v5e": (16, 197e12),
    "TPU v5": (95, 459e12), "TPU v5p": (95, 459e12),
    "TPU v6 lite": (32, 918e12), "TPU v6e": (32, 918e12),
}
_ADVICE = ("lower --config.train.batch_size, shard more (--config.mesh.fsdp, "
           "--config.mesh.tensor), use --config.model.remat=full or use a larger topology")
MEGACORE = ("v4", "v5p")  # two TensorCores per chip, presented as one device


def topology_devices(name: str):
  """Compile-only TPU devices for `name`, one per chip."""
  kwargs = {"chip_config_name": "megacore"} if name.split(":")[0] in MEGACORE else {}
  try:
    return topologies.get_topology_desc(name, "tpu", **kwargs).devices
  except jax.errors.JaxRuntimeError as e:
    if "INVALID_ARGUMENT" not in str(e):
      raise
    sys.exit(f"error: --topology={name!r} is not a TPU topology libtpu knows ({e}); expected "
             f"e.g. v4:2x2x1, v4:4x8x8, v5p:2x2x2, v5e:4x4, v6e:2x2")


def chip_spec(device_kind: str):
  if device_kind not in CHIPS:
    sys.exit(f"error: no HBM / peak FLOP/s known for device kind {device_kind!r}; known: "
             f"{sorted(CHIPS)} (add it to CHIPS in muse_jax/cli/fit.py)")
  return CHIPS[device_kind]


def compiled_flops(compiled) -> tuple[float | None, int]:
  """(FLOPs of the compiled program, number of while loops in it). The program is the
  SPMD-partitioned one, so the count is per chip. XLA's cost analysis counts a while-loop body
  once, whatever its trip count: with layers under nn.scan it covers one layer, not all."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = float(cost["flops"]) if cost and "flops" in cost else None
  return flops, compiled.as_text().count(" while(")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not 0.0 < _MFU.value <= 1.0:
    raise app.UsageError(f"--mfu must be in (0, 1], got {_MFU.value}")
  from muse_jax.train import loop  # after the environment above is set
  config, name = _CONFIG.value, _TOPOLOGY.value
  devices = topology_devices(name)
  kind = devices[0].device_kind
  hbm_gib, peak = chip_spec(kind)
  chips = len(devices)

  setup = loop.Setup(paths.resolve_config(config), devices=devices)
  print(f"{config.stage} size={config.get('size')} on {name}: {chips} x {kind}, mesh "
        f"{dict(setup.mesh.shape)}, global batch {setup.global_batch}", flush=True)
  try:
    compiled = setup.lower_train_step().compile()
  except jax.errors.JaxRuntimeError as e:  # the TPU compiler itself refuses what cannot fit
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    sys.exit(f"error: does not fit {kind} ({hbm_gib} GiB HBM): {str(e).splitlines()[0]}\n"
             f"{_ADVICE}")

  m = compiled.memory_analysis()
  if m is None:
    sys.exit(f"error: the compiler gave no memory analysis for {kind}; cannot check the fit")
  print(loop.memory_report(compiled))
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes) / GIB
  print(f"per-chip total (arguments + outputs + temporaries - aliased): {total:.2f} GiB of "
        f"{hbm_gib} GiB HBM ({100 * total / hbm_gib:.0f}%)")

  params = sum(x.size for x in jax.tree.leaves(setup.abstract_state.params))
  flops, loops = compiled_flops(compiled)
  if flops is not None:
    caveat = (f"; undercounts: XLA counts each of the {loops} while-loop bodies (nn.scan over "
              f"layers) once" if loops else "")
    print(f"FLOPs per step, compiled (XLA cost analysis, per chip, incl. rematerialisation): "
          f"{flops:.3e}{caveat}")
  model_flops = None
  if "tokens" in setup.batch_abstract:  # forward + backward matmuls over the image tokens
    tokens = setup.batch_abstract["tokens"].size
    model_flops = 6 * params * tokens
    print(f"FLOPs per step, analytic 6*N*T (all chips): 6 x {params:.4g} params x {tokens} tokens "
          f"= {model_flops:.3e} ({model_flops / chips:.3e} per chip)")
  basis = model_flops if model_flops is not None else (flops or 0.0) * chips
  if basis:
    seconds = basis / (chips * peak * _MFU.value)
    print(f"expected step time at MFU {_MFU.value:g}: {seconds * 1e3:.4g} ms = "
          f"{'6*N*T' if model_flops is not None else 'compiled FLOPs x chips'} / ({chips} chips x "
          f"{peak / 1e12:g} TFLOP/s bf16 x {_MFU.value:g})")
  if total > hbm_gib:
    sys.exit(f"error: does not fit: {total:.2f} GiB per chip exceeds the {hbm_gib} GiB HBM of "
             f"{kind}\n{_ADVICE}")
  print("fits")


def run_main():
  flag_help.adopt_for_main(__name__, __doc__)   # muse-fit --help lists the flags
  app.run(main)


if __name__ == "__main__":
  run_main()
