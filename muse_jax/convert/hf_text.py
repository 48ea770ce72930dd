"""Importers for Hugging Face text encoders (T5, BERT) from local snapshot folders.

A snapshot is a folder with config.json and safetensors weights: one `model.safetensors`, or shards
listed by a `*.safetensors.index.json`. T5EncoderModel and T5ForConditionalGeneration snapshots
both load (decoder and lm_head weights are ignored); BertModel snapshots with or without the
`bert.` prefix of the task heads (pooler and heads ignored). Pickle weights (.bin) are refused;
float32, float16 and bfloat16 tensors are read and upcast to float32.

`muse-convert --from hf-t5|hf-bert SRC --out DST` writes our own format (params.safetensors with
our param paths, a config.json tagged "format": "muse_jax.text_encoder", and the tokenizer files);
`text_encoder.load` reads that folder as it reads a snapshot.

Every parameter comes from an explicit key map: our params path -> their key(s), one per layer for
the scanned layers (stacked on a leading axis), with the HF shape the config implies and the
transform into our layout (torch Linear [out, in] -> our [in, ...] kernels). Missing, unexpected
or mis-shaped keys raise a ValueError naming each key and both shapes, before any tensor is read.
"""
import dataclasses
import glob
import json
import os
import shutil
from typing import Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import numpy as st_numpy
from safetensors import safe_open

from muse_jax.models.bert import BertConfig, BertEncoder
from muse_jax.models.t5 import T5Config, T5Encoder

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


# ------------------------------------------------------------------------------------------------
# Snapshot folders.

class Snapshot:
  """A local Hugging Face snapshot: `config` (config.json dict) and lazily read tensors.

  Only safetensors headers are read until `get`; tensors come back as float32 numpy arrays.
  """

  def __init__(self, path: str):
    if not os.path.isdir(path):
      raise FileNotFoundError(f"text encoder snapshot {path!r} is not a folder; expected a Hugging "
                              "Face snapshot with config.json and safetensors weights")
    self.path = path
    config_file = os.path.join(path, "config.json")
    if not os.path.exists(config_file):
      raise FileNotFoundError(f"{path} has no config.json; expected a Hugging Face snapshot folder")
    with open(config_file) as f:
      self.config = json.load(f)
    self._file_of = _weight_files(path)          # their key -> safetensors file
    self._handles = {}

  def keys(self):
    return self._file_of.keys()

  def _handle(self, key):
    name = self._file_of[key]
    if name not in self._handles:
      self._handles[name] = safe_open(os.path.join(self.path, name), framework="np")
    return self._handles[name]

  def shape(self, key) -> tuple:
    return tuple(self._handle(key).get_slice(key).get_shape())

  def get(self, key) -> np.ndarray:
    handle = self._handle(key)
    if handle.get_slice(key).get_dtype() == "BF16":   # numpy has no bfloat16: read through jax
      name = self._file_of[key]
      with safe_open(os.path.join(self.path, name), framework="flax") as f:
        return np.asarray(f.get_tensor(key), dtype=np.float32)
    return np.asarray(handle.get_tensor(key), dtype=np.float32)


def _weight_files(path) -> dict:
  """their key -> safetensors file name (relative to `path`)."""
  indexes = sorted(glob.glob(os.path.join(path, "*.safetensors.index.json")))
  if len(indexes) > 1:
    raise ValueError(f"{path} has several safetensors index files {indexes}; keep one")
  if indexes:
    with open(indexes[0]) as f:
      weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
      raise ValueError(f"{indexes[0]} has no 'weight_map' of tensor name -> shard file")
    for shard in sorted(set(weight_map.values())):
      if not os.path.exists(os.path.join(path, shard)):
        raise FileNotFoundError(f"shard {shard} listed in {indexes[0]} is missing from {path}")
    return dict(weight_map)
  files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(path, "*.safetensors")))
  if "model.safetensors" in files:
    files = ["model.safetensors"]
  if len(files) > 1:
    raise ValueError(f"{path} has several safetensors files {files} but no *.safetensors.index.json "
                     "saying which tensor is in which")
  if files:
    with safe_open(os.path.join(path, files[0]), framework="np") as f:
      return {k: files[0] for k in f.keys()}
  pickles = sorted(n for n in os.listdir(path) if n.endswith(PICKLE_SUFFIXES)
                   or n.endswith(".bin.index.json"))
  if pickles:
    raise ValueError(
        f"{path} has only PyTorch pickle weights ({', '.join(pickles)}); pickle checkpoints are "
        "not loaded (they can run code). Convert the folder to safetensors first, once, where you "
        "trust the file: python -c \"import transformers as t; "
        "t.T5EncoderModel.from_pretrained('SRC').save_pretrained('DST')\" (BertModel for BERT; "
        "transformers writes safetensors), then copy the tokenizer files (spiece.model or "
        "tokenizer.json) into DST.")
  raise FileNotFoundError(f"{path} has no weights: expected model.safetensors or a "
                          f"*.safetensors.index.json with its shards; found {sorted(os.listdir(path))}")


