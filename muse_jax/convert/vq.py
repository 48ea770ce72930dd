r"""Importers for published VQ tokenizers, and our params-only tokenizer checkpoint format.

  muse-convert --from maskgit-vq tokenizer_imagenet256_checkpoint --out ckpt/maskgit_vq
  muse-convert --from diffusers-vq amused-256/vqvae --out ckpt/amused_vq

Both families load into the one `models.vqgan.VQGAN` class; the VQGANConfig switches say how
they differ. Every parameter comes from an explicit key map (our module path -> theirs, built
per layout by `maskgit_key_map` / `diffusers_key_map`); a missing, unexpected or mis-shaped key
raises a ValueError naming it and both shapes. diffusers stores convs as OIHW, we as HWIO.

Our format (`save` / `load`): a folder with `params.safetensors` ('/'-joined paths of the params
tree, float32) and `config.json` (the VQGANConfig fields plus a format marker).
"""
import argparse
import ast
import dataclasses
import json
import math
import os
import sys

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import numpy as st_numpy

from muse_jax import errors, paths
from muse_jax.models.vqgan import VQGAN, VQGANConfig

FORMAT = "muse_jax.vqgan"
PARAMS_FILE = "params.safetensors"
CONFIG_FILE = "config.json"


# ------------------------------------------------------------------------------------------------
# Shared machinery: our expected tree, the key-map check, conv layout.

def expected_shapes(cfg: VQGANConfig) -> dict:
  """'/'-joined path of every VQGAN parameter (without the 'params' collection) -> shape."""
  f = cfg.factor
  model = VQGAN(cfg)
  tree = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0),
                                                     jnp.zeros((1, f, f, 3), jnp.float32))))
  flat = flax.traverse_util.flatten_dict(tree["params"], sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


def _oihw(shape):
  return (shape[3], shape[2], shape[0], shape[1])


def _map_params(source: dict, key_map: dict, expected: dict, origin: str, oihw: bool,
                linear: frozenset = frozenset()) -> dict:
  """source: their flat key -> array. key_map: our path -> their key. Returns our params tree.

  oihw: their 4-D conv kernels are OIHW (torch) and get transposed to HWIO. linear: our paths of
  dense kernels stored as torch Linear weights [out, in], transposed to [in, out]."""
  if set(key_map) != set(expected):  # the tables below must cover our model exactly
    diff = sorted(set(key_map) ^ set(expected))
    raise AssertionError(f"key map out of sync with VQGAN for {diff[:5]}")
  problems, flat = [], {}
  for ours, theirs in key_map.items():
    want = expected[ours]
    want_theirs = _oihw(want) if oihw and len(want) == 4 else want
    want_theirs = tuple(reversed(want)) if ours in linear else want_theirs
    if theirs not in source:
      problems.append(f"missing key {theirs!r} (expected shape {want_theirs}, for our {ours})")
      continue
    got = tuple(np.shape(source[theirs]))
    if got != want_theirs:
      problems.append(f"key {theirs!r} has shape {got} but expected {want_theirs} (for our "
                      f"{ours})")
      continue
    value = np.asarray(source[theirs], dtype=np.float32)
    if oihw and value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)
    if ours in linear:
      value = value.T
    flat[ours] = np.ascontiguousarray(value)
  used = set(key_map.values())
  for theirs in sorted(set(source) - used):
    problems.append(f"unexpected key {theirs!r} with shape {tuple(np.shape(source[theirs]))} "
                    f"(no parameter of this layout takes it)")
  if problems:
    shown = "\n  ".join(problems[:12])
    more = f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else ""
    raise ValueError(f"{origin} does not fit the configured VQGAN ({len(problems)} problem(s)):"
                     f"\n  {shown}{more}")
  return {"params": flax.traverse_util.unflatten_dict(flat, sep="/")}


def _res_block(table: dict, ours: str, theirs: str, names: dict) -> None:
  for our_name, their_name in names.items():
    table[f"{ours}/{our_name}"] = f"{theirs}{their_name}"


def _leaves(modules: dict, expected: dict, leaf_names: dict) -> dict:
  """Expands a module table to one row per parameter: our path -> their key."""
  out = {}
  for path in expected:
    module, leaf = path.rsplit("/", 1)
    if module not in modules:
      raise AssertionError(f"no key-map row for our module {module}")
    out[path] = modules[module] + leaf_names[leaf]
  return out


