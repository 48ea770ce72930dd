r"""Muse super-res model: 64x64 high-res tokens given 16x16 low-res tokens and text states.

Locally (CPU, seconds):
  python -m muse_jax.main --config=configs/superres.py:size=tiny --workdir=/tmp/muse_superres
On a pod (see launch/README.md), from shards holding both tokenizations ("tokens", "tokens_hi"):
  launch/run.sh --config=configs/superres.py:size=268m --config.data.source=preencoded \
      --config.data.path='/gcs/BUCKET/muse/enc/train-*' --workdir=gs://BUCKET/muse/superres
(shards are read through a gcsfuse mount of the bucket; see launch/README.md)

Presets (parameter counts from `jax.eval_shape` of init, tests/test_superres.py checks them):
  tiny   4x4 -> 8x8 tokens, 64 codes each, 1 + 2 layers, hidden 32; for tests.
  demo   8x8 -> 16x16 tokens of the demo tokenizer (one f4 tokenizer at 32 and 64 px), 256
         codes, 1 + 2 layers, hidden 128, MiniLM text states, model.lo_grid_add; trained by
         muse-demo.
  268m   Table 6: 16 low-res self-attention layers, 32 high-res layers (self-attn, cross-attn to
         [low-res outputs; projected text], MLP), 16x16 -> 64x64 tokens, 8192 codes each, T5-XXL
         text states (4096): 251M params (-6.3%). Table 6 also lists hidden 1024 / MLP 4096, but
         with those widths the layers alone are 739M (16 x 12.6M self-attn + MLP, 32 x 16.8M
         self-attn + cross-attn + MLP; 770M in all), 2.9x the stated total, so the widths and the
         total cannot both hold for this architecture. We keep the layer counts, the total and the
         base presets' MLP = 4 x hidden, and solve for the width: hidden 576, MLP 2304 gives
         16 x 4.0M + 32 x 5.3M = 234M in layers, plus 9.7M of token embeddings and positions (two
         8320-row tables), 2.4M text projection and 5.1M output head. (Hidden 512 gives 200M,
         -25%; 640 gives 308M, +15%.) 8 heads of 72, so the heads split over tensor = 2, 4 or 8.
         576 = 64 x 9: with the fsdp mesh below, fsdp must divide 576 (up to 64 devices); on more,
         put the rest on data (e.g. --config.mesh.data=4 --config.mesh.fsdp=64).
Optimisation as the base model's (Table 4): Adafactor b1 0.9, b2 0.96, lr 1e-4, weight decay
0.045, batch 512, 5k warm-up steps, cosine decay; masking and 10% text dropout as the base stage.
"""
import ml_collections

from configs import common

