"""Multi-axis self-attention for the super-res model's high-res stream (layers.WindowAttention,
SuperResConfig.hi_attention="multi_axis"): which tokens a token sees in each phase (by
perturbation), equality with a numpy reference, gradients, and config errors."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from muse_jax.models import layers
from muse_jax.models.superres import SuperResConfig, SuperResTransformer

SIDE, WINDOW, D, HEADS = 8, 4, 16, 2


def _module(kind):
  return layers.WindowAttention(HEADS, D // HEADS, SIDE, WINDOW, kind)


def _init(kind, seed=0):
  x = jax.random.normal(jax.random.key(seed), (2, SIDE * SIDE, D))
  return x, nn.unbox(_module(kind).init(jax.random.key(1), x))


def _sees(kind, row, col):
  """Positions (r, c) whose window holds (row, col): same block, or same grid residues."""
  n = SIDE // WINDOW
  if kind == "block":
    return lambda r, c: r // WINDOW == row // WINDOW and c // WINDOW == col // WINDOW
  return lambda r, c: r % n == row % n and c % n == col % n


@pytest.mark.parametrize("kind", ["block", "grid"])
def test_a_token_reaches_only_its_window(kind):
  x, params = _init(kind)
  apply = jax.jit(lambda v: _module(kind).apply(params, v))
  base = np.asarray(apply(x))
  for row, col in ((0, 0), (5, 2), (7, 7)):
    bumped = x.at[:, row * SIDE + col].add(3.0)
    changed = np.abs(np.asarray(apply(bumped)) - base).max(axis=(0, 2)) > 1e-6
    want = np.array([_sees(kind, row, col)(r, c) for r in range(SIDE) for c in range(SIDE)])
    np.testing.assert_array_equal(changed, want, err_msg=f"{kind} ({row}, {col})")
    assert want.sum() == WINDOW * WINDOW


def _numpy_window_attention(kind, x, p):
  """Reference: for every window, softmax(q k^T / sqrt(E)) v over its tokens, heads apart."""
  a = p["params"]["attn"]
  q = np.einsum("bnd,dhe->bnhe", x, a["query"]["kernel"]) + a["query"]["bias"]
  k = np.einsum("bnd,dhe->bnhe", x, a["key"]["kernel"]) + a["key"]["bias"]
  v = np.einsum("bnd,dhe->bnhe", x, a["value"]["kernel"]) + a["value"]["bias"]
  out = np.zeros_like(q)
  for i in range(SIDE * SIDE):
    r, c = divmod(i, SIDE)
    members = [j for j in range(SIDE * SIDE) if _sees(kind, r, c)(*divmod(j, SIDE))]
    s = np.einsum("bhe,bjhe->bhj", q[:, i], k[:, members]) / np.sqrt(q.shape[-1])
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    out[:, i] = np.einsum("bhj,bjhe->bhe", w, v[:, members])
  return np.einsum("bnhe,hed->bnd", out, a["out"]["kernel"]) + a["out"]["bias"]


@pytest.mark.parametrize("kind", ["block", "grid"])
def test_equals_numpy_reference(kind):
  x, params = _init(kind, seed=3)
  got = np.asarray(_module(kind).apply(params, x))
  want = _numpy_window_attention(kind, np.asarray(x, np.float64),
                                 jax.tree.map(lambda t: np.asarray(t, np.float64), params))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


CFG = SuperResConfig(codebook_size=32, lo_codebook_size=32, lo_grid_size=4, hi_grid_size=8,
                     text_dim=16, hidden_size=32, lo_num_layers=1, hi_num_layers=2, num_heads=2,
                     mlp_dim=64, hi_attention="multi_axis", attn_block=4, attn_grid=2)


def test_superres_multi_axis_gradients_reach_both_phases():
  model = SuperResTransformer(CFG)
  rng = np.random.default_rng(0)
  args = (jnp.asarray(rng.integers(0, 33, (2, 64)), jnp.int32),
          jnp.asarray(rng.integers(0, 32, (2, 16)), jnp.int32),
          jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32), jnp.ones((2, 5), bool))
  params = nn.unbox(model.init(jax.random.key(0), *args))
  layer = params["params"]["hi_blocks"]["layers"]
  assert {"block_attn", "grid_attn", "ln_block", "ln_grid"} <= set(layer)
  assert "self_attn" not in layer
  # Over the real codes only: the padded vocabulary entries hold -inf-like logits.
  loss = lambda p: jnp.mean(model.apply(p, *args)[..., :CFG.codebook_size] ** 2)
  grads = jax.jit(jax.grad(loss))(params)
  for phase in ("block_attn", "grid_attn"):
    g = grads["params"]["hi_blocks"]["layers"][phase]["attn"]["query"]["kernel"]
    assert np.abs(np.asarray(g)).max() > 0, phase


@pytest.mark.parametrize("fields, message", [
    (dict(attn_block=3), r"attn_block=3 must divide model.hi_grid_size=8"),
    (dict(attn_grid=5), r"attn_grid=5 must divide model.hi_grid_size=8"),
    (dict(hi_attention="axial"), "must be 'full' or 'multi_axis'"),
])
def test_shapes_the_windows_do_not_divide_are_refused(fields, message):
  import dataclasses
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(CFG, **fields)