# ------------------------------------------------------------------------------------------------
# MaskGIT's Flax VQGAN (maskgit/nets/vqgan_tokenizer.py): auto-named linen modules.
#   encoder: Conv_0 (3x3, no bias), ResBlock_{level*R + j}, mid ResBlock_{L*R + j}, GroupNorm_0,
#            Conv_1 (1x1)
#   decoder: Conv_0 (3x3), mid ResBlock_{j}, then levels L-1..0: ResBlock_{R + (L-1-level)*R + j}
#            and, for level > 0, the upsample conv Conv_{L - level}; GroupNorm_0, Conv_L
#   ResBlock: GroupNorm_0, Conv_0, GroupNorm_1, Conv_1, Conv_2 (1x1 shortcut on the output)
#   quantizer: codebook [K, D]

MASKGIT_DEFAULTS = dict(
    base_channels=128, channel_mult=(1, 1, 2, 2, 4), num_res_blocks=2, latent_dim=256,
    codebook_size=1024, norm_groups=32, norm_eps=1e-6, downsample="avgpool",
    shortcut_on_output=True, shortcut_kernel=1, res_conv_bias=False, conv_in_bias=False,
    encoder_out_kernel=1, quant_conv=False, pixel_range=(0.0, 1.0))

_MASKGIT_RES = {"norm1": "/GroupNorm_0", "conv1": "/Conv_0", "norm2": "/GroupNorm_1",
                "conv2": "/Conv_1", "shortcut": "/Conv_2"}


def maskgit_config(**overrides) -> VQGANConfig:
  """MaskGIT's ImageNet tokenizer; overrides follow its vqvae config (filters = base_channels,
  channel_multipliers = channel_mult, embedding_dim = latent_dim). Its bottleneck has as many
  blocks as each level unless mid_res_blocks is given."""
  fields = {**MASKGIT_DEFAULTS, **overrides}
  fields.setdefault("mid_res_blocks", fields["num_res_blocks"])
  for k in ("decoder_res_blocks", "decoder_base_channels", "decoder_channel_mult"):
    if fields.get(k) is not None:
      raise ValueError(f"MaskGIT's decoder mirrors its encoder; {k}={fields[k]!r} cannot be set")
  return VQGANConfig(**fields)


def maskgit_key_map(cfg: VQGANConfig) -> dict:
  """Our param path -> MaskGIT's '/'-joined param path, for every parameter."""
  levels, blocks = len(cfg.channel_mult), cfg.num_res_blocks
  m = {"encoder/conv_in": "encoder/Conv_0", "encoder/norm_out": "encoder/GroupNorm_0",
       "encoder/conv_out": "encoder/Conv_1", "decoder/conv_in": "decoder/Conv_0",
       "decoder/norm_out": "decoder/GroupNorm_0", "decoder/conv_out": f"decoder/Conv_{levels}",
       "quantizer": "quantizer"}
  for level in range(levels):
    for j in range(blocks):
      _res_block(m, f"encoder/down_{level}_res_{j}", f"encoder/ResBlock_{level * blocks + j}",
                 _MASKGIT_RES)
      _res_block(m, f"decoder/up_{level}_res_{j}",
                 f"decoder/ResBlock_{cfg.mid_res_blocks + (levels - 1 - level) * blocks + j}",
                 _MASKGIT_RES)
    if level > 0:
      m[f"decoder/up_{level}_sample/conv"] = f"decoder/Conv_{levels - level}"
  for j in range(cfg.mid_res_blocks):
    _res_block(m, f"encoder/mid_res_{j}", f"encoder/ResBlock_{levels * blocks + j}", _MASKGIT_RES)
    _res_block(m, f"decoder/mid_res_{j}", f"decoder/ResBlock_{j}", _MASKGIT_RES)
  leaf = {"kernel": "/kernel", "bias": "/bias", "scale": "/scale", "codebook": "/codebook"}
  return _leaves(m, expected_shapes(cfg), leaf)


def from_maskgit(msgpack_path, **config):
  """MaskGIT's published tokenizer msgpack -> (VQGANConfig, {'params': tree} of float32 numpy).

  config: VQGANConfig overrides on top of MASKGIT_DEFAULTS (the ImageNet f16 tokenizer)."""
  cfg = maskgit_config(**config)
  with open(msgpack_path, "rb") as f:
    state = flax.serialization.msgpack_restore(f.read())
  if not isinstance(state, dict):
    raise ValueError(f"{msgpack_path}: expected a msgpack dict of variables, got "
                     f"{type(state).__name__}")
  tree = state.get("params", state)  # MaskGIT restores {'params': {...}}
  if not isinstance(tree, dict) or not {"encoder", "decoder", "quantizer"} <= set(tree):
    raise ValueError(f"{msgpack_path}: expected MaskGIT VQGAN variables with params/encoder, "
                     f"params/decoder and params/quantizer; found top-level keys "
                     f"{sorted(state)[:10]}")
  source = flax.traverse_util.flatten_dict(tree, sep="/")
  params = _map_params(source, maskgit_key_map(cfg), expected_shapes(cfg),
                       f"MaskGIT checkpoint {msgpack_path}", oihw=False)
  return cfg, params