PRESETS = {
    "tiny": dict(codebook_size=64, lo_codebook_size=64, lo_grid_size=4, hi_grid_size=8,
                 lo_factor=16, hi_factor=8, text_dim=16, hidden_size=32, lo_num_layers=1,
                 hi_num_layers=2, num_heads=2, mlp_dim=64, text_length=8),
    "demo": dict(codebook_size=256, lo_codebook_size=256, lo_grid_size=8, hi_grid_size=16,
                 lo_factor=4, hi_factor=4, text_dim=384, hidden_size=128, lo_num_layers=1,
                 hi_num_layers=2, num_heads=4, mlp_dim=512, text_length=24),
    "268m": dict(codebook_size=8192, lo_codebook_size=8192, lo_grid_size=16, hi_grid_size=64,
                 lo_factor=16, hi_factor=8, text_dim=4096, hidden_size=576, lo_num_layers=16,
                 hi_num_layers=32, num_heads=8, mlp_dim=2304, text_length=128),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, size="tiny")
  common.check_size(args.size, PRESETS)
  p = dict(PRESETS[args.size])
  paper = args.size == "268m"

  config = ml_collections.ConfigDict()
  config.stage = "superres"
  config.size = args.size
  config.model = ml_collections.ConfigDict({
      k: p[k] for k in ("codebook_size", "lo_codebook_size", "lo_grid_size", "hi_grid_size",
                        "text_dim", "hidden_size", "lo_num_layers", "hi_num_layers", "num_heads",
                        "mlp_dim")})
  # High-res self-attention: the paper's multi-axis layers (8x8 blocks, then an 8x8 dilated
  # grid: 2 x 4096 x 64 scores per head and layer instead of 4096^2; RESULTS.md "Multi-axis
  # attention") at paper scale; full attention for the small grids of tiny and demo.
  config.model.update({"vocab_pad_multiple": 128, "remat": common.remat(args.size, paper),
                       "dtype": "bfloat16" if paper else "float32", "lo_grid_add": False,
                       "hi_attention": "multi_axis" if paper else "full", "attn_block": 8,
                       "attn_grid": 8})
  common.masked_token_sections(config, p["text_dim"], p["text_length"])
  # tiny (tests): synthetic pairs; demo: the built-in scenes through the frozen tokenizer(s) (set
  # data.tokenizer and data.tokenizer_hi; muse-demo uses pre-encoded shards instead); 268m:
  # muse-encode shards with both tokenizations (set data.path). The low-res ids come from the
  # image resized to data.resolution (lo_factor px per token: f16 at paper scale), the high-res
  # ids from it at data.resolution_hi (f8; the demo uses its one f4 tokenizer at twice the side).
  source = {"tiny": "synthetic", "demo": "scenes"}.get(args.size, "preencoded")
  hi_side = p["hi_grid_size"] * p["hi_factor"]
  config.data = common.masked_token_data(
      source, p["text_length"], {"tokenizer": ("resolution", p["lo_grid_size"] * p["lo_factor"]),
                                 "tokenizer_hi": ("resolution_hi", hi_side)},
      scene_resolution=hi_side)
  # Sample grids while training (muse_jax/tasks/samples.py): every train.sample_every steps (0:
  # never) and after the last, the low-res tokens of the first sample.num_examples captioned
  # training records are decoded with the current params, their captions as the text, and
  # data.tokenizer_hi into WORKDIR/samples/step_STEP.png and TensorBoard, scored (samples/colour,
  # ... in metrics.jsonl) when the captions are scene captions. A pre-encoded run sets
  # data.tokenizer_hi for them; without it there are no grids (one warning at start).
  config.sample = ml_collections.ConfigDict({
      "num_examples": 8, "num_steps": 8, "guidance_scale": 4.0, "temperature": 1.0, "seed": 0,
  })
  if args.size == "tiny":   # no grids: synthetic pairs have no captions
    common.train_common(config, batch_size=8, num_steps=20, log_every=5, ckpt_every=10)
    config.optim.lr, config.optim.warmup_steps = 3e-3, 5
    config.train.sample_every = 0
  elif args.size == "demo":
    # 1 + 2 layers, hidden 128, batch 32: 16x16 high-res tokens cost ~4x the base stage's 8x8
    # per example, and 4 high-res layers were ~2x slower per step than 2 (RESULTS.md, "A world
    # sized to the demo"); 800 steps fit the demo's budget, more still help.
    common.train_common(config, batch_size=32, num_steps=800, log_every=50, ckpt_every=400)
    common.demo_optim(config.optim)
    config.train.sample_every = 400
    # Each high-res position also reads the low-res cell under it (model.lo_grid_add, not in
    # the paper): a lower loss and better colour than without (RESULTS.md, the f16 demo runs).
    config.model.lo_grid_add = True
  else:
    # Saves every 1000 steps (a lost host costs at most that); every 5000th is kept for the
    # paper's offline EMA (muse-ema --period 5000; 200 checkpoints over a 1M-step run).
    common.train_common(config, batch_size=512, num_steps=1_000_000, log_every=100,
                        ckpt_every=1000, keep_period=5000)
    config.train.sample_every = 5000
    config.mesh = common.mesh(data=1, fsdp=-1, tensor=1)
  return config
