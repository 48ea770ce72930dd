r"""muse-fit --config=configs/base.py:size=3b --topology=v4:4x8x8 [--mfu=0.5]
muse-fit --sample --config=configs/base.py:size=3b --superres_config=configs/superres.py:size=268m \
    --tokenizer_config=configs/vqgan.py:size=f16-256 \
    --tokenizer_hi_config=configs/vqgan.py:size=f8-512 --topology=v4:2x2x1 [--sample_batch=8]

Ahead-of-time check, on any host (CPU is enough, with the `tpu` extra installed): compiles the
config's train step for a TPU topology via libtpu's compile-only devices and prints per-chip memory
(from the compiled executable), FLOPs per step and the expected step time at a given MFU. Exits
non-zero when the step does not fit the chip's HBM. Any config field can be overridden as in
training, e.g. --config.train.batch_size=1024 --config.mesh.data=2 --config.mesh.fsdp=-1.

With --sample it compiles the sampling program instead (muse_jax/pipeline.py lower_cascade: text
encoding, the base decode of --base_steps with linear guidance, the super-res decode of
--superres_steps, the tokenizer's decoder; every param resident as muse-sample holds them) over
--sample_mesh, from the configs' shapes alone: --config is the base stage, --superres_config
(optional) the super-res stage, --tokenizer_config / --tokenizer_hi_config the tokenizers whose
decoder makes the pixels. The text encoder's shapes come from the base config's
text_encoder.path when set (or the bundled MiniLM), else T5-XXL for 4096-d text.

Topology strings are libtpu's: v4:AxBxC, v5p:AxBxC (one device per chip, megacore), v5e:AxB,
v6e:AxB. The host's own devices are never used, so JAX_PLATFORMS defaults to cpu here.
"""
import dataclasses
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
from flax.linen import unbox as nn_unbox  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from muse_jax import decoding, flag_help, paths, pipeline  # noqa: E402
from muse_jax.convert import hf_text  # noqa: E402
from muse_jax.models import t5, text_encoder  # noqa: E402
from muse_jax.models.superres import SuperResConfig  # noqa: E402
from muse_jax.models.transformer import TransformerConfig  # noqa: E402
from muse_jax.parallel import mesh as mesh_lib  # noqa: E402
from muse_jax.tasks import vqgan as vqgan_task  # noqa: E402
from muse_jax.train import loop  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:args]).",
                                          lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU topology, e.g. v4:4x8x8, v5e:16x16.")
_MFU = flags.DEFINE_float("mfu", 0.5, "Model FLOPs utilisation assumed for the step time.")
_SAMPLE = flags.DEFINE_bool("sample", False, "Compile the sampling cascade, not the train step.")
_SR_CONFIG = config_flags.DEFINE_config_file("superres_config", None,
                                             "--sample: the super-res stage's config (optional).",
                                             lock_config=True)
_TOK_CONFIG = config_flags.DEFINE_config_file("tokenizer_config", None,
                                              "--sample: the base tokenizer's config.",
                                              lock_config=True)
_TOK_HI_CONFIG = config_flags.DEFINE_config_file("tokenizer_hi_config", None,
                                                 "--sample: the super-res tokenizer's config.",
                                                 lock_config=True)
_SAMPLE_BATCH = flags.DEFINE_integer("sample_batch", 0,
                                     "--sample: prompts per call (0: one per batch shard).")
_SAMPLE_MESH = flags.DEFINE_string("sample_mesh", "fsdp=-1",
                                   "--sample: AXIS=SIZE over data, fsdp, tensor (muse-sample "
                                   "--mesh).")
_BASE_STEPS = flags.DEFINE_integer("base_steps", 24, "--sample: base decoding steps.")
_SR_STEPS = flags.DEFINE_integer("superres_steps", 8, "--sample: super-res decoding steps.")
_GUIDANCE = flags.DEFINE_float("guidance", 4.0, "--sample: guidance scale (0: off).")
flags.mark_flags_as_required(["config", "topology"])

