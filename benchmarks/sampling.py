r"""Base-model sampling speed on the local CPU: time per image, loop overhead, text K/V caching.

  JAX_PLATFORMS=cpu python benchmarks/sampling.py                 # cpu-bench, 256 tokens x 24 steps
  JAX_PLATFORMS=cpu python benchmarks/sampling.py --batch_size=4 --repeats=5
  JAX_PLATFORMS=cpu python benchmarks/sampling.py --quick         # tiny preset: a smoke run
  JAX_PLATFORMS=cpu python benchmarks/sampling.py --no-peer       # ours only, no aMUSEd run

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

Then, in the same run, when the parity extra (torch, diffusers) imports and --no-peer is not given,
diffusers' aMUSEd sampler as a peer (issue 6): a UVit2DModel with random weights built from a
config in code (nothing downloaded) with our preset's depth, width, heads, MLP width (or
--peer_intermediate_size), codebook, text width and token grid, run the way AmusedPipeline runs it:
AmusedScheduler.set_timesteps(num_steps), then per step one model call on the [uncond; cond] batch,
logits = uncond + g' (cond - uncond) with g' = 1 + guidance_scale (the same guidance as ours,
which writes (1 + g) cond - g uncond), scheduler.step; under torch.no_grad on the CPU with
torch.set_num_threads(os.cpu_count()) (XLA's CPU thread pool also uses every core). Same batch
size and steps, random text states / pooled text embeddings, the pipeline's default micro-conds
(256, 256, 0, 0, 6). Prints
  * peer sample: best of --repeats after one warm-up run, per batch and per image;
  * FLOPs per guided step (both halves of the CFG batch): ours analytic (benchmarks/train_step.py
    `analytic_flops` on the 2B batch, less the text projection and cross-attention K/V projection,
    which the cached loop computes once per decode; the uncached figure next to it), because XLA's
    cost analysis counts the scanned layer stack's while body once; aMUSEd's counted by
    torch.utils.flop_counter.FlopCounterMode over one model call (its CPU attention kernel,
    aten._scaled_dot_product_flash_attention_for_cpu, is missing from torch's formula table and
    is counted with torch's own sdpa formula); the ratio aMUSEd / ours;
  * time per image, aMUSEd / ours, and whether the target holds (ours faster per image);
  * time per GFLOP of step compute (time per image / (num_steps x FLOPs per step per image)) for
    both and their ratio: the speed difference normalised by the FLOP difference.
Architecture differences that matching cannot remove (UVit2DModel's config has no switch for
them): aMUSEd's feed-forward is GEGLU (D -> 2F, gate, F -> D: 1.5x the FLOPs of our GELU MLP at the
same F; --peer_intermediate_size=2/3 F equalises them), its norms are RMSNorm with adaptive
(AdaNorm-continuous) scale/shift from the pooled text + micro-cond embedding, it has no position
embeddings, and it has extra per-token D x D projections our model lacks (1x1-conv embedding
projection, project_to_hidden, project_from_hidden, MLM conv1; our head has one dense before the
logits); its cross-attention has no text mask (the pipeline's uncond half attends to the encoded
empty prompt; ours masks all text out and skips cross-attention's result) and it re-projects the
text and cross-attention K/V at every step (no cache). Its ConvNeXt + attention UVit blocks
around the transformer (3 per side in the released aMUSEd, where they also down/upsample the
grid) are switched off (num_res_blocks=0, no down/upsampling), so both transformers run on all
grid^2 tokens. aMUSEd's linears are bias-free; here use_bias=True, as ours.
"""
import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for configs/

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp

from benchmarks.train_step import analytic_flops  # pylint: disable=g-bad-import-order
from configs import base as base_config
from muse_jax import decoding
from muse_jax.models.transformer import MaskedTransformer, TransformerConfig


def _best_time(fn, repeats, sync=jax.block_until_ready):
  sync(fn())  # compile + warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    sync(fn())
    times.append(time.perf_counter() - start)
  return min(times)


def _step_flops_ours(model_cfg, batch, text_length):
  """Analytic matmul FLOPs of one guided step on the [cond; uncond] batch: (cached, uncached)."""
  f = analytic_flops(model_cfg, 2 * batch, text_length)
  uncached = sum(f.values())
  return uncached - f["text_proj"] - f["cross_attn_kv_proj"], uncached