# ------------------------------------------------------------------------------------------------
# Key maps and the one conversion routine.

@dataclasses.dataclass(frozen=True)
class Source:
  """Where one of our tensors (or one layer of a stacked one) comes from.

  keys: their key, or aliases of one tensor (the first present is read; all count as used).
  shape: the shape their tensor must have. transform: their array -> our layout.
  """
  keys: tuple
  shape: tuple
  transform: Callable = lambda w: w


def _same(w):
  return w


def _transpose(w):
  return w.T


def _in_heads(h, k):
  """torch Linear [H*K, D] -> our kernel [D, H, K]."""
  return lambda w: w.T.reshape(w.shape[1], h, k)


def _out_heads(h, k):
  """torch Linear [D, H*K] -> our kernel [H, K, D]."""
  return lambda w: w.T.reshape(h, k, w.shape[0])


def _heads_bias(h, k):
  return lambda b: b.reshape(h, k)


def t5_key_map(c: T5Config) -> dict:
  """Our T5Encoder params path -> Source (or a list of per-layer Sources, stacked)."""
  d, h, k, f = c.d_model, c.num_heads, c.d_kv, c.d_ff
  hk = h * k
  table = {
      ("token_embed",): Source(("shared.weight", "encoder.embed_tokens.weight"),
                               (c.vocab_size, d)),
      ("relpos_bias",): Source(("encoder.block.0.layer.0.SelfAttention.relative_attention_bias"
                                ".weight",), (c.relative_attention_num_buckets, h)),
      ("final_norm", "scale"): Source(("encoder.final_layer_norm.weight",), (d,)),
  }
  per_layer = {
      ("attn_norm", "scale"): ("layer.0.layer_norm.weight", (d,), _same),
      ("attn", "query", "kernel"): ("layer.0.SelfAttention.q.weight", (hk, d), _in_heads(h, k)),
      ("attn", "key", "kernel"): ("layer.0.SelfAttention.k.weight", (hk, d), _in_heads(h, k)),
      ("attn", "value", "kernel"): ("layer.0.SelfAttention.v.weight", (hk, d), _in_heads(h, k)),
      ("attn", "out", "kernel"): ("layer.0.SelfAttention.o.weight", (d, hk), _out_heads(h, k)),
      ("mlp_norm", "scale"): ("layer.1.layer_norm.weight", (d,), _same),
      ("mlp", "wo", "kernel"): ("layer.1.DenseReluDense.wo.weight", (d, f), _transpose),
  }
  for wi in (("wi_0", "wi_1") if c.gated else ("wi",)):
    per_layer[("mlp", wi, "kernel")] = (f"layer.1.DenseReluDense.{wi}.weight", (f, d), _transpose)
  for ours, (theirs, shape, fn) in per_layer.items():
    table[("layers",) + ours] = [Source((f"encoder.block.{i}.{theirs}",), shape, fn)
                                 for i in range(c.num_layers)]
  return table


def t5_ignored(key: str) -> bool:
  """Keys of a T5 snapshot that the encoder does not use."""
  return key.startswith("decoder.") or key.startswith("lm_head.")


