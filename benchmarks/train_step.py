r"""Train-step time, model FLOPs and MFU of the base transformer on the local CPU, in one run.

  JAX_PLATFORMS=cpu python benchmarks/train_step.py                       # cpu-bench, batch 16
  JAX_PLATFORMS=cpu python benchmarks/train_step.py --batch_size=32 --steps=5
  JAX_PLATFORMS=cpu python benchmarks/train_step.py --set=model.num_layers=4 --set=optim.name=adamw

Uses the real training machinery (train.loop.Setup: the jitted, donated, sharded train step with
the masking, loss and optimizer) on one device, and prints
  * step time: median of --steps timed steps after --warmup steps (state fed back, as in training);
  * model FLOPs per step, analytic (formula in `analytic_flops`), next to XLA's
    compiled.cost_analysis()["flops"] for the same executable, and their ratio;
  * the matmul peak: best rate of a jitted square n x n x n matmul (2 n^3 flops) in the compute
    dtype, measured in this process on the same thread pool as the train step, before and after
    the timed steps;
  * MFU = analytic FLOPs / median step time / peak.
Runs in about 1.5 minutes on a 2-core host with the defaults. JAX_PLATFORMS defaults to cpu here.
Like muse-train, it re-executes itself with glibc.malloc.hugetlb=1 (muse_jax/hostenv.py;
MUSE_NO_HUGEPAGES=1 measures without).
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for configs/

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from configs import base as base_config
from muse_jax.data import synthetic
from muse_jax.models import layers
from muse_jax.models.transformer import TransformerConfig
from muse_jax.train import loop


def analytic_flops(cfg: TransformerConfig, batch: int, text_length: int) -> dict:
  """Matmul FLOPs of one forward pass, by component (a multiply-add = 2 flops).

  With B batch, N = grid^2 image tokens, T text length, C text width, D hidden (= heads x head
  dim), F MLP width, V the padded output vocabulary and L layers:
    text projection   2 B T C D
    per layer, self-attention:   Q, K, V, out projections 4 x 2 B N D D;
                                 scores q.k and probs.v   2 x 2 B N N D
    per layer, cross-attention:  Q, out projections 2 x 2 B N D D; K, V over the text 2 x 2 B T D D;
                                 scores and probs.v       2 x 2 B N T D
    per layer, MLP:              2 x 2 B N D F
    output head:      dense 2 B N D D + logits over the padded vocabulary 2 B N D V
  The embedding lookup is a gather (no flops); layer norms, softmax, GELU, the loss and the
  optimizer are elementwise and not counted. A training step is forward + backward = 3 x forward
  (the backward pass computes two matmuls per forward matmul: input and weight gradients).
  """
  b, n, t = batch, cfg.seq_len, text_length
  d, f, v, c = cfg.hidden_size, cfg.mlp_dim, cfg.output_vocab, cfg.text_dim
  layers = cfg.num_layers
  per_layer = {
      "self_attn_proj": 4 * 2 * b * n * d * d,
      "self_attn_scores_values": 2 * 2 * b * n * n * d,
      "cross_attn_q_out_proj": 2 * 2 * b * n * d * d,
      "cross_attn_kv_proj": 2 * 2 * b * t * d * d,
      "cross_attn_scores_values": 2 * 2 * b * n * t * d,
      "mlp": 2 * 2 * b * n * d * f,
  }
  out = {"text_proj": 2 * b * t * c * d}
  out.update({k: layers * x for k, x in per_layer.items()})
  out["head_dense"] = 2 * b * n * d * d
  out["head_logits"] = 2 * b * n * d * v
  return out


_NON_LAYER = ("text_proj", "head_dense", "head_logits")


def xla_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax returned one dict per program
    cost = cost[0]
  return float(cost["flops"])


def xla_layer_flops(setup, batch_size: int) -> float:
  """XLA's flops for forward + backward of ONE TransformerBlock at the train step's shapes.

  XLA's cost analysis counts a while loop's body once, whatever its trip count, and BlockStack
  runs its layers as an nn.scan (a while loop), so compiled.cost_analysis() of the train step
  holds one layer instead of num_layers. This compiles the model's own block (with gradients for
  its params, its input and the context, as the scan's backward computes) to count one layer.
  """
  c = setup.task.model_cfg
  block = layers.TransformerBlock(c.num_heads, c.hidden_size // c.num_heads, c.mlp_dim,
                                  cross_attention=True, dtype=c.compute_dtype)
  t = setup.task.text_length
  x = jax.ShapeDtypeStruct((batch_size, c.seq_len, c.hidden_size), c.compute_dtype)
  ctx = jax.ShapeDtypeStruct((batch_size, t, c.hidden_size), c.compute_dtype)
  mask = jax.ShapeDtypeStruct((batch_size, t), jnp.bool_)
  with setup.context():
    params = jax.eval_shape(lambda: nn.unbox(block.init(
        jax.random.key(0), jnp.zeros(x.shape, x.dtype), jnp.zeros(ctx.shape, ctx.dtype),
        jnp.ones(mask.shape, bool))))

    def loss(p, x, ctx, mask, cotangent):  # a non-constant cotangent, so that XLA cannot
      y = block.apply(p, x, ctx, mask)[0]    # simplify the first backward matmuls to reductions
      return (y * cotangent).astype(jnp.float32).sum()

    # value_and_grad: with grad alone the block's last matmul (MLP out) would be dead code.
    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    return xla_flops(grad.lower(params, x, ctx, mask, x).compile())


def matmul_peak(n: int, dtype, repeats: int) -> float:
  """Best flops/s of a jitted n x n @ n x n matmul over `repeats` runs (after one warm-up)."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  f = jax.jit(jnp.matmul)
  f(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n ** 3 / best


def _cpu_ticks():
  """(busy clock ticks of the whole machine, clock ticks of this process), from /proc."""
  with open("/proc/stat") as f:
    ticks = [int(x) for x in f.readline().split()[1:]]
  with open("/proc/self/stat") as f:
    fields = f.read().rsplit(")", 1)[1].split()
  return sum(ticks) - ticks[3] - ticks[4], int(fields[11]) + int(fields[12])


def timed_step(compiled, state, batch, rng):
  """Runs one step to completion. Returns (state, metrics, seconds, cores used by other processes
  meanwhile (None where /proc is unavailable))."""
  try:
    busy0, own0 = _cpu_ticks()
  except OSError:
    busy0 = None
  t0 = time.perf_counter()
  state, metrics = compiled(state, batch, rng, None)   # no frozen networks
  jax.block_until_ready((state, metrics))
  dt = time.perf_counter() - t0
  if busy0 is None:
    return state, metrics, dt, None
  busy1, own1 = _cpu_ticks()
  return state, metrics, dt, ((busy1 - busy0) - (own1 - own0)) / os.sysconf("SC_CLK_TCK") / dt


def synthetic_batch(setup, config) -> dict:
  """One global batch of synthetic examples, placed with the train step's batch shardings."""
  source = setup.task.make_source()
  if not isinstance(source, synthetic.SyntheticTokenSource):
    raise ValueError(f"benchmark needs data.source='synthetic', got {config.data.source!r}")
  rows = [source[i] for i in range(setup.global_batch)]
  return {k: jax.device_put(np.stack([r[k] for r in rows]), setup.batch_shardings[k])
          for k in setup.batch_abstract}


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--size", default="cpu-bench", help="configs/base.py size preset")
  p.add_argument("--batch_size", type=int, default=None, help="default: the preset's")
  p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
  p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                 help="model compute dtype (default: the preset's, float32 for cpu-bench); "
                      "the matmul peak is measured in the same dtype")
  p.add_argument("--peak_sizes", default="1024,2048,3072",
                 help="square matmul sizes for the peak; the best rate counts")
  p.add_argument("--peak_repeats", type=int, default=5)
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="config override, e.g. --set=model.num_layers=4 (repeatable)")
  return p.parse_args()