def amused_peer(model_cfg, batch, text_length, num_steps, guidance_scale, repeats,
                intermediate_size):
  """Times diffusers' aMUSEd sampling loop at our preset's shape (see the module docstring).

  Returns (seconds per batch, FLOPs per guided step, a description) or None without the parity
  extra.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import diffusers  # pylint: disable=g-import-not-at-top
    from diffusers.models.unets.uvit_2d import UVit2DModel  # pylint: disable=g-import-not-at-top
    from torch.utils import flop_counter  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    print(f"aMUSEd comparison skipped: it needs the parity extra (torch, diffusers): {e}")
    return None
  c = model_cfg
  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count())
  micro_encode_dim = 256
  model = UVit2DModel(
      hidden_size=c.hidden_size, use_bias=True, cond_embed_dim=c.text_dim,
      micro_cond_encode_dim=micro_encode_dim, micro_cond_embed_dim=5 * micro_encode_dim,
      encoder_hidden_size=c.text_dim, vocab_size=c.input_vocab, codebook_size=c.codebook_size,
      in_channels=c.hidden_size, block_out_channels=c.hidden_size, num_res_blocks=0,
      downsample=False, upsample=False, block_num_heads=c.num_heads,
      num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
      intermediate_size=intermediate_size, sample_size=c.grid_size).eval()
  scheduler = diffusers.AmusedScheduler(mask_token_id=c.mask_id)
  b, g = batch, c.grid_size
  encoder_states = torch.randn(2 * b, text_length, c.text_dim)
  pooled = torch.randn(2 * b, c.text_dim)
  micro_conds = torch.tensor([256.0, 256.0, 0.0, 0.0, 6.0]).expand(2 * b, -1)
  guidance = 1.0 + guidance_scale
  generator = torch.Generator().manual_seed(0)

  def call(latents):
    return model(torch.cat([latents] * 2), micro_conds=micro_conds, pooled_text_emb=pooled,
                 encoder_hidden_states=encoder_states)

  @torch.no_grad()
  def sample():
    scheduler.set_timesteps(num_steps)
    latents = torch.full((b, g, g), c.mask_id, dtype=torch.long)
    for timestep in scheduler.timesteps:
      uncond, cond = call(latents).chunk(2)
      logits = uncond + guidance * (cond - uncond)
      latents = scheduler.step(logits, timestep, latents, generator=generator).prev_sample
    return latents

  def cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs):
    del args, kwargs
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

  # pylint: disable-next=protected-access
  cpu_sdpa = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
  counter = flop_counter.FlopCounterMode(display=False, custom_mapping={cpu_sdpa: cpu_sdpa_flops})
  with torch.no_grad(), counter:
    call(torch.full((b, g, g), c.mask_id, dtype=torch.long))
  step_flops = counter.get_total_flops()
  params = sum(p.numel() for p in model.parameters())
  desc = (f"diffusers {diffusers.__version__} UVit2DModel ({params / 1e6:.1f}M params, "
          f"{c.num_layers} layers, hidden {c.hidden_size}, {c.num_heads} heads, GEGLU "
          f"{intermediate_size}, {c.seq_len} tokens) + AmusedScheduler, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
  return _best_time(sample, repeats, sync=lambda x: x), step_flops, desc


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", default="cpu-bench")
  parser.add_argument("--batch_size", type=int, default=2)
  parser.add_argument("--num_steps", type=int, default=decoding.DEFAULT_NUM_STEPS["base"])
  parser.add_argument("--guidance_scale", type=float, default=4.0)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--quick", action="store_true",
                      help="tiny preset, 4 steps, 1 repeat: checks that the script runs")
  parser.add_argument("--no-peer", dest="peer", action="store_false",
                      help="skip the comparison with diffusers' aMUSEd sampler")
  parser.add_argument("--peer_intermediate_size", type=int, default=None,
                      help="aMUSEd GEGLU width (default: our mlp_dim; 2/3 of it equalises MLP "
                           "FLOPs)")
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
  if not args.peer:
    return
  peer = amused_peer(model_cfg, b, t, cfg.num_steps, cfg.guidance_scale, args.repeats,
                     args.peer_intermediate_size or model_cfg.mlp_dim)
  if peer is None:
    return
  t_peer, peer_flops, desc = peer
  ours_flops, ours_uncached_flops = _step_flops_ours(model_cfg, b, t)
  print(f"aMUSEd peer: {desc}")
  print(f"peer sample {t_peer * 1e3:9.1f} ms per batch, {t_peer / b * 1e3:9.1f} ms per image")
  print(f"FLOPs per guided step: ours {ours_flops / 1e9:.3f} G (cached text K/V; "
        f"{ours_uncached_flops / 1e9:.3f} G uncached), aMUSEd {peer_flops / 1e9:.3f} G; "
        f"aMUSEd / ours {peer_flops / ours_flops:.3f}")
  time_ratio = t_peer / t_sample
  print(f"time per image: aMUSEd / ours {time_ratio:.3f}; target (ours faster per image) "
        f"{'holds' if time_ratio > 1 else 'MISSED'}")
  per_gflop = lambda secs, flops: secs / b / (cfg.num_steps * flops / b / 1e9)
  ours_pg, peer_pg = per_gflop(t_sample, ours_flops), per_gflop(t_peer, peer_flops)
  print(f"time per GFLOP of step compute: ours {ours_pg * 1e3:.2f} ms, aMUSEd "
        f"{peer_pg * 1e3:.2f} ms; aMUSEd / ours {peer_pg / ours_pg:.3f} "
        f"(ours {'faster' if peer_pg > ours_pg else 'slower'} at equal FLOPs)")


if __name__ == "__main__":
  main()
