r"""VQGAN tokenizer training (stage `vqgan`).

Locally (CPU, seconds):
  python -m muse_jax.main --config=configs/vqgan.py:size=tiny --workdir=/tmp/muse_vq
On a pod (see launch/README.md):
  launch/run.sh --config=configs/vqgan.py:size=f16-256 --workdir=gs://BUCKET/muse/vq_f16

Presets:
  tiny     f16 at 32px (2x2 tokens), 8 base channels, 1 residual block per level, 64 codes;
           compiles in seconds, for tests.
  demo     f4 at 32px (8x8 tokens; fully convolutional, so 64px images give 16x16), 16 base
           channels, 1 residual block per level, LayerNorm, FSQ with 256 codes (levels 4, 4, 4,
           4), L2 loss, no adversarial loss, 1500 steps; the CPU demo's tokenizer (minutes on 2
           cores; README gives its PSNR and codebook usage).
  f16-256  the base model's tokenizer: 256px -> 16x16 tokens, 8192 codes, base channels 128,
           multipliers (1, 1, 2, 2, 4), 2 residual blocks per level (paper); FSQ (8, 8, 8, 4, 4).
  f8-512   the super-res tokenizer: 512px -> 64x64 tokens, 8192 codes, multipliers (1, 1, 2, 4);
           FSQ (8, 8, 8, 4, 4).
Paper optimisation: Adam b(0.9, 0.99), lr 1e-4, weight decay 1e-4, 10k warm-up, cosine decay;
adversarial weight 0.1, perceptual weight 0.05.

Perceptual loss (loss.perceptual_weight, 0.05 in f16-256 and f8-512, 0 in tiny and demo): LPIPS-VGG
(muse_jax/models/lpips.py) of reconstruction and input, a frozen network read from two local files
that the paper presets need on the command line:
  --config.loss.perceptual_vgg_weights=vgg16-397923af.pth  (torchvision's ImageNet VGG16,
      https://download.pytorch.org/models/vgg16-397923af.pth)
  --config.loss.perceptual_lin_weights=vgg.pth  (lpips' weights/v0.1/vgg.pth, inside the lpips
      package: pip install --no-deps lpips==0.1.4)
Either may be a .safetensors conversion (`python -m muse_jax.models.lpips IN.pth OUT.safetensors`,
once, where torch is installed). Without them training stops before its first step;
--config.loss.perceptual_weight=0 trains without the perceptual loss.
"""
import ml_collections

from configs import common