def apply_overrides(config, items):
  for item in items:
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"--set {item!r} must look like key=value")
    node, *path = key.split(".")
    parent = config
    for part in [node] + path[:-1]:
      parent = parent[part]
    leaf = path[-1] if path else node
    if leaf not in parent:
      raise ValueError(f"--set {item!r}: config has no field {key!r}")
    kind = type(parent[leaf])
    parent[leaf] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)


def main():
  args = parse_args()
  config = base_config.get_config(f"size={args.size}")
  if args.batch_size is not None:
    config.train.batch_size = args.batch_size
  if args.dtype is not None:
    config.model.dtype = args.dtype
  apply_overrides(config, args.set)
  if args.steps < 1:
    raise ValueError(f"--steps must be at least 1, got {args.steps}")

  device = jax.devices()[0]
  cores = len(os.sched_getaffinity(0))
  print(f"jax {jax.__version__}, device {device.device_kind} ({device.platform}), {cores} cores "
        f"in affinity mask, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}")

  setup = loop.Setup(config, devices=[device])
  cfg = setup.task.model_cfg
  batch_size = setup.global_batch
  text_length = setup.task.text_length
  print(f"config size={config.size}: layers {cfg.num_layers}, hidden {cfg.hidden_size}, mlp "
        f"{cfg.mlp_dim}, heads {cfg.num_heads}, tokens {cfg.seq_len}, text {text_length}x"
        f"{cfg.text_dim}, vocab {cfg.codebook_size} (padded {cfg.output_vocab}), dtype "
        f"{cfg.dtype}, remat {cfg.remat}, optimizer {config.optim.name}; batch {batch_size}")

  t0 = time.perf_counter()
  compiled = setup.lower_train_step().compile()
  compile_s = time.perf_counter() - t0
  print(f"compiled in {compile_s:.1f} s; {loop.memory_report(compiled)}")

  dtype = jnp.dtype(cfg.dtype)
  sizes = [int(s) for s in args.peak_sizes.split(",")]
  peak_before = max(matmul_peak(n, dtype, args.peak_repeats) for n in sizes)

  rng = jax.random.key(config.seed)
  state = setup.init_state(rng)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  batch = synthetic_batch(setup, config)
  for _ in range(args.warmup):
    state, _ = compiled(state, batch, rng, None)
  jax.block_until_ready(state)
  times, foreign = [], []
  for _ in range(args.steps):
    state, metrics, dt, other = timed_step(compiled, state, batch, rng)
    times.append(dt)
    foreign.append(other)
  loss = float(metrics["loss"])
  if not np.isfinite(loss):
    raise FloatingPointError(f"loss is {loss} after {args.warmup + args.steps} steps")

  peak_after = max(matmul_peak(n, dtype, args.peak_repeats) for n in sizes)
  peak = max(peak_before, peak_after)

  fwd = analytic_flops(cfg, batch_size, text_length)
  fwd_total = sum(fwd.values())
  step_flops = 3 * fwd_total
  xla_raw = xla_flops(compiled)
  xla_layer = xla_layer_flops(setup, batch_size)
  xla = xla_raw + (cfg.num_layers - 1) * xla_layer
  step_s = statistics.median(times)
  achieved = step_flops / step_s

  print(f"\nparameters: {n_params / 1e6:.2f} M")
  print("analytic forward matmul FLOPs by component:")
  for k, x in fwd.items():
    print(f"  {k:26s} {x / 1e9:9.2f} GFLOP  {x / fwd_total:6.1%}")
  print(f"  {'total forward':26s} {fwd_total / 1e9:9.2f} GFLOP")
  print(f"model FLOPs per step (3 x forward, analytic): {step_flops / 1e9:.1f} GFLOP")
  print(f"XLA cost_analysis flops of the train step:    {xla_raw / 1e9:.1f} GFLOP (the layer "
        f"scan's body counted once)")
  print(f"XLA flops of one block, forward + backward:   {xla_layer / 1e9:.1f} GFLOP (analytic "
        f"{3 * sum(v for k, v in fwd.items() if k not in _NON_LAYER) / cfg.num_layers / 1e9:.1f})")
  print(f"XLA flops per step, scan counted {cfg.num_layers} times:   {xla / 1e9:.1f} GFLOP")
  print(f"ratio XLA / analytic:                         {xla / step_flops:.3f}")
  print(f"\nstep times (s): {', '.join(f'{t:.3f}' for t in times)}")
  print(f"step time: median {step_s:.3f} s, min {min(times):.3f} s, max {max(times):.3f} s "
        f"(spread (max-min)/median {(max(times) - min(times)) / step_s:.1%}) over {len(times)} "
        f"steps after {args.warmup} warm-up; loss {loss:.4f}")
  if None not in foreign:
    print(f"other processes used {', '.join(f'{f:.2f}' for f in foreign)} cores during these "
          f"steps (of {os.cpu_count()}); figures from a busy machine understate the model")
  print(f"throughput: {batch_size / step_s:.2f} examples/s, {achieved / 1e9:.1f} GFLOP/s (analytic)")
  print(f"matmul peak ({dtype.name}, n in {sizes}, best of {args.peak_repeats}): before "
        f"{peak_before / 1e9:.1f} GFLOP/s, after {peak_after / 1e9:.1f} GFLOP/s; using "
        f"{peak / 1e9:.1f} GFLOP/s")
  print(f"MFU = analytic FLOPs / step time / peak = {achieved / peak:.1%}")
  print(f"  (with XLA's flop count: {xla / step_s / peak:.1%}; with the min step time: "
        f"{step_flops / min(times) / peak:.1%})")


if __name__ == "__main__":
  from muse_jax import hostenv
  hostenv.reexec_with_hugepages()   # glibc.malloc.hugetlb=1; MUSE_NO_HUGEPAGES=1 runs without
  main()
