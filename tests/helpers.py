"""Shared test helpers: tiny configs, subprocess runs of the real entry point, metrics files."""
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np

from configs import base as base_config
from configs import common
from muse_jax import tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def override(config, **overrides):
  """Dotted-key overrides, e.g. override(config, **{"train.num_steps": 4})."""
  return common.override(config, overrides)


def tiny_base(**overrides):
  """configs/base.py:size=tiny with dotted-key overrides."""
  return override(base_config.get_config("size=tiny"), **overrides)


def subprocess_env(num_devices: int = 8) -> dict:
  env = dict(os.environ)
  # MUSE_NO_HUGEPAGES: no hostenv re-exec (a second interpreter start per launch); what these
  # tests check does not depend on it, and tests/test_hostenv.py tests the re-exec itself.
  env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(num_devices), MUSE_NO_HUGEPAGES="1",
             PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""))
  return env


def main_cmd(config_arg: str, workdir, *flags) -> list:
  return [sys.executable, "-m", "muse_jax.main", f"--config={config_arg}", f"--workdir={workdir}",
          *flags]


def run_main(config_arg, workdir, *flags, num_devices=8, timeout=300, check=True):
  proc = subprocess.run(main_cmd(config_arg, workdir, *flags), cwd=REPO,
                        env=subprocess_env(num_devices), capture_output=True, text=True,
                        timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"muse_jax.main failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc


def read_losses(workdir) -> dict:
  """{step: loss} from workdir/metrics.jsonl; a step logged twice (re-run after a kill) keeps the
  last value."""
  out = {}
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    for line in f:
      if line.strip():
        rec = json.loads(line)
        if "loss" in rec:
          out[rec["step"]] = rec["loss"]
  return out


def param_count(config) -> int:
  """Parameters of every network the config's stage trains (a tokenizer's discriminator
  included), from shapes only (jax.eval_shape: paper presets cost no memory)."""
  boxed = jax.eval_shape(tasks.get_task(config).init_boxed, jax.random.key(0))
  return sum(x.size for x in jax.tree.leaves(nn.unbox(boxed)))


# Tiny T5 snapshots written by transformers (tests/test_text_encoder.py, tests/test_t5_path.py) --
T5_WORDS = ("a red cube left of the blue ball sits on green grass under bright sky with two small "
            "dogs running fast near an old house café naïve über").split()


def write_spiece(d) -> None:
  """Trains a T5-style sentencepiece model (pad 0, eos 1, unk 2, no bos; 120 pieces) into
  d/spiece.model."""
  import sentencepiece
  rs = np.random.RandomState(0)
  letters = list("abcdefghijklmnopqrstuvwxyzéü")
  with open(os.path.join(d, "corpus.txt"), "w") as f:
    for _ in range(2000):
      junk = ["".join(rs.choice(letters, rs.randint(2, 7))) for _ in range(4)]
      f.write(" ".join(list(rs.choice(T5_WORDS, 5)) + junk) + "\n")
  sentencepiece.SentencePieceTrainer.train(
      input=os.path.join(d, "corpus.txt"), model_prefix=os.path.join(d, "spiece"),
      vocab_size=120, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      character_coverage=1.0, minloglevel=2)
  os.remove(os.path.join(d, "corpus.txt"))
  os.remove(os.path.join(d, "spiece.vocab"))


def t5_config(ff="gated-gelu", d_model=32):
  """A tiny transformers.T5Config; vocab 220 = 120 pieces + T5's 100 <extra_id_*> tokens."""
  import transformers
  return transformers.T5Config(vocab_size=220, d_model=d_model, d_kv=8, d_ff=64, num_layers=2,
                               num_decoder_layers=1, num_heads=4, feed_forward_proj=ff,
                               relative_attention_num_buckets=8,
                               relative_attention_max_distance=16)


def write_t5_snapshot(path, spiece_dir, ff="gated-gelu", layout="single", seed=0, dtype=None,
                      d_model=32):
  """Writes a random-weight T5 snapshot with transformers (weights, config, spiece.model) into
  `path`; returns the torch model (float32, eval). layout: "single" (T5EncoderModel),
  "conditional" (T5ForConditionalGeneration), "sharded" (an index over several files)."""
  import torch
  import transformers
  torch.manual_seed(seed)
  cls = (transformers.T5ForConditionalGeneration if layout == "conditional"
         else transformers.T5EncoderModel)
  model = cls(t5_config(ff, d_model)).eval()
  saved = model.to(dtype) if dtype is not None else model
  kw = {"max_shard_size": "40KB"} if layout == "sharded" else {}
  saved.save_pretrained(str(path), **kw)
  with open(os.path.join(spiece_dir, "spiece.model"), "rb") as src, \
       open(os.path.join(path, "spiece.model"), "wb") as dst:
    dst.write(src.read())
  return model.float()


# Tiny random-weight CLIP and FID Inception written by the reference libraries -------------------
CLIP_WORDS = "a photo of red cube dog cat the and".split()


def _bytes_to_unicode():
  """GPT-2 / CLIP byte-level alphabet: byte -> printable character, in CLIP's vocab order."""
  bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1)))
  cs, n = bs[:], 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return [chr(c) for c in cs]


def write_clip_tokenizer(folder, max_length: int):
  """A CLIP BPE like OpenAI's, in miniature, saved by transformers: bytes, bytes + '</w>',
  merges, then BOS and EOS last (so the EOS is the largest id, which the legacy argmax pooling
  relies on). Returns the transformers tokenizer."""
  import transformers
  alphabet = _bytes_to_unicode()
  vocab = {c: i for i, c in enumerate(alphabet)}
  vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
  merges = []
  for w in CLIP_WORDS:
    parts = list(w[:-1]) + [w[-1] + "</w>"]
    cur = parts[0]
    for p in parts[1:]:
      if (cur, p) not in merges:
        merges.append((cur, p))
      cur += p
      vocab.setdefault(cur, len(vocab))
  vocab["<|startoftext|>"] = len(vocab)
  vocab["<|endoftext|>"] = len(vocab)
  tok = transformers.CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
  tok.save_pretrained(folder)
  return tok


def clip_config(vocab_size, eos_token_id, act, max_length: int):
  """A tiny transformers.CLIPConfig (32-wide towers, 32-px images of 8-px patches)."""
  import transformers
  return transformers.CLIPConfig(
      text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=2, num_attention_heads=4,
                       max_position_embeddings=max_length, hidden_act=act,
                       eos_token_id=eos_token_id, bos_token_id=vocab_size - 2,
                       pad_token_id=vocab_size - 1),
      vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, image_size=32, patch_size=8, hidden_act=act),
      projection_dim=16)


def randomise_inception(model, seed=0):
  """He-scaled conv weights and non-trivial batch-norm statistics on a torch FID Inception, so
  every layer matters."""
  import torch
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for mod in model.modules():
      if isinstance(mod, torch.nn.Conv2d):
        mod.weight.normal_(0, (2 / mod.weight[0].numel()) ** 0.5, generator=g)
      elif isinstance(mod, torch.nn.BatchNorm2d):
        mod.weight.uniform_(0.5, 1.5, generator=g)
        mod.bias.normal_(0, 0.1, generator=g)
        mod.running_mean.normal_(0, 0.1, generator=g)
        mod.running_var.uniform_(0.5, 1.5, generator=g)
  return model.eval()
