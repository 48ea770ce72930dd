"""Transformer building blocks with logical axis names on every parameter.

Parameters are float32; matmuls run in the module's `dtype`; attention softmax is float32.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from muse_jax.parallel import axes

Dtype = Any
INIT_STD = 0.02


def _init(names, std=INIT_STD):
  return nn.with_logical_partitioning(nn.initializers.normal(std), names)


def _zeros(names):
  return nn.with_logical_partitioning(nn.initializers.zeros, names)


def layer_norm(dtype, name=None, axis=axes.EMBED):
  """LayerNorm over the last dimension (logical axis `axis`), statistics in float32."""
  return nn.LayerNorm(dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axis,)),
                      bias_init=_zeros((axis,)))


class Dense(nn.Module):
  """Contracts the last `in_dims` dimensions of x with a kernel of shape in_shape + features.

  x_...xI -> y_...xF. The kernel carries `kernel_axes` (one logical name per kernel dimension),
  the bias the trailing len(features) names. (flax's DenseGeneral reshapes multi-dimensional
  kernels to 2D inside its initializer, which breaks logical sharding constraints.)
  """
  features: tuple
  kernel_axes: tuple
  in_dims: int = 1
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    feats = tuple(self.features)
    kernel = self.param("kernel", _init(self.kernel_axes),
                        tuple(x.shape[x.ndim - self.in_dims:]) + feats, jnp.float32)
    y = jnp.tensordot(x.astype(self.dtype), kernel.astype(self.dtype), axes=self.in_dims)
    if self.use_bias:
      bias = self.param("bias", _zeros(self.kernel_axes[-len(feats):]), feats, jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


def dense(features, kernel_axes, dtype, in_dims=1, name=None, use_bias=True):
  """A Dense layer; `features` an int or a tuple of output dimensions."""
  feats = (features,) if isinstance(features, int) else tuple(features)
  return Dense(feats, tuple(kernel_axes), in_dims, use_bias, dtype, name=name)


class MultiHeadAttention(nn.Module):
  """Attention of queries x_BxQxD over keys/values kv_BxKxD.

  mask_BxK: which keys may be attended (None: all). Returns y_BxQxD.

  For a context that stays fixed across many calls (text during decoding) the key/value projection
  can be done once: `project_kv_only=True` returns (k_BxKxHxE, v_BxKxHxE) (x_BxQxD unused), and a
  later call with `cached_kv=(k, v)` attends over them instead of projecting kv_BxKxD (then unused).
  Both paths use the same "key"/"value" parameters.
  """
  num_heads: int
  head_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxQxD, kv_BxKxD, mask_BxK=None, *, cached_kv=None, project_kv_only=False):
    qkv_axes = (axes.EMBED, axes.HEADS, axes.HEAD_DIM)
    feats = (self.num_heads, self.head_dim)
    project_kv = lambda: (dense(feats, qkv_axes, self.dtype, name="key")(kv_BxKxD),
                          dense(feats, qkv_axes, self.dtype, name="value")(kv_BxKxD))
    if project_kv_only:
      return project_kv()
    d = x_BxQxD.shape[-1]
    q_BxQxHxK = dense(feats, qkv_axes, self.dtype, name="query")(x_BxQxD)
    k_BxSxHxK, v_BxSxHxK = project_kv() if cached_kv is None else cached_kv
    q_BxQxHxK = q_BxQxHxK * jnp.asarray(self.head_dim ** -0.5, self.dtype)
    # The batched matmuls run heads-major (B, H, sequence, head dim), not on the projections'
    # (B, sequence, H, head dim) layout: XLA's CPU batched dots are much faster with the batch
    # axes leading and the contracted axis last (benchmarks/train_step.py: step 8.5 s -> 7.5 s).
    q_BxHxQxK, k_BxHxSxK, v_BxHxSxK = (t.transpose(0, 2, 1, 3)
                                       for t in (q_BxQxHxK, k_BxSxHxK, v_BxSxHxK))
    logits_BxHxQxS = jnp.einsum("bhqk,bhsk->bhqs", q_BxHxQxK, k_BxHxSxK,
                                preferred_element_type=jnp.float32)
    if mask_BxK is not None:
      logits_BxHxQxS = jnp.where(mask_BxK[:, None, None, :], logits_BxHxQxS,
                                 jnp.finfo(jnp.float32).min)
    probs_BxHxQxS = jax.nn.softmax(logits_BxHxQxS, axis=-1).astype(self.dtype)
    out_BxQxHxK = jnp.einsum("bhqs,bhsk->bhqk", probs_BxHxQxS, v_BxHxSxK).transpose(0, 2, 1, 3)
    return dense(d, (axes.HEADS, axes.HEAD_DIM, axes.EMBED), self.dtype, in_dims=2,
                 name="out")(out_BxQxHxK)


class WindowAttention(nn.Module):
  """Self-attention within windows of a side x side token grid, one of multi-axis attention's
  two phases (Zhao et al. 2021; Tu et al. 2022, MaxViT): kind "block": each token attends to the
  window x window block it lies in; kind "grid": to the window x window tokens spaced side /
  window apart that share its position modulo that stride (a dilated, image-wide grid).
  x_BxNxD (N = side^2, row-major) -> y_BxNxD. Per layer and head: N * window^2 scores instead of
  N^2."""
  num_heads: int
  head_dim: int
  side: int
  window: int
  kind: str
  dtype: Dtype = jnp.float32

  def _partition(self, x_BxNxD):
    """-> windows_(B*W)xLxD, W windows of L = window^2 tokens."""
    b, _, d = x_BxNxD.shape
    w, n = self.window, self.side // self.window
    x = x_BxNxD.reshape(b, self.side, self.side, d)
    if self.kind == "block":   # (row block, row in block, col block, col in block)
      x = x.reshape(b, n, w, n, w, d).transpose(0, 1, 3, 2, 4, 5)
    else:                      # (row in grid, row offset, col in grid, col offset)
      x = x.reshape(b, w, n, w, n, d).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(b * n * n, w * w, d)

  def _unpartition(self, y, b):
    w, n, d = self.window, self.side // self.window, y.shape[-1]
    y = y.reshape(b, n, n, w, w, d)
    if self.kind == "block":
      y = y.transpose(0, 1, 3, 2, 4, 5)
    else:
      y = y.transpose(0, 3, 1, 4, 2, 5)
    return y.reshape(b, self.side * self.side, d)

  @nn.compact
  def __call__(self, x_BxNxD):
    if self.kind not in ("block", "grid"):
      raise ValueError(f"window attention kind must be 'block' or 'grid', got {self.kind!r}")
    windows = self._partition(x_BxNxD)
    y = MultiHeadAttention(self.num_heads, self.head_dim, self.dtype, name="attn")(windows,
                                                                                  windows)
    return self._unpartition(y, x_BxNxD.shape[0])


class Mlp(nn.Module):
  """Position-wise MLP: x_BxNxD -> GELU(x W1) W2, same shape."""
  mlp_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxNxD):
    d = x_BxNxD.shape[-1]
    h_BxNxF = dense(self.mlp_dim, (axes.EMBED, axes.MLP), self.dtype, name="wi")(x_BxNxD)
    h_BxNxF = nn.with_logical_constraint(nn.gelu(h_BxNxF), (axes.BATCH, axes.LENGTH, axes.MLP))
    return dense(d, (axes.MLP, axes.EMBED), self.dtype, name="wo")(h_BxNxF)


class TransformerBlock(nn.Module):
  """Pre-LN block: self-attention, optional cross-attention to context, MLP.

  x_BxNxD: image stream. ctx_BxTxD / ctx_mask_BxT: context (projected text) or None for a pure
  self-attention block. Examples whose context mask is all False skip cross-attention entirely, so
  for them the block is image self-attention + MLP. Scannable: returns (x_BxNxD, None).

  cross_kv: this layer's cross-attention (k_BxTxHxE, v_BxTxHxE), computed earlier by a block with
  `context_kv_only=True` (which takes the context as its carry, projects it and returns
  (ctx_BxTxD, (k, v))); then ctx_BxTxD is unused and only ctx_mask_BxT is needed.

  multi_axis: (side, block, grid) for multi-axis self-attention over a side x side token grid:
  the full self-attention sublayer is replaced by two pre-LN residual sublayers, block-local
  attention (WindowAttention "block", windows of block x block) then dilated grid attention
  ("grid", grid x grid); () for full self-attention.
  """
  num_heads: int
  head_dim: int
  mlp_dim: int
  cross_attention: bool = True
  dtype: Dtype = jnp.float32
  context_kv_only: bool = False
  multi_axis: tuple = ()

  @nn.compact
  def __call__(self, x_BxNxD, ctx_BxTxD=None, ctx_mask_BxT=None, cross_kv=None):
    if self.context_kv_only:
      ctx_BxTxD = x_BxNxD
      cross_attn = MultiHeadAttention(self.num_heads, self.head_dim, self.dtype, name="cross_attn")
      return ctx_BxTxD, cross_attn(None, ctx_BxTxD, project_kv_only=True)
    act_axes = (axes.BATCH, axes.LENGTH, axes.EMBED)
    x_BxNxD = nn.with_logical_constraint(x_BxNxD, act_axes)
    if self.multi_axis:
      side, block, grid = self.multi_axis
      for kind, window in (("block", block), ("grid", grid)):
        h = layer_norm(self.dtype, f"ln_{kind}")(x_BxNxD)
        x_BxNxD = x_BxNxD + WindowAttention(self.num_heads, self.head_dim, side, window, kind,
                                            self.dtype, name=f"{kind}_attn")(h)
    else:
      h = layer_norm(self.dtype, "ln_self")(x_BxNxD)
      x_BxNxD = x_BxNxD + MultiHeadAttention(self.num_heads, self.head_dim, self.dtype,
                                             name="self_attn")(h, h)
    if self.cross_attention:
      h = layer_norm(self.dtype, "ln_cross")(x_BxNxD)
      y = MultiHeadAttention(self.num_heads, self.head_dim, self.dtype, name="cross_attn")(
          h, ctx_BxTxD, ctx_mask_BxT, cached_kv=cross_kv)
      has_ctx_B = jnp.any(ctx_mask_BxT, axis=-1)
      x_BxNxD = x_BxNxD + jnp.where(has_ctx_B[:, None, None], y, jnp.zeros_like(y))
    h = layer_norm(self.dtype, "ln_mlp")(x_BxNxD)
    x_BxNxD = x_BxNxD + Mlp(self.mlp_dim, self.dtype, name="mlp")(h)
    return nn.with_logical_constraint(x_BxNxD, act_axes), None


# model.remat: what the backward pass keeps from each layer's forward pass.
#   none   everything (no recomputation; the most memory).
#   dots   matmul outputs only; layer norms, softmax and GELU are recomputed from them in the
#          backward pass. On the CPU this is also faster than "none": the elementwise recompute
#          costs less than writing, zero-initialising and reading the scan's stacked residuals
#          (benchmarks/RESULTS.md, cpu-bench: 8.0 s -> 7.0 s per step, temporaries 3.5 -> 1.7 GiB).
#   dots_no_batch  as dots, but attention's batched matmuls (scores, probs @ values) are
#          recomputed too: no (heads, tokens, tokens) tensor is kept.
#   full   nothing but each layer's input: the whole layer is recomputed (paper-scale presets,
#          where activations, not FLOPs, bound the batch per chip).
REMAT_POLICIES = {
    "none": None,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def remat_policy(name: str):
  """The jax.checkpoint policy of model.remat=name (None: no rematerialisation)."""
  if name not in REMAT_POLICIES:
    raise ValueError(f"model.remat={name!r}; expected one of {sorted(REMAT_POLICIES)}")
  return REMAT_POLICIES[name]


class BlockStack(nn.Module):
  """`num_layers` TransformerBlocks under nn.scan (one compiled layer; params stacked on a leading
  "layers" axis) with a rematerialisation policy (REMAT_POLICIES). x_BxNxD -> same shape.

  Decoding with a fixed context computes every layer's cross-attention keys/values once:
  `context_kv_only=True` returns them stacked on the layer axis, (k_LxBxTxHxE, v_LxBxTxHxE), from
  ctx_BxTxD (x_BxNxD unused); passing them back as `cross_kv` runs the stack without re-projecting
  the context (ctx_BxTxD then unused). Same parameters on every path.
  """
  num_layers: int
  num_heads: int
  head_dim: int
  mlp_dim: int
  cross_attention: bool = True
  remat: str = "none"
  dtype: Dtype = jnp.float32
  multi_axis: tuple = ()       # TransformerBlock.multi_axis

  @nn.compact
  def __call__(self, x_BxNxD, ctx_BxTxD=None, ctx_mask_BxT=None, cross_kv=None, *,
               context_kv_only=False):
    block = TransformerBlock
    policy = remat_policy(self.remat)
    if policy is not None and not context_kv_only:
      block = nn.remat(block, prevent_cse=False, policy=policy)
    scan = lambda in_axes: nn.scan(block, variable_axes={"params": 0},
                                   split_rngs={"params": True}, in_axes=in_axes,
                                   length=self.num_layers,
                                   metadata_params={nn.PARTITION_NAME: axes.LAYERS})
    args = (self.num_heads, self.head_dim, self.mlp_dim, self.cross_attention, self.dtype)
    if context_kv_only:
      if not self.cross_attention:
        raise ValueError("context_kv_only needs a stack built with cross_attention=True")
      _, kv = scan(())(*args, context_kv_only=True, name="layers")(ctx_BxTxD)
      return kv
    kw = dict(multi_axis=tuple(self.multi_axis), name="layers")
    if cross_kv is None:
      x_BxNxD, _ = scan((nn.broadcast, nn.broadcast))(*args, **kw)(
          x_BxNxD, ctx_BxTxD, ctx_mask_BxT)
    else:
      x_BxNxD, _ = scan((nn.broadcast, nn.broadcast, 0))(*args, **kw)(
          x_BxNxD, None, ctx_mask_BxT, cross_kv)
    return x_BxNxD
