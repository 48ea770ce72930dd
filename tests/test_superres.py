"""Super-res stage: presets and parameter count, no leak of masked ground truth, text dropout,
context caching, pre-encoded pairs, train smoke with exact resume, config errors."""
import functools
import shutil

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common, superres as superres_config
from muse_jax import tasks
from muse_jax.data import preencoded, preprocess
from muse_jax.train import loop
from tests import helpers


def _config(size="tiny", **overrides):
  """configs/superres.py:size=SIZE with dotted-key overrides, e.g. {"train.num_steps": 4}."""
  return common.override(superres_config.get_config(f"size={size}"), overrides)


@pytest.fixture(scope="module")
def setup():
  """(task, params, batch of 4, jitted model.apply): one compile shared by the model tests."""
  task = tasks.get_task(_config())
  params = nn.unbox(jax.jit(task.init_params)(jax.random.key(0)))
  src = task.make_source()
  batch = {k: jnp.stack([src[i][k] for i in range(4)])
           for k in ("tokens_lo", "tokens", "txt", "txt_mask")}
  return task, params, batch, jax.jit(task.model.apply)


def _logits(setup, tokens_hi, batch=None, txt=None, txt_mask=None):
  _, params, batch0, apply = setup
  batch = batch0 if batch is None else batch
  return np.asarray(apply({"params": params}, tokens_hi, batch["tokens_lo"],
                          batch["txt"] if txt is None else txt,
                          batch["txt_mask"] if txt_mask is None else txt_mask))


@pytest.mark.parametrize("size", sorted(superres_config.PRESETS))
def test_every_preset_evaluates(size):
  assert helpers.param_count(_config(size)) > 0


def test_268m_preset_is_within_10_percent_of_the_paper():
  n = helpers.param_count(_config("268m"))
  assert abs(n - 268e6) / 268e6 < 0.10, f"{n / 1e6:.1f}M params vs paper 268M"


def test_every_parameter_has_logical_axes():
  boxed = jax.eval_shape(tasks.get_task(_config()).init_params, jax.random.key(0))
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
  for x in leaves:
    chex.assert_equal(len(x.names), x.value.ndim)


def test_logits_shape_and_dtype(setup):
  task, _, batch, _ = setup
  c = task.model_cfg
  logits = _logits(setup, batch["tokens"])
  chex.assert_shape(logits, (4, c.hi_seq_len, c.output_vocab))
  assert logits.dtype == np.float32 and np.isfinite(logits[..., :c.codebook_size]).all()


def test_masked_ground_truth_cannot_leak(setup):
  """Changing the true high-res ids at masked positions leaves the logits unchanged; changing an
  unmasked high-res id or a low-res id changes them (the test can fail)."""
  task, _, batch, _ = setup
  c = task.model_cfg
  rng = jax.random.key(3)
  inputs_a, mask, _, txt_mask, _ = task.mask_and_drop_text(rng, batch["tokens"],
                                                             batch["txt_mask"])
  scrambled = jnp.where(mask, (batch["tokens"] + 17) % c.codebook_size, batch["tokens"])
  inputs_b, mask_b, *_ = task.mask_and_drop_text(rng, scrambled, batch["txt_mask"])
  np.testing.assert_array_equal(np.asarray(mask), np.asarray(mask_b))
  assert bool((inputs_a[mask] == c.mask_id).all())
  la = _logits(setup, inputs_a, txt_mask=txt_mask)
  np.testing.assert_array_equal(la, _logits(setup, inputs_b, txt_mask=txt_mask))
  b, m = np.argwhere(~np.asarray(mask))[0]
  inputs_c = inputs_a.at[b, m].set((inputs_a[b, m] + 1) % c.codebook_size)
  assert not np.allclose(la, _logits(setup, inputs_c, txt_mask=txt_mask))
  lo_changed = dict(batch, tokens_lo=(batch["tokens_lo"] + 1) % c.lo_codebook_size)
  assert not np.allclose(la, _logits(setup, inputs_a, lo_changed, txt_mask=txt_mask))