GIB = 2.0 ** 30
# device_kind -> (HBM GiB per device, peak bf16 FLOP/s per device). A device is a chip, except on
# v2 / v3, whose two TensorCores are separate devices with half the chip each (v2-8, Colab's TPU:
# 8 devices of 8 GiB).
CHIPS = {
    "TPU v2": (8, 22.5e12), "TPU v3": (16, 61.5e12),
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


_SAMPLE_ADVICE = ("lower --sample_batch, shard more (--sample_mesh=fsdp=-1, or with tensor), or "
                  "use a larger topology")


def _advice() -> str:
  return _SAMPLE_ADVICE if _SAMPLE.value else _ADVICE


def _compile(lowered, kind: str, hbm_gib: float):
  try:
    return lowered.compile()
  except jax.errors.JaxRuntimeError as e:  # the TPU compiler itself refuses what cannot fit
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    sys.exit(f"error: does not fit {kind} ({hbm_gib} GiB HBM): {str(e).splitlines()[0]}\n"
             f"{_advice()}")


def _memory_total(compiled, kind: str, hbm_gib: float) -> float:
  """Prints the compiled program's per-chip memory; returns the total in GiB."""
  m = compiled.memory_analysis()
  if m is None:
    sys.exit(f"error: the compiler gave no memory analysis for {kind}; cannot check the fit")
  print(loop.memory_report(compiled))
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes) / GIB
  print(f"per-chip total (arguments + outputs + temporaries - aliased): {total:.2f} GiB of "
        f"{hbm_gib} GiB HBM ({100 * total / hbm_gib:.0f}%)")
  return total


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not 0.0 < _MFU.value <= 1.0:
    raise app.UsageError(f"--mfu must be in (0, 1], got {_MFU.value}")
  config, name = _CONFIG.value, _TOPOLOGY.value
  devices = topology_devices(name)
  kind = devices[0].device_kind
  hbm_gib, peak = chip_spec(kind)
  run = fit_sampling if _SAMPLE.value else fit_training
  total = run(paths.resolve_config(config), name, devices, kind, hbm_gib, peak)
  if total > hbm_gib:
    sys.exit(f"error: does not fit: {total:.2f} GiB per chip exceeds the {hbm_gib} GiB HBM of "
             f"{kind}\n{_advice()}")
  print("fits")


def fit_training(config, name, devices, kind, hbm_gib, peak) -> float:
  """Compiles the train step and prints its report; returns the per-chip GiB."""
  chips = len(devices)
  setup = loop.Setup(config, devices=devices)
  print(f"{config.stage} size={config.get('size')} on {name}: {chips} x {kind}, mesh "
        f"{dict(setup.mesh.shape)}, global batch {setup.global_batch}", flush=True)
  compiled = _compile(setup.lower_train_step(), kind, hbm_gib)
  total = _memory_total(compiled, kind, hbm_gib)

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
  return total


def _text_model(config):
  """The frozen text encoder module of the base config, from its snapshot's config.json when
  there is one (text_encoder.path, or the bundled MiniLM), else T5-XXL for 4096-d text."""
  cfg = text_encoder.TextEncoderConfig.from_config(config.text_encoder) if (
      config.text_encoder.path or config.text_encoder.kind == "bert") else None
  if cfg is not None:
    snap = hf_text.Snapshot(text_encoder.snapshot_path(cfg))
    return hf_text.build_model(cfg.kind, hf_text.model_and_key_map(snap, cfg.kind, cfg.dtype)[0])
  if config.model.text_dim != t5.XXL.d_model:
    sys.exit(f"error: the base config's text_encoder.path is empty and its text width "
             f"{config.model.text_dim} is not T5-XXL's {t5.XXL.d_model}; set "
             f"--config.text_encoder.path to the encoder's snapshot so its shapes can be read")
  return t5.T5Encoder(dataclasses.replace(t5.XXL, dtype=config.text_encoder.dtype))


