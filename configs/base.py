r"""Muse base model: masked transformer over image tokens (16x16 at paper scale) given text states.

Locally (CPU, seconds):
  python -m muse_jax.main --config=configs/base.py:size=tiny --workdir=/tmp/muse_base
On a pod (see launch/README.md):
  launch/run.sh --config=configs/base.py:size=3b --workdir=gs://BUCKET/muse/base

Presets (parameter counts from `jax.eval_shape` of init, tests/test_configs.py checks them):
  tiny       2 layers, hidden 32, 8x8 tokens, 64 codes; for tests.
  demo       4 layers, hidden 128, 8x8 tokens of the demo tokenizer (configs/vqgan.py:size=demo,
             f4 at 32 px, 256 codes), MiniLM text states (384-d); muse-demo trains it from
             pre-encoded scenes.
  cpu-bench  8 layers, hidden 512, MLP 2048, 8 heads, 16x16 tokens, 8192 codes: 42.6M params.
  632m       36 layers, hidden 1024, MLP 4096, 16 heads: 627M params. The paper gives only the
             total (632M); with the 3B model's ratios (MLP = 4 x hidden, head dim 64) and hidden
             1024, each layer (self-attn 4.2M, cross-attn 4.2M, MLP 8.4M) is 16.8M, so 36 layers
             plus embeddings, text projection and output head give 627M (-0.8%).
  3b         Table 4: 48 layers, hidden 2048, MLP 8192, 16 heads (head dim 128): 3.27B params
             (+9%: cross-attention in every layer, 8.4M text projection and 21M output head are
             counted here; the paper's rounding is unknown).
Rematerialisation (model.remat): configs/common.py `remat` ("full" at paper scale, "none" for
tiny, "dots" otherwise).
Paper optimisation (Table 4): Adafactor b1 0.9, b2 0.96, lr 1e-4, weight decay 0.045, batch 512,
5k warm-up steps, cosine decay.
"""
import ml_collections

from configs import common

PRESETS = {
    "tiny": dict(codebook_size=64, grid_size=8, factor=16, text_dim=16, hidden_size=32,
                 num_layers=2, num_heads=2, mlp_dim=64, text_length=8),
    "demo": dict(codebook_size=256, grid_size=8, factor=4, text_dim=384, hidden_size=128,
                 num_layers=4, num_heads=4, mlp_dim=512, text_length=24),
    "cpu-bench": dict(codebook_size=8192, grid_size=16, factor=16, text_dim=384, hidden_size=512,
                      num_layers=8, num_heads=8, mlp_dim=2048, text_length=32),
    "632m": dict(codebook_size=8192, grid_size=16, factor=16, text_dim=4096, hidden_size=1024,
                 num_layers=36, num_heads=16, mlp_dim=4096, text_length=128),
    "3b": dict(codebook_size=8192, grid_size=16, factor=16, text_dim=4096, hidden_size=2048,
               num_layers=48, num_heads=16, mlp_dim=8192, text_length=128),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, size="tiny")
  common.check_size(args.size, PRESETS)
  p = dict(PRESETS[args.size])
  paper = args.size in ("632m", "3b")

  config = ml_collections.ConfigDict()
  config.stage = "base"
  config.size = args.size
  config.model = ml_collections.ConfigDict({
      "codebook_size": p["codebook_size"], "grid_size": p["grid_size"], "text_dim": p["text_dim"],
      "hidden_size": p["hidden_size"], "num_layers": p["num_layers"],
      "num_heads": p["num_heads"], "mlp_dim": p["mlp_dim"], "vocab_pad_multiple": 128,
      "remat": common.remat(args.size, paper), "dtype": "bfloat16" if paper else "float32",
  })
  common.masked_token_sections(config, p["text_dim"], p["text_length"])
  # tiny / cpu-bench (tests, benchmarks): synthetic tokens; demo: the built-in scenes through a
  # frozen tokenizer (set data.tokenizer; muse-demo uses pre-encoded shards instead); paper
  # presets: muse-encode shards (set data.path).
  source = {"tiny": "synthetic", "cpu-bench": "synthetic", "demo": "scenes"}.get(args.size,
                                                                                "preencoded")
  config.data = common.masked_token_data(
      source, p["text_length"], {"tokenizer": ("resolution", p["grid_size"] * p["factor"])},
      scene_resolution=p["grid_size"] * p["factor"])
  # Sample grids while training (muse_jax/tasks/samples.py): every train.sample_every steps (0:
  # never) and after the last, these prompts are decoded with the current params and
  # data.tokenizer into WORKDIR/samples/step_STEP.png and TensorBoard, and scored
  # (samples/colour, ... in metrics.jsonl) when they are scene captions. A pre-encoded run sets
  # data.tokenizer for them; without it there are no grids (one warning at start).
  config.sample = ml_collections.ConfigDict({
      "prompts": common.PAPER_PROMPTS if paper else common.scene_prompts(8),
      "num_steps": 24, "guidance_scale": 4.0, "temperature": 1.0, "seed": 0,
  })
  if args.size == "tiny":   # no grids: synthetic tokens and 16-d text states without an encoder
    common.train_common(config, batch_size=8, num_steps=20, log_every=5, ckpt_every=10)
    config.optim.lr, config.optim.warmup_steps = 3e-3, 5
    config.train.sample_every = 0
  elif args.size == "demo":
    # Hidden 128 / MLP 512: a few CPU minutes buy too few training tokens for a wider model
    # (a hidden-256 model ended at a higher loss in the same time). 1200 steps of batch 64 fit
    # the demo's budget; more steps still help (benchmarks/RESULTS.md, "The demo's learning
    # rate", which also has the link table showing where shape is lost).
    common.train_common(config, batch_size=64, num_steps=1200, log_every=100, ckpt_every=600)
    common.demo_optim(config.optim)
    config.train.sample_every = 600
  elif args.size == "cpu-bench":   # no grids: synthetic tokens
    common.train_common(config, batch_size=16, num_steps=200, log_every=10, ckpt_every=100)
    config.optim.warmup_steps = 20
    config.train.sample_every = 0
  else:
    # Saves every 1000 steps (a lost host costs at most that); every 5000th is kept for the
    # paper's offline EMA (muse-ema --period 5000; 200 checkpoints over a 1M-step run).
    common.train_common(config, batch_size=512, num_steps=1_000_000, log_every=100,
                        ckpt_every=1000, keep_period=5000)
    config.train.sample_every = 5000
    config.mesh = common.mesh(data=1, fsdp=-1, tensor=1)
  return config