def test_dropped_text_ignores_text_states_but_keeps_low_res(setup):
  task, _, batch, _ = setup
  no_text = jnp.zeros_like(batch["txt_mask"])
  la = _logits(setup, batch["tokens"], txt_mask=no_text)
  lb = _logits(setup, batch["tokens"], txt=batch["txt"] * 5 + 1, txt_mask=no_text)
  np.testing.assert_array_equal(la, lb)
  assert not np.allclose(la, _logits(setup, batch["tokens"]))
  lo_changed = dict(batch, tokens_lo=(batch["tokens_lo"] + 1) % task.model_cfg.lo_codebook_size)
  assert not np.allclose(la, _logits(setup, batch["tokens"], lo_changed, txt_mask=no_text))


def test_text_drop_fraction_and_loss(setup):
  task, params, batch, _ = setup
  big_B = jnp.ones((4096, 8), jnp.bool_)
  *_, txt_mask, keep = task.mask_and_drop_text(jax.random.key(5), jnp.zeros((4096, 64), jnp.int32),
                                               big_B)
  assert abs(float(keep.mean()) - 0.9) < 0.02
  np.testing.assert_array_equal(np.asarray(txt_mask.any(-1)), np.asarray(keep))
  loss, m = jax.jit(task.loss_fn)(params, batch, jax.random.key(5))
  assert np.isfinite(float(loss)) and 0 < float(m["mask_rate"]) <= 1


def test_encode_context_then_logits_equals_call(setup):
  task, params, batch, _ = setup
  c = task.model_cfg
  model, variables = task.model, {"params": params}
  ctx, ctx_mask = model.apply(variables, batch["tokens_lo"], batch["txt"], batch["txt_mask"],
                              method=model.encode_context)
  t = batch["txt"].shape[1]
  chex.assert_shape(ctx, (4, c.lo_seq_len + t, c.hidden_size))
  np.testing.assert_array_equal(np.asarray(ctx_mask[:, :c.lo_seq_len]), True)
  np.testing.assert_array_equal(np.asarray(ctx_mask[:, c.lo_seq_len:]),
                                np.asarray(batch["txt_mask"]))
  split = jax.jit(functools.partial(model.apply, method=model.logits_from_context))(
      variables, batch["tokens"], ctx, ctx_mask)
  np.testing.assert_allclose(np.asarray(split), _logits(setup, batch["tokens"]),
                             rtol=1e-5, atol=1e-5)


def test_wrong_token_count_is_a_clear_error(setup):
  task, params, batch, _ = setup
  with pytest.raises(ValueError, match="tokens_lo has 64 positions.*expects 16"):
    task.model.apply({"params": params}, batch["tokens"], batch["tokens"], batch["txt"],
                     batch["txt_mask"])


def _write_shard(path, n, lo_len, hi_len, text_dim, with_hi=True):
  rng = np.random.default_rng(0)
  with preencoded.PreEncodedWriter(str(path)) as w:
    for i in range(n):
      w.write(tokens=rng.integers(0, 64, lo_len), txt=rng.standard_normal((3 + i % 4, text_dim)),
              tokens_hi=rng.integers(0, 64, hi_len) if with_hi else None)


def test_preencoded_records_become_pairs(tmp_path):
  _write_shard(tmp_path / "a.array_record", 4, 16, 64, 16)
  task = tasks.get_task(_config(**{"data.source": "preencoded",
                                   "data.path": str(tmp_path / "*.array_record")}))
  src = task.make_source()
  transform = task.make_transform(preprocess.SkipCounter(repr(src), 10))
  ex = transform(src[1])
  assert sorted(ex) == ["tokens", "tokens_lo", "txt", "txt_mask"]
  chex.assert_shape([ex["tokens_lo"], ex["tokens"], ex["txt"]], [(16,), (64,), (8, 16)])
  assert ex["txt_mask"].sum() == 4

  _write_shard(tmp_path / "b" / "b.array_record", 1, 16, 64, 16, with_hi=False)
  task = tasks.get_task(_config(**{"data.source": "preencoded",
                                   "data.path": str(tmp_path / "b" / "*.array_record")}))
  src = task.make_source()
  with pytest.raises(ValueError, match="has no 'tokens_hi'"):
    task.make_transform(preprocess.SkipCounter(repr(src), 10))(src[0])
  task = tasks.get_task(_config(**{"data.source": "preencoded", "model.hi_grid_size": 16,
                                   "data.path": str(tmp_path / "*.array_record")}))
  with pytest.raises(ValueError, match="'tokens_hi' has size 64 but model.hi_grid_size"):
    task.make_transform(preprocess.SkipCounter("x", 10))(task.make_source()[0])


