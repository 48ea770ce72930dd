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
