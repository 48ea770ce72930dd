r"""Base-model sampling speed on the local CPU: time per image, loop overhead, text K/V caching.

  JAX_PLATFORMS=cpu python benchmarks/sampling.py                 # cpu-bench, 256 tokens x 24 steps
  JAX_PLATFORMS=cpu python benchmarks/sampling.py --batch_size=4 --repeats=5
  JAX_PLATFORMS=cpu python benchmarks/sampling.py --quick         # tiny preset: a smoke run

Random parameters of configs/base.py's preset (--size, cpu-bench by default), random text states,
classifier-free guidance on (one forward pass over the [cond; uncond] batch per step). Prints the
best of --repeats runs (robust to other processes on shared cores) after one compile-and-warm-up
run of
  * sample: muse_jax.decoding.sample_base_tokens (text encoded once, then the while_loop);
  * encode: MaskedTransformer.encode_context alone (text projection + every layer's K/V);
  * forward: one guided step's logits from the cache (what the loop body calls);
  * loop overhead = (sample - encode) / (num_steps x forward) - 1 (sampling, confidences, ranking
    and the while_loop itself, against the forward passes alone);
  * uncached: the same decode with a logits_fn that calls the full model (text re-projected and
    cross-attention K/V recomputed at every step); gain = uncached / sample.
"""
import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for configs/

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp

from configs import base as base_config
from muse_jax import decoding
from muse_jax.models.transformer import MaskedTransformer, TransformerConfig


def _best_time(fn, repeats):
  jax.block_until_ready(fn())  # compile + warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return min(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", default="cpu-bench")
  parser.add_argument("--batch_size", type=int, default=2)
  parser.add_argument("--num_steps", type=int, default=decoding.DEFAULT_NUM_STEPS["base"])
  parser.add_argument("--guidance_scale", type=float, default=4.0)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--quick", action="store_true",
                      help="tiny preset, 4 steps, 1 repeat: checks that the script runs")
  args = parser.parse_args()
  if args.quick:
    args.size, args.num_steps, args.repeats, args.batch_size = "tiny", 4, 1, 2

  config = base_config.get_config(f"size={args.size}")
  model_cfg = TransformerConfig(**config.model.to_dict())
  model = MaskedTransformer(model_cfg)
  cfg = decoding.DecodeConfig(num_steps=args.num_steps, guidance_scale=args.guidance_scale)
  b, t, n = args.batch_size, int(config.data.text_length), model_cfg.seq_len
  k_txt, k_init = jax.random.split(jax.random.key(0))
  txt = jax.random.normal(k_txt, (b, t, model_cfg.text_dim), jnp.float32)
  txt_mask = jnp.arange(t)[None, :] < jnp.array([t, t // 2] * (b // 2) + [t] * (b % 2))[:, None]
  tokens = jnp.full((b, n), model_cfg.mask_id, jnp.int32)
  params = jax.jit(lambda k: model.init(k, tokens[:1], txt[:1], txt_mask[:1])["params"])(k_init)
  params = jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, params,
                        is_leaf=lambda x: hasattr(x, "unbox"))
  rng = jax.random.key(1)
  print(f"preset {args.size}: {n} tokens x {cfg.num_steps} steps, batch {b}, guidance "
        f"{cfg.guidance_scale} ({jax.device_count()} {jax.devices()[0].platform} devices)")

  sample = lambda: decoding.sample_base_tokens(params, rng, txt, txt_mask, model_cfg=model_cfg,
                                               cfg=cfg)

  @jax.jit
  def encode(params, txt, txt_mask):
    both_txt = jnp.concatenate([txt, jnp.zeros_like(txt)])
    both_mask = jnp.concatenate([txt_mask, jnp.zeros_like(txt_mask)])
    return model.apply({"params": params}, both_txt, both_mask, method="encode_context")

  cache = encode(params, txt, txt_mask)

  @jax.jit
  def forward(params, tokens, cache):
    logits = model.apply({"params": params}, jnp.concatenate([tokens, tokens]), cache,
                         method="logits_from_cache")[..., :model_cfg.codebook_size]
    g = jnp.float32(cfg.guidance_scale)
    return (1 + g) * logits[:b] - g * logits[b:]

  @jax.jit
  def uncached_sample(params, rng, txt, txt_mask):
    both_txt = jnp.concatenate([txt, jnp.zeros_like(txt)])
    both_mask = jnp.concatenate([txt_mask, jnp.zeros_like(txt_mask)])

    def logits_fn(tokens_BxN, g):
      logits = model.apply({"params": params}, jnp.concatenate([tokens_BxN, tokens_BxN]),
                           both_txt, both_mask)[..., :model_cfg.codebook_size]
      return (1 + g) * logits[:b] - g * logits[b:]
    return decoding.decode(logits_fn, tokens, rng, cfg, model_cfg.mask_id)

  t_sample = _best_time(sample, args.repeats)
  t_encode = _best_time(lambda: encode(params, txt, txt_mask), args.repeats)
  t_forward = _best_time(lambda: forward(params, tokens, cache), args.repeats)
  t_uncached = _best_time(lambda: uncached_sample(params, rng, txt, txt_mask), args.repeats)
  overhead = (t_sample - t_encode) / (cfg.num_steps * t_forward) - 1
  print(f"sample    {t_sample * 1e3:9.1f} ms per batch, {t_sample / b * 1e3:9.1f} ms per image")
  print(f"encode    {t_encode * 1e3:9.1f} ms (once per decode)")
  print(f"forward   {t_forward * 1e3:9.1f} ms per guided step; x {cfg.num_steps} = "
        f"{cfg.num_steps * t_forward * 1e3:.1f} ms")
  print(f"loop overhead  {overhead * 100:+.1f}% of the forward passes")
  print(f"uncached  {t_uncached * 1e3:9.1f} ms per batch; caching text K/V: "
        f"{t_uncached / t_sample:.3f}x faster")


if __name__ == "__main__":
  main()