def bert_key_map(c: BertConfig, prefix: str = "") -> dict:
  """Our BertEncoder params path -> Source (or per-layer Sources). prefix: 'bert.' for task models.

  LayerNorm params are also found under their TF-era names gamma/beta."""
  d, h, k, f = c.hidden_size, c.num_attention_heads, c.head_dim, c.intermediate_size
  p = prefix

  def ln(base):
    return {"scale": ((f"{base}.weight", f"{base}.gamma"), (d,), _same),
            "bias": ((f"{base}.bias", f"{base}.beta"), (d,), _same)}

  table = {
      ("word_embed",): Source((f"{p}embeddings.word_embeddings.weight",), (c.vocab_size, d)),
      ("pos_embed",): Source((f"{p}embeddings.position_embeddings.weight",),
                             (c.max_position_embeddings, d)),
      ("type_embed",): Source((f"{p}embeddings.token_type_embeddings.weight",),
                              (c.type_vocab_size, d)),
  }
  for leaf, (keys, shape, fn) in ln(f"{p}embeddings.LayerNorm").items():
    table[("embed_norm", leaf)] = Source(keys, shape, fn)
  per_layer = {}
  for ours, theirs in (("query", "self.query"), ("key", "self.key"), ("value", "self.value")):
    per_layer[("attn", ours, "kernel")] = ((f"attention.{theirs}.weight",), (h * k, d),
                                           _in_heads(h, k))
    per_layer[("attn", ours, "bias")] = ((f"attention.{theirs}.bias",), (h * k,),
                                         _heads_bias(h, k))
  per_layer[("attn", "out", "kernel")] = (("attention.output.dense.weight",), (d, h * k),
                                          _out_heads(h, k))
  per_layer[("attn", "out", "bias")] = (("attention.output.dense.bias",), (d,), _same)
  per_layer[("mlp", "wi", "kernel")] = (("intermediate.dense.weight",), (f, d), _transpose)
  per_layer[("mlp", "wi", "bias")] = (("intermediate.dense.bias",), (f,), _same)
  per_layer[("mlp", "wo", "kernel")] = (("output.dense.weight",), (d, f), _transpose)
  per_layer[("mlp", "wo", "bias")] = (("output.dense.bias",), (d,), _same)
  for name, base in (("attn_norm", "attention.output.LayerNorm"), ("mlp_norm", "output.LayerNorm")):
    for leaf, spec in ln(base).items():
      per_layer[(name, leaf)] = spec
  for ours, (keys, shape, fn) in per_layer.items():
    table[("layers",) + ours] = [
        Source(tuple(f"{p}encoder.layer.{i}.{key}" for key in keys), shape, fn)
        for i in range(c.num_hidden_layers)]
  return table


def bert_prefix(keys) -> str:
  """'bert.' when the snapshot is a BERT task model (BertForMaskedLM, ...), else ''."""
  return "bert." if any(k.startswith("bert.embeddings.") for k in keys) else ""


def bert_ignored(key: str, prefix: str = "") -> bool:
  """Keys of a BERT snapshot that the encoder does not use: the position-id buffer, the pooler
  and (task models) their heads."""
  if prefix and not key.startswith(prefix):
    return key.startswith("cls.") or key.startswith("classifier.") or key.startswith("qa_outputs.")
  rest = key[len(prefix):]
  return rest in ("embeddings.position_ids",) or rest.startswith("pooler.")


def _listing(items, limit=12):
  items = list(items)
  more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
  return "; ".join(items[:limit]) + more


