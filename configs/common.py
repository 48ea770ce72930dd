"""Shared config pieces: argument parsing, mesh, checkpoint and train defaults."""
import ml_collections

from muse_jax.data import scenes
from muse_jax.parallel import axes

# The paper presets' sample-grid prompts (train.sample_every): no scene words, so no alignment.
PAPER_PROMPTS = (
    "a photo of a corgi wearing sunglasses on a beach",
    "an oil painting of a lighthouse in a storm",
    "a bowl of ramen on a wooden table, studio lighting",
    "two red apples next to a glass of water",
    "a watercolor sketch of a city street at night",
    "an astronaut riding a horse in the desert",
    "a close-up photo of a hummingbird drinking from a flower",
    "the word MUSE written in neon letters on a brick wall",
)


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses "size=tiny,foo=bar" (the part after ':' in --config) over typed defaults."""
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"config argument {item!r} must look like key=value")
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
    kind = type(defaults[key])
    out[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
  return out


def check_size(size: str, presets) -> None:
  if size not in presets:
    raise ValueError(f"unknown size preset {size!r}; expected one of {sorted(presets)}")


def remat(size: str, paper: bool) -> str:
  """model.remat of a transformer preset (muse_jax/models/layers.py REMAT_POLICIES): "full" at
  paper scale, where activations bound the batch per chip; "none" for tiny, whose steps are
  mostly compilation (remat lengthens it); otherwise "dots" (keep matmul outputs, recompute the
  elementwise ops), which on the CPU is both faster and smaller than keeping everything."""
  if paper:
    return "full"
  return "none" if size == "tiny" else "dots"


def mesh(data=-1, fsdp=1, tensor=1) -> ml_collections.ConfigDict:
  """Mesh over (data, fsdp, tensor); one axis may be -1 to take the remaining devices."""
  return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor})


def train_common(config: ml_collections.ConfigDict, *, batch_size: int, num_steps: int,
                 log_every: int, ckpt_every: int, keep: int = 3, keep_period: int = 0) -> None:
  """Fills the loop-level fields every stage shares. init_from: a training workdir or muse-ema
  export of the same model whose params a fresh run starts from (finetuning; "" for none).
  checkpoint.keep_period: steps divisible by it are kept besides the last `keep` (0: none), for
  muse-ema's offline average."""
  config.seed = 0
  config.init_from = ""
  config.train = ml_collections.ConfigDict({
      "batch_size": batch_size, "num_steps": num_steps, "log_every": log_every})
  config.checkpoint = ml_collections.ConfigDict({
      "every": ckpt_every, "keep": keep, "keep_period": keep_period, "async_save": True})
  config.mesh = mesh()
  config.axis_rules = axes.DEFAULT_RULES


def text_encoder(text_dim: int, max_length: int) -> ml_collections.ConfigDict:
  """config.text_encoder: which frozen encoder made (pre-encoded data) and makes (sampling) the
  text states. 384-d states are the bundled MiniLM ("bert", path ""); anything else is a T5
  snapshot the user points `path` at (4096-d: T5-XXL / FLAN-T5-XXL)."""
  kind = "bert" if text_dim == 384 else "t5"
  return ml_collections.ConfigDict({"kind": kind, "path": "", "max_length": max_length,
                                    "dtype": "float32" if kind == "bert" else "bfloat16"})


def masked_token_sections(config: ml_collections.ConfigDict, text_dim: int,
                          text_length: int) -> None:
  """The sections the masked-token stages (base, super-res) share: masking (arccos rate, 10% of
  examples without text), the paper's optimiser (Table 4: Adafactor b1 0.9, b2 0.96, lr 1e-4,
  weight decay 0.045, 5k warm-up, cosine decay) and the text encoder."""
  config.masking = ml_collections.ConfigDict({"rate": "arccos", "text_drop_prob": 0.1})
  config.optim = ml_collections.ConfigDict({
      "name": "adafactor", "lr": 1e-4, "b1": 0.9, "b2": 0.96, "eps": 1e-30,
      "weight_decay": 0.045, "warmup_steps": 5000, "decay": "cosine", "end_lr_frac": 0.0,
      "grad_clip_norm": 1.0,
  })
  config.text_encoder = text_encoder(text_dim, text_length)


def image_text_data(side: int, **fields) -> ml_collections.ConfigDict:
  """config.data for the raw image–caption sources (muse_jax/data/sources.py): "scenes"
  (built-in), "folder" (path + captions_file), "webdataset" (path: glob of tar shards), "tfds"
  (path: dataset name, under tfds_data_dir or $TFDS_DATA_DIR), scenes rendered and images
  cropped at `side` pixels. `fields` add stage-specific entries or change these defaults."""
  data = ml_collections.ConfigDict({
      "source": "scenes", "path": "", "captions_file": "", "split": "train",
      "tfds_data_dir": "", "image_key": "image", "caption_key": "captions/text",
      "num_examples": 50_000, "scene_resolution": side, "seed": 0,
      "resolution": side, "crop": "center", "flip": False, "num_threads": 4,
  })
  data.update(fields)
  return data


def masked_token_data(source: str, text_length: int, tokenizers: dict,
                      scene_resolution: int) -> ml_collections.ConfigDict:
  """config.data of the masked-token stages (base, super-res). source:
    "preencoded"  token ids + text states written by muse-encode, at `path` (a glob);
    "scenes" | "folder" | "webdataset" | "tfds"  raw images and captions through the frozen
                  tokenizer(s) and text encoder at every step (muse_jax/tasks/online.py);
                  `tokenizers` maps each tokenizer-path field to its (resolution field, side);
    "synthetic"   random tokens and states: a stand-in for the tests and benchmarks only."""
  fields = {"text_length": text_length,
            "num_examples": 4096 if source == "synthetic" else 50_000}
  for path_field, (res_field, side) in tokenizers.items():
    fields.update({path_field: "", res_field: side})
  return image_text_data(scene_resolution, source=source, **fields)


def scene_prompts(num: int = 8) -> tuple:
  """Sample-grid prompts for runs on the built-in scenes: the first num // 2 captions of the
  seen-composition split "eval_seen" and the first num - num // 2 of the held-out split "eval"
  (muse_jax/data/scenes.py), so the grid shows both."""
  def captions(split, n):
    source = scenes.SceneSource(max(n, 1), resolution=scenes.MIN_RESOLUTION, split=split)
    return [source[i]["caption"] for i in range(n)]
  return tuple(captions("eval_seen", num // 2) + captions("eval", num - num // 2))


def demo_optim(optim: ml_collections.ConfigDict) -> None:
  """The CPU demo's optimiser for small masked-token models: AdamW, lr 2e-3, 100 warm-up steps.
  lr 2e-3 over 1e-3 / 3e-3: benchmarks/RESULTS.md, "The demo's learning rate"."""
  optim.name, optim.lr, optim.warmup_steps, optim.weight_decay = "adamw", 2e-3, 100, 0.01
  optim.eps = 1e-8   # Adam's (the adafactor sections' 1e-30 is its factored-moment epsilon)


def override(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """Sets {"train.num_steps": 4, ...} (dotted keys) on a config, as --config.KEY=VALUE does (and
  muse-demo's --set): a key the config does not have, or a value of another type than the
  field's, raises ValueError naming the key."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
      node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      raise ValueError(f"the {config.get('stage', '')} config has no field {key!r}")
    try:
      node[leaf] = value            # ConfigDict checks the type against the preset's
    except TypeError as e:
      raise ValueError(f"{key}={value!r}: {e}") from None
  return config