def fit_sampling(config, name, devices, kind, hbm_gib, peak) -> float:
  """Compiles the sampling cascade (pipeline.lower_cascade) and prints its report; returns the
  per-chip GiB."""
  sr_config, tok, tok_hi = _SR_CONFIG.value, _TOK_CONFIG.value, _TOK_HI_CONFIG.value
  if config.stage != "base":
    raise app.UsageError(f"--sample takes the base stage's config as --config, got stage "
                         f"{config.stage!r}")
  if tok is None or (sr_config is not None and tok_hi is None):
    raise app.UsageError("--sample needs --tokenizer_config, and --tokenizer_hi_config with "
                         "--superres_config (the decoder that makes the pixels)")
  try:
    mesh = mesh_lib.make_mesh(mesh_lib.parse_mesh_flag(_SAMPLE_MESH.value), devices)
  except ValueError as e:
    raise app.UsageError(f"--sample_mesh: {e}") from e
  rules = tuple(config.axis_rules)
  shards = mesh_lib.batch_axis_size(mesh, rules)
  batch = _SAMPLE_BATCH.value or shards
  if batch % shards:
    raise app.UsageError(f"--sample_batch={batch} does not split over the {shards} batch shards "
                         f"of --sample_mesh={_SAMPLE_MESH.value}")
  base_cfg = TransformerConfig(**config.model.to_dict())
  sr_cfg = SuperResConfig(**sr_config.model.to_dict()) if sr_config is not None else None
  vq_cfg = vqgan_task.model_config((tok_hi if sr_config is not None else tok).model.to_dict())
  try:
    cascade = pipeline.Cascade(base_cfg, sr_cfg, vq_cfg, int(config.text_encoder.max_length))
  except ValueError as e:
    raise app.UsageError(f"--sample: {e}") from e
  text_model = _text_model(config)
  guided = lambda n: decoding.DecodeConfig(num_steps=n, guidance_scale=_GUIDANCE.value)
  base_dc = guided(_BASE_STEPS.value)
  sr_dc = guided(_SR_STEPS.value) if sr_cfg is not None else None

  base_boxed, sr_boxed = cascade.abstract_boxed()
  count = lambda tree: sum(x.size for x in jax.tree.leaves(nn_unbox(tree)))
  n_text = count(text_encoder.abstract_params(text_model, cascade.text_length))
  n_base, n_sr = count(base_boxed), count(sr_boxed) if sr_boxed is not None else 0
  chips = len(devices)
  print(f"sampling: base size={config.get('size')} ({n_base:.4g} params)"
        + (f" + superres size={sr_config.get('size')} ({n_sr:.4g})" if sr_cfg else "")
        + f" + text encoder ({n_text:.4g}) on {name}: {chips} x {kind}, mesh {dict(mesh.shape)}, "
        f"batch {batch} ({batch // shards} per batch shard), {base_dc.num_steps} base"
        + (f" / {sr_dc.num_steps} super-res" if sr_cfg else "") + f" steps, guidance "
        f"{_GUIDANCE.value:g}", flush=True)
  compiled = _compile(pipeline.lower_cascade(cascade, text_model, mesh, rules, batch, base_dc,
                                             sr_dc), kind, hbm_gib)
  total = _memory_total(compiled, kind, hbm_gib)
  flops, loops = compiled_flops(compiled)
  if flops is not None:
    print(f"FLOPs per call, compiled (XLA cost analysis, per chip): {flops:.3e}; undercounts: "
          f"each of the {loops} while-loop bodies (decode steps, scanned layers) counted once")
  # Matmul FLOPs of the forward passes (2*N per token; attention scores excluded): the text once,
  # each decode step over the batch twice with guidance (conditional and unconditional rows).
  passes = 2 if _GUIDANCE.value > 0 else 1
  per_image = 2 * n_text * cascade.text_length + passes * 2 * (
      n_base * base_cfg.seq_len * base_dc.num_steps
      + (n_sr * sr_cfg.hi_seq_len * sr_dc.num_steps if sr_cfg else 0))
  seconds = per_image * batch / (chips * peak * _MFU.value)
  print(f"FLOPs per image, analytic 2*N*T over the passes: {per_image:.3e}; expected time per "
        f"call of {batch} images at MFU {_MFU.value:g}: {seconds * 1e3:.4g} ms "
        f"({seconds * 1e3 / batch:.3g} ms per image)")
  return total


def run_main():
  flag_help.adopt_for_main(__name__, __doc__)   # muse-fit --help lists the flags
  app.run(main)


if __name__ == "__main__":
  run_main()