def convert(snapshot: Snapshot, key_map: dict, ignored: Callable[[str], bool],
            place: Callable | None = None) -> dict:
  """Reads every tensor of `key_map` from `snapshot` into our nested params dict.

  Checks all keys and shapes first (headers only) and raises one ValueError listing every missing,
  mis-shaped and unexpected key. place(path_tuple, float32 numpy array) -> stored leaf (default:
  the numpy array), called once per leaf as soon as it is built so host copies can be freed.
  """
  available = set(snapshot.keys())
  used, problems, chosen = set(), [], {}
  for ours, spec in key_map.items():
    for src in (spec if isinstance(spec, list) else [spec]):
      present = [key for key in src.keys if key in available]
      used.update(present)
      if not present:
        alias = f" (or {', '.join(map(repr, src.keys[1:]))})" if len(src.keys) > 1 else ""
        problems.append(f"missing key {src.keys[0]!r}{alias} (expected shape {src.shape}, for our "
                        f"{'/'.join(ours)})")
        continue
      chosen[src.keys] = present[0]
      got = snapshot.shape(present[0])
      if got != tuple(src.shape):
        problems.append(f"key {present[0]!r} has shape {got} but config.json implies "
                        f"{tuple(src.shape)} (for our {'/'.join(ours)})")
  unexpected = sorted(k for k in available - used if not ignored(k))
  problems += [f"unexpected key {k!r} with shape {snapshot.shape(k)}" for k in unexpected]
  if problems:
    raise ValueError(f"checkpoint {snapshot.path} does not match its config.json: "
                     f"{_listing(problems)}")
  place = place or (lambda path, array: array)
  params = {}
  for ours, spec in key_map.items():
    if isinstance(spec, list):
      value = np.stack([src.transform(snapshot.get(chosen[src.keys])) for src in spec])
    else:
      value = spec.transform(snapshot.get(chosen[spec.keys]))
    node = params
    for name in ours[:-1]:
      node = node.setdefault(name, {})
    node[ours[-1]] = place(ours, np.ascontiguousarray(value, dtype=np.float32))
  return params


# ------------------------------------------------------------------------------------------------
# Our converted format (written by muse-convert --from hf-t5|hf-bert): a folder with
#   config.json         {"format": "muse_jax.text_encoder", "kind": "t5"|"bert", "config": {...}}
#   params.safetensors  our params flattened with "/" (e.g. "layers/attn/query/kernel"), float32
#   tokenizer files     copied from the snapshot (tokenizer.json, spiece.model, ...)
# text_encoder.load reads it like a snapshot folder.

FORMAT = "muse_jax.text_encoder"
PARAMS_FILE = "params.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json",
                   "special_tokens_map.json", "vocab.txt")
KINDS = ("t5", "bert")
_CONFIGS = {"t5": T5Config, "bert": BertConfig}


def is_converted(config: dict) -> bool:
  """Whether a folder's config.json dict is ours (not a Hugging Face config)."""
  return config.get("format") == FORMAT


def build_model(kind: str, model_cfg):
  """Our flax module for a T5Config / BertConfig."""
  if kind not in KINDS:
    raise ValueError(f"text encoder kind must be one of {KINDS}, got {kind!r}")
  return T5Encoder(model_cfg) if kind == "t5" else BertEncoder(model_cfg)


def expected_shapes(kind: str, model_cfg) -> dict:
  """our params path tuple -> shape, from jax.eval_shape of the module's init (no memory)."""
  ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  mask = jax.ShapeDtypeStruct((1, 8), jnp.bool_)
  tree = nn.unbox(jax.eval_shape(build_model(kind, model_cfg).init, jax.random.key(0), ids, mask))
  return {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(tree["params"]).items()}


def converted_config(config: dict, path: str, kind: str, dtype: str = "float32"):
  """Our config.json dict -> the model config (compute dtype `dtype`); checks the kind."""
  saved = config.get("kind")
  if saved not in KINDS:
    raise ValueError(f"{path}/{CONFIG_FILE} has kind {saved!r}, expected one of {KINDS}")
  if saved != kind:
    raise ValueError(f"{path} holds a converted {saved!r} text encoder but text_encoder.kind is "
                     f"{kind!r}")
  cls = _CONFIGS[saved]
  raw = dict(config.get("config", {}))
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(raw) - names)
  if unknown:
    raise ValueError(f"{path}/{CONFIG_FILE}: unknown {cls.__name__} fields {unknown}")
  raw["dtype"] = dtype
  return cls(**raw)