PRESETS = {
    "tiny": dict(resolution=32, base_channels=8, channel_mult=(1, 1, 2, 2, 2), latent_dim=16,
                 codebook_size=64, norm_groups=4, disc_channels=(8, 16), batch=8, res_blocks=1),
    "demo": dict(resolution=32, base_channels=16, channel_mult=(1, 2, 2), latent_dim=4,
                 codebook_size=256, norm_groups=8, disc_channels=(16, 32, 64), batch=32,
                 res_blocks=1),
    "f16-256": dict(resolution=256, base_channels=128, channel_mult=(1, 1, 2, 2, 4),
                    latent_dim=5, codebook_size=8192, norm_groups=32,
                    disc_channels=(64, 128, 256, 256, 256), batch=256, res_blocks=2),
    "f8-512": dict(resolution=512, base_channels=128, channel_mult=(1, 1, 2, 4), latent_dim=5,
                   codebook_size=8192, norm_groups=32,
                   disc_channels=(64, 128, 256, 256, 256, 256), batch=256, res_blocks=2),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, size="tiny")
  common.check_size(args.size, PRESETS)
  p = PRESETS[args.size]
  tiny = args.size == "tiny"

  config = ml_collections.ConfigDict()
  config.stage = "vqgan"
  config.size = args.size
  config.model = ml_collections.ConfigDict({
      "base_channels": p["base_channels"], "channel_mult": p["channel_mult"],
      "num_res_blocks": p["res_blocks"], "decoder_res_blocks": None,
      "mid_res_blocks": p["res_blocks"],
      "decoder_base_channels": None, "decoder_channel_mult": None,
      "latent_dim": p["latent_dim"], "codebook_size": p["codebook_size"],
      "norm_groups": p["norm_groups"], "norm": "group", "downsample": "conv",
      "l2_normalize_codes": False,
      "commitment_beta": 0.25, "entropy_loss_weight": 0.0, "pixel_range": (-1.0, 1.0),
      "quantizer": "vq", "fsq_levels": (),
      "dtype": "float32" if tiny else "bfloat16",
  })
  # Perceptual loss: LPIPS-VGG (muse_jax/models/lpips.py) from two local weight files, torchvision's
  # vgg16-397923af.pth and lpips' weights/v0.1/vgg.pth (or their .safetensors conversions). Paper
  # weight 0.05; tiny and demo keep 0.0, as CPU machines have no weight files. With a weight > 0
  # and a path unset or missing, training stops before its first step naming the field to set.
  config.loss = ml_collections.ConfigDict({
      "reconstruction": "l1", "reconstruction_weight": 1.0, "adversarial_weight": 0.1,
      "adv_start_step": 10 if tiny else 20_000, "r1_gamma": 10.0, "lecam_weight": 0.001,
      "lecam_decay": 0.99, "ema_decay": 0.99 if tiny else 0.999,
      "perceptual_weight": 0.0 if args.size in ("tiny", "demo") else 0.05,
      "perceptual_vgg_weights": "", "perceptual_lin_weights": "",
  })
  config.discriminator = ml_collections.ConfigDict({"channels": p["disc_channels"]})
  adam = {"name": "adamw", "lr": 1e-4, "b1": 0.9, "b2": 0.99, "eps": 1e-8, "weight_decay": 1e-4,
          "warmup_steps": 10_000, "decay": "cosine", "end_lr_frac": 0.0, "grad_clip_norm": 1.0}
  config.optim = ml_collections.ConfigDict(adam)
  config.disc_optim = ml_collections.ConfigDict(adam)
  config.data = common.image_text_data(p["resolution"])
  if tiny:
    common.train_common(config, batch_size=p["batch"], num_steps=20, log_every=5, ckpt_every=10)
    config.optim.lr = config.disc_optim.lr = 1e-3
    config.optim.warmup_steps = config.disc_optim.warmup_steps = 5
  elif args.size == "demo":
    # Measured choices, figures in benchmarks/RESULTS.md ("How fast the demo tokenizer's
    # autoencoder learns", "The demo's recipe with a sharp tokenizer", "A world sized to the
    # demo"): L2, because L1 keeps the grey median instead of the small objects; FSQ (4, 4, 4, 4)
    # instead of VQ with an entropy loss, which spread the plain background over twice the codes
    # (noise the base model must learn); no adversarial loss, which cost PSNR at this length
    # (weight 0: the discriminator never runs); f4 at 32 px, so an object spans 2-3 tokens
    # instead of sitting inside one.
    common.train_common(config, batch_size=p["batch"], num_steps=1500, log_every=50,
                        ckpt_every=500)
    config.model.dtype = "float32"
    # LayerNorm (model.norm="layer", not GroupNorm): each latent depends on its neighbourhood
    # only, so plain background encodes alike in every scene and a decode at another size than
    # the training one matches it (RESULTS.md, "LayerNorm in the demo tokenizer").
    config.model.update({"quantizer": "fsq", "fsq_levels": (4, 4, 4, 4), "norm": "layer"})
    config.loss.reconstruction = "l2"
    config.loss.adversarial_weight = 0.0
    config.optim.lr = config.disc_optim.lr = 1e-3
    config.optim.warmup_steps = config.disc_optim.warmup_steps = 100
    config.loss.ema_decay = 0.99
  else:
    common.train_common(config, batch_size=p["batch"], num_steps=1_000_000, log_every=100,
                        ckpt_every=5000)
    # FSQ with 8192 codes (Mentzer et al. 2023), not the paper's learned VQ codebook: at reduced
    # width on natural photographs, plain VQ kept 0.4% of the codes after 400 steps (perplexity
    # 8), VQ + MaskGIT's entropy loss 3.3% (155), l2-normalised VQ 3.1% (133), FSQ 28.6% (1016)
    # with the best PSNR (benchmarks/quantizer_choice.py; RESULTS.md, "Which quantizer the paper
    # tokenizers train with"). FSQ's grid is fixed, so no code can die at any scale.
    config.model.update({"quantizer": "fsq", "fsq_levels": (8, 8, 8, 4, 4)})
  config.train.eval_every = {"tiny": 10, "demo": 200}.get(args.size, 5000)
  return config