def test_train_smoke_and_exact_resume(tmp_path):
  """4 steps on a (data 2, fsdp 2, tensor 2) mesh with checkpoints at 2 and 4; a copy of the
  workdir holding only step 2's checkpoint then resumes to step 4 with the same losses."""
  config = _config(**{"train.num_steps": 4, "checkpoint.every": 2, "mesh.data": 2,
                      "mesh.fsdp": 2, "mesh.tensor": 2, "train.log_every": 1})
  assert loop.run(config, tmp_path / "full").final_step == 4
  full = helpers.read_losses(tmp_path / "full")
  assert sorted(full) == [1, 2, 3, 4] and np.isfinite(list(full.values())).all()
  shutil.copytree(tmp_path / "full" / "checkpoints" / "2", tmp_path / "split" / "checkpoints" / "2")
  assert loop.run(config, tmp_path / "split").start_step == 2
  second = helpers.read_losses(tmp_path / "split")
  assert sorted(second) == [3, 4]
  np.testing.assert_allclose([second[s] for s in (3, 4)], [full[s] for s in (3, 4)], rtol=1e-5)


@pytest.mark.parametrize("overrides,message", [
    ({"model.hi_grid_size": 4}, "hi_grid_size=4 must be larger than model.lo_grid_size=4"),
    ({"model.num_heads": 3}, "hidden_size=32 must be divisible by model.num_heads=3"),
    ({"model.lo_num_layers": 0}, "lo_num_layers must be positive"),
    ({"model.dtype": "int8"}, "model.dtype must be"),
    ({"masking.rate": "linear"}, "masking.rate='linear'"),
])
def test_bad_config_is_a_clear_error(overrides, message):
  with pytest.raises(ValueError, match=message):
    tasks.get_task(_config(**overrides))


def test_unknown_data_source_is_a_clear_error():
  with pytest.raises(ValueError, match="not available for stage 'superres'"):
    tasks.get_task(_config(**{"data.source": "laion"})).make_source()


def test_lo_grid_add_adds_the_low_res_cell_under_each_high_res_position():
  """With model.lo_grid_add the high-res position (i, j) receives the projected low-res stream
  output of cell (i // r, j // r) (checked in numpy from the captured intermediates); without
  it the model has no such parameters."""
  config = _config(**{"model.lo_grid_add": True})
  task = tasks.get_task(config)
  c = task.model_cfg
  params = nn.unbox(jax.jit(task.init_params)(jax.random.key(0)))
  assert "lo_to_hi" in params and "lo_to_hi" not in nn.unbox(
      jax.eval_shape(tasks.get_task(_config()).init_params, jax.random.key(0)))
  src = task.make_source()
  batch = {k: jnp.stack([src[i][k] for i in range(2)]) for k in ("tokens_lo", "tokens", "txt",
                                                                 "txt_mask")}
  _, inter = task.model.apply({"params": params}, batch["tokens"], batch["tokens_lo"],
                              batch["txt"], batch["txt_mask"], capture_intermediates=True)
  lo = np.asarray(inter["intermediates"]["lo_ln_final"]["__call__"][0])     # [B, N, D]
  added = np.asarray(inter["intermediates"]["lo_to_hi"]["__call__"][0])     # [B, M, D]
  g, h, r = c.lo_grid_size, c.hi_grid_size, c.hi_grid_size // c.lo_grid_size
  rows = np.arange(h)[:, None] // r * g + np.arange(h)[None, :] // r        # low-res cell per pos
  w = params["lo_to_hi"]
  expected = lo[:, rows.ravel()] @ np.asarray(w["kernel"]) + np.asarray(w["bias"])
  np.testing.assert_allclose(added, expected, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="lo_grid_add needs model.hi_grid_size=6"):
    tasks.get_task(_config(**{"model.lo_grid_add": True, "model.hi_grid_size": 6}))