def model_and_key_map(snapshot: Snapshot, kind: str, dtype: str = "float32"):
  """(model config, key map, ignored-key predicate) for a Hugging Face snapshot or our format."""
  if is_converted(snapshot.config):
    model_cfg = converted_config(snapshot.config, snapshot.path, kind, dtype)
    key_map = {ours: Source(("/".join(ours),), shape)
               for ours, shape in expected_shapes(kind, model_cfg).items()}
    return model_cfg, key_map, lambda key: False
  if kind == "t5":
    model_cfg = T5Config.from_hf(snapshot.config, dtype=dtype)
    return model_cfg, t5_key_map(model_cfg), t5_ignored
  if kind == "bert":
    model_cfg = BertConfig.from_hf(snapshot.config, dtype=dtype)
    prefix = bert_prefix(snapshot.keys())
    return model_cfg, bert_key_map(model_cfg, prefix), lambda k: bert_ignored(k, prefix)
  raise ValueError(f"text encoder kind must be one of {KINDS}, got {kind!r}")


def load_params(path: str, kind: str, dtype: str = "float32", place: Callable | None = None):
  """A Hugging Face snapshot folder or one of ours -> (model config, params dict)."""
  snap = Snapshot(path)
  model_cfg, key_map, ignored = model_and_key_map(snap, kind, dtype)
  return model_cfg, convert(snap, key_map, ignored, place)


def save(out_dir: str, kind: str, model_cfg, params: dict, tokenizer_dir: str) -> None:
  """Writes params, config and the tokenizer files of `tokenizer_dir` in our format."""
  tokenizer_files = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(tokenizer_dir, n))]
  if not any(n in tokenizer_files for n in ("tokenizer.json", "spiece.model")):
    raise ValueError(f"{tokenizer_dir} has no tokenizer.json or spiece.model to go with the "
                     "weights")
  expected = expected_shapes(kind, model_cfg)
  flat = flax.traverse_util.flatten_dict(params)
  wrong = sorted(set(flat) ^ set(expected)) + sorted(
      k for k in set(flat) & set(expected) if tuple(np.shape(flat[k])) != expected[k])
  if wrong:
    raise ValueError(f"params to save do not fit the {kind} model at "
                     f"{_listing('/'.join(k) for k in wrong)}")
  os.makedirs(out_dir, exist_ok=True)
  st_numpy.save_file({"/".join(k): np.ascontiguousarray(np.asarray(v, np.float32))
                      for k, v in flat.items()},
                     os.path.join(out_dir, PARAMS_FILE), metadata={"format": FORMAT, "kind": kind})
  config = {k: v for k, v in dataclasses.asdict(model_cfg).items() if k != "dtype"}
  with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
    json.dump({"format": FORMAT, "kind": kind, "config": config}, f, indent=2)
  for name in tokenizer_files:
    shutil.copyfile(os.path.join(tokenizer_dir, name), os.path.join(out_dir, name))


# ------------------------------------------------------------------------------------------------
# muse-convert rows (see muse_jax/convert/vq.py CONVERTERS): (src, out, args) -> summary.

def _convert_cli(kind, src, out, args):
  extra = [flag for flag, value in (("--set", getattr(args, "set", None)),
                                    ("--pixel-range", getattr(args, "pixel_range", None)),
                                    ("--variant", getattr(args, "variant", None))) if value]
  if extra:
    raise ValueError(f"--from hf-{kind} takes no {', '.join(extra)} (the compute dtype is chosen "
                     "when loading, by text_encoder.dtype)")
  snap = Snapshot(src)
  if is_converted(snap.config):
    raise ValueError(f"{src} is already in muse_jax's text encoder format")
  model_cfg, key_map, ignored = model_and_key_map(snap, kind)
  params = convert(snap, key_map, ignored)
  save(out, kind, model_cfg, params, src)
  count = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
  return f"{kind} encoder, {count / 1e6:.1f}M params, {model_cfg}"


def convert_hf_t5(src, out, args):
  """muse-convert --from hf-t5 SRC --out DST: a T5 snapshot folder -> our format."""
  return _convert_cli("t5", src, out, args)


def convert_hf_bert(src, out, args):
  """muse-convert --from hf-bert SRC --out DST: a BERT snapshot folder -> our format."""
  return _convert_cli("bert", src, out, args)