# ------------------------------------------------------------------------------------------------
# diffusers' VQModel (config.json + diffusion_pytorch_model.safetensors), e.g. aMUSEd's vqvae/.

# Fields that change the network; each either maps to a VQGANConfig field or must have one value.
_DIFFUSERS_FIXED = {  # field -> (required value, default when absent, why)
    "in_channels": (3, 3, "images have 3 channels"),
    "out_channels": (3, 3, "images have 3 channels"),
    "act_fn": ("silu", "silu", "our blocks use swish"),
    "norm_type": ("group", "group", "our decoder has GroupNorm, not SpatialNorm"),
}
# Fields that only matter to diffusers' pipelines or its decode() API.
_DIFFUSERS_IGNORED = ("sample_size", "scaling_factor", "force_upcast", "lookup_from_codebook")
_DIFFUSERS_MAPPED = ("block_out_channels", "layers_per_block", "latent_channels",
                     "num_vq_embeddings", "norm_num_groups", "vq_embed_dim", "down_block_types",
                     "up_block_types", "mid_block_add_attention")
# The mid-block attention (VQGANConfig.mid_attention): our module -> diffusers' (Linear layers).
_DIFFUSERS_ATTN = {"norm": ".group_norm", "q": ".to_q", "k": ".to_k", "v": ".to_v",
                   "out": ".to_out.0"}

_DIFFUSERS_RES = {"norm1": ".norm1", "conv1": ".conv1", "norm2": ".norm2", "conv2": ".conv2",
                  "shortcut": ".conv_shortcut"}


def _diffusers_folder(src_dir):
  """src_dir or its vqvae/ subfolder (a pipeline such as aMUSEd's)."""
  for d in (src_dir, os.path.join(src_dir, "vqvae")):
    if os.path.isfile(os.path.join(d, "config.json")):
      return d
  raise ValueError(f"{src_dir}: no config.json (expected a diffusers VQModel folder, or a "
                   f"pipeline folder with vqvae/config.json)")


def _is_amused(vq_dir) -> bool:
  for d in (vq_dir, os.path.dirname(os.path.abspath(vq_dir))):
    index = os.path.join(d, "model_index.json")
    if os.path.isfile(index):
      with open(index) as f:
        return "amused" in str(json.load(f).get("_class_name", "")).lower()
  return False


def diffusers_config(dconf: dict, **overrides) -> VQGANConfig:
  """diffusers VQModel config dict -> VQGANConfig; a layout we cannot express raises ValueError
  naming the field."""
  name = dconf.get("_class_name", "VQModel")
  if name != "VQModel":
    raise ValueError(f"diffusers config _class_name={name!r}; expected 'VQModel'")
  unknown = sorted(k for k in dconf if not k.startswith("_") and k not in _DIFFUSERS_FIXED
                   and k not in _DIFFUSERS_IGNORED and k not in _DIFFUSERS_MAPPED)
  if unknown:
    raise ValueError(f"diffusers VQModel config field {unknown[0]}={dconf[unknown[0]]!r} is not "
                     f"known to this importer (known: {sorted(_DIFFUSERS_MAPPED)} + "
                     f"{sorted(_DIFFUSERS_FIXED)} + {list(_DIFFUSERS_IGNORED)})")
  for key, (required, default, why) in _DIFFUSERS_FIXED.items():
    value = dconf.get(key, default)
    if value != required:
      raise ValueError(f"diffusers VQModel config field {key}={value!r} cannot be imported: "
                       f"only {key}={required!r} is supported ({why})")
  chans = [int(c) for c in dconf.get("block_out_channels", (64,))]
  for key, block in (("down_block_types", "DownEncoderBlock2D"),
                     ("up_block_types", "UpDecoderBlock2D")):
    types = list(dconf.get(key, (block,)))
    if types != [block] * len(chans):
      raise ValueError(f"diffusers VQModel config field {key}={types!r}: expected "
                       f"{len(chans)} x {block!r} (one per block_out_channels entry)")
  latent = int(dconf.get("latent_channels", 3))
  vq_dim = dconf.get("vq_embed_dim")
  if vq_dim is not None and int(vq_dim) != latent:
    raise ValueError(f"diffusers VQModel config field vq_embed_dim={vq_dim} differs from "
                     f"latent_channels={latent}; our quant_conv keeps the latent width")
  base = math.gcd(*chans)
  layers = int(dconf.get("layers_per_block", 1))
  fields = dict(
      base_channels=base, channel_mult=tuple(c // base for c in chans), num_res_blocks=layers,
      decoder_res_blocks=layers + 1, mid_res_blocks=2, latent_dim=latent,
      # diffusers' default (absent from older configs) is True.
      mid_attention=bool(dconf.get("mid_block_add_attention", True)),
      codebook_size=int(dconf.get("num_vq_embeddings", 256)),
      norm_groups=int(dconf.get("norm_num_groups", 32)), norm_eps=1e-6, downsample="conv",
      shortcut_on_output=False, shortcut_kernel=1, res_conv_bias=True, conv_in_bias=True,
      encoder_out_kernel=3, quant_conv=True, pixel_range=(-1.0, 1.0))
  fields.update(overrides)
  return VQGANConfig(**fields)


def diffusers_key_map(cfg: VQGANConfig) -> dict:
  """Our param path -> diffusers state-dict key, for every parameter."""
  levels = len(cfg.channel_mult)
  m = {"encoder/conv_in": "encoder.conv_in", "encoder/norm_out": "encoder.conv_norm_out",
       "encoder/conv_out": "encoder.conv_out", "quant_conv": "quant_conv",
       "quantizer": "quantize.embedding", "post_quant_conv": "post_quant_conv",
       "decoder/conv_in": "decoder.conv_in", "decoder/norm_out": "decoder.conv_norm_out",
       "decoder/conv_out": "decoder.conv_out"}
  for level in range(levels):
    for j in range(cfg.num_res_blocks):
      _res_block(m, f"encoder/down_{level}_res_{j}", f"encoder.down_blocks.{level}.resnets.{j}",
                 _DIFFUSERS_RES)
    if level < levels - 1:
      m[f"encoder/down_{level}_sample/conv"] = f"encoder.down_blocks.{level}.downsamplers.0.conv"
    up = levels - 1 - level  # diffusers numbers up_blocks in decoding order
    for j in range(cfg.decoder_res_blocks):
      _res_block(m, f"decoder/up_{level}_res_{j}", f"decoder.up_blocks.{up}.resnets.{j}",
                 _DIFFUSERS_RES)
    if level > 0:
      m[f"decoder/up_{level}_sample/conv"] = f"decoder.up_blocks.{up}.upsamplers.0.conv"
  for part in ("encoder", "decoder"):
    for j in range(cfg.mid_res_blocks):
      _res_block(m, f"{part}/mid_res_{j}", f"{part}.mid_block.resnets.{j}", _DIFFUSERS_RES)
    if cfg.mid_attention:
      _res_block(m, f"{part}/mid_attn", f"{part}.mid_block.attentions.0", _DIFFUSERS_ATTN)
  leaf = {"kernel": ".weight", "bias": ".bias", "scale": ".weight", "codebook": ".weight"}
  return _leaves(m, expected_shapes(cfg), leaf)


def _linear_kernels(cfg: VQGANConfig) -> set:
  """Our paths of the dense kernels whose torch Linear weights are [out, in] (transposed)."""
  if not cfg.mid_attention:
    return set()
  return {f"{part}/mid_attn/{name}/kernel" for part in ("encoder", "decoder")
          for name in ("q", "k", "v", "out")}


def from_diffusers(src_dir, variant=None, **overrides):
  """diffusers VQModel folder -> (VQGANConfig, {'params': tree} of float32 numpy).

  src_dir: the folder with config.json and diffusion_pytorch_model[.variant].safetensors, or a
  pipeline folder with it under vqvae/. pixel_range defaults to (0, 1) for an aMUSEd pipeline
  (model_index.json) and (-1, 1) otherwise; overrides set any VQGANConfig field that does not
  change the weights (pixel_range, dtype, ...)."""
  vq_dir = _diffusers_folder(src_dir)
  with open(os.path.join(vq_dir, "config.json")) as f:
    dconf = json.load(f)
  if "pixel_range" not in overrides and _is_amused(vq_dir):
    overrides["pixel_range"] = (0.0, 1.0)
  cfg = diffusers_config(dconf, **overrides)
  name = "diffusion_pytorch_model" + (f".{variant}" if variant else "") + ".safetensors"
  path = os.path.join(vq_dir, name)
  if not os.path.isfile(path):
    raise ValueError(f"{vq_dir}: no {name} (only safetensors weights are read; re-save the model "
                     f"with save_pretrained(..., safe_serialization=True))")
  source = st_numpy.load_file(path)
  params = _map_params(source, diffusers_key_map(cfg), expected_shapes(cfg),
                       f"diffusers checkpoint {path}", oihw=True,
                       linear=frozenset(_linear_kernels(cfg)))
  return cfg, params


# ------------------------------------------------------------------------------------------------
# Our params-only checkpoint.

def save(params, cfg: VQGANConfig, out_dir) -> None:
  """Writes params ({'params': tree} or the bare tree) and cfg to out_dir."""
  tree = params["params"] if set(params) == {"params"} else params
  flat = flax.traverse_util.flatten_dict(jax.device_get(tree), sep="/")
  expected = expected_shapes(cfg)
  _map_params(flat, {k: k for k in expected}, expected, "params to save", oihw=False)
  os.makedirs(out_dir, exist_ok=True)
  st_numpy.save_file({k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in flat.items()},
                     os.path.join(out_dir, PARAMS_FILE), metadata={"format": FORMAT})
  with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
    json.dump({"format": FORMAT, "config": dataclasses.asdict(cfg)}, f, indent=2)


def load(directory):
  """A folder written by `save` -> (VQGANConfig, {'params': tree} of float32 numpy)."""
  config_path = os.path.join(directory, CONFIG_FILE)
  if not os.path.isfile(config_path):
    raise ValueError(f"{directory}: no {CONFIG_FILE}; expected a folder written by muse-convert")
  with open(config_path) as f:
    meta = json.load(f)
  if meta.get("format") != FORMAT:
    hint = (" (it is a diffusers folder: convert it with muse-convert --from diffusers-vq)"
            if "_class_name" in meta else "")
    raise ValueError(f"{config_path} is not a {FORMAT} checkpoint{hint}")
  fields = {f.name: f for f in dataclasses.fields(VQGANConfig)}
  raw = meta["config"]
  unknown = sorted(set(raw) - set(fields))
  if unknown:
    raise ValueError(f"{config_path}: unknown VQGANConfig field {unknown[0]!r}")
  cfg = VQGANConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
  source = st_numpy.load_file(os.path.join(directory, PARAMS_FILE))
  expected = expected_shapes(cfg)
  return cfg, _map_params(source, {k: k for k in expected}, expected,
                          f"checkpoint {directory}", oihw=False)


# ------------------------------------------------------------------------------------------------
# CLI. Each converter: (src, out, args) -> a one-line summary. Text-encoder importers add rows.

def _pixel_range(args):
  return {"pixel_range": tuple(args.pixel_range)} if args.pixel_range else {}


def _convert_maskgit(src, out, args):
  cfg, params = from_maskgit(src, **{**_pixel_range(args), **args.set})
  save(params, cfg, out)
  return cfg


def _convert_diffusers(src, out, args):
  cfg, params = from_diffusers(src, variant=args.variant, **{**_pixel_range(args), **args.set})
  save(params, cfg, out)
  return cfg


from muse_jax.convert import hf_text  # noqa: E402  (text-encoder rows below)

CONVERTERS = {"maskgit-vq": _convert_maskgit, "diffusers-vq": _convert_diffusers,
              "hf-t5": hf_text.convert_hf_t5, "hf-bert": hf_text.convert_hf_bert}


def _assignment(text):
  key, sep, value = text.partition("=")
  if not sep or not key:
    raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
  try:
    return key, ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return key, value


def main(argv=None, converters=None) -> int:
  converters = CONVERTERS if converters is None else converters
  parser = argparse.ArgumentParser(
      prog="muse-convert", description="Convert published weights to muse_jax's format.")
  parser.add_argument("--from", dest="source", required=True, choices=sorted(converters),
                      help="format of SRC")
  parser.add_argument("src", metavar="SRC", help="checkpoint file or folder to convert")
  parser.add_argument("--out", required=True, metavar="DST", help="output folder")
  parser.add_argument("--set", type=_assignment, action="append", default=[],
                      metavar="KEY=VALUE", help="config field override (Python literal)")
  parser.add_argument("--pixel-range", type=float, nargs=2, metavar=("LO", "HI"),
                      help="tokenizers: image range at the model's input and output")
  parser.add_argument("--variant", help="diffusers weights variant, e.g. fp16")
  args = paths.resolve_args(parser.parse_args(argv), ("src", "out"))
  args.set = dict(args.set)

  def convert():
    result = converters[args.source](args.src, args.out, args)
    print(f"muse-convert: wrote {args.out} from {args.source} {args.src}: {result}")
    return 0

  # The importers raise ValueError for layouts and files they cannot read (naming the field).
  return errors.report("muse-convert", convert, also=(ValueError, OSError))


def run_main():
  sys.exit(main(sys.argv[1:]))
