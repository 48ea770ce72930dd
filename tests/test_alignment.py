"""Prompt alignment from pixels on the scene data set: right on rendered ground truth (clean, noisy,
blurred) at the demo's resolutions, wrong on controls (noise, blank, another image's caption),
per-attribute results and clear errors."""
import json

import numpy as np
import pytest
from PIL import Image, ImageFilter

from muse_jax.data import scenes
from muse_jax.metrics import alignment

N = 120


def _records(resolution, split, seed=5, max_objects=scenes.MAX_OBJECTS):
  source = scenes.SceneSource(N, resolution, seed=seed, split=split, max_objects=max_objects)
  return [source[i] for i in range(N)]


# 64 px is the demo's output (cascade) resolution, 32 px its base resolution; two-object scenes
# (an option of the world, not the demo's default) from 64 px up.
@pytest.mark.parametrize("resolution,split,max_objects", [
    (64, "eval", 1), (64, "eval_seen", 1), (32, "train", 1), (128, "eval_seen", 1),
    (64, "eval", 2), (128, "train", 2)])
def test_ground_truth_scenes_score_all_attributes(resolution, split, max_objects):
  recs = _records(resolution, split, max_objects=max_objects)
  result = alignment.alignment([r["image"] for r in recs], [r["caption"] for r in recs])
  assert result["num_images"] == N
  assert result["all"] >= 0.98, result
  for key in ("colour", "shape", "position", "size", "count"):
    assert result[key] >= 0.98, (key, result)


@pytest.mark.parametrize("resolution,max_objects", [(64, 1), (128, 2)])
def test_detections_match_the_rendered_attributes(resolution, max_objects):
  for r in _records(resolution, "eval", max_objects=max_objects)[:40]:
    found = alignment.detect(r["image"])
    want = sorted((o["colour"], o["shape"], o["position"], o["size"])
                  for o in r["attributes"]["objects"])
    assert sorted((o["colour"], o["shape"], o["position"], o["size"]) for o in found) == want
    for o in found:         # boxes within a pixel or two of the renderer's
      truth = next(t for t in r["attributes"]["objects"] if t["position"] == o["position"])
      np.testing.assert_allclose(o["bbox"], scenes.box_of(truth["center"], truth["size"],
                                                          resolution), atol=2)


@pytest.mark.parametrize("control", ["another_caption", "noise", "blank"])
def test_controls_score_at_most_five_percent(control):
  """The scorer cannot be satisfied without the prompt's object: another scene's image, uniform
  noise and a blank background each score <= 5% all-attribute on the demo's prompts."""
  recs = _records(64, "eval") + _records(64, "eval_seen")
  captions = [r["caption"] for r in recs]
  rng = np.random.default_rng(0)
  if control == "another_caption":       # a derangement: no image keeps its own caption
    perm = np.roll(rng.permutation(len(recs)), 1)
    images = [recs[i]["image"] for i in perm]
  elif control == "noise":
    images = rng.integers(0, 256, (len(recs), 64, 64, 3), np.uint8)
  else:
    images = np.broadcast_to(np.asarray(scenes.BACKGROUNDS[scenes.BACKGROUND], np.uint8),
                             (len(recs), 64, 64, 3))
  result = alignment.alignment(images, captions)
  assert result["all"] <= 0.05, result


@pytest.mark.parametrize("resolution", [64, 128, 256])
def test_noise_and_blur_still_score_high(resolution):
  rng = np.random.default_rng(1)
  recs = _records(resolution, "eval")[:60]
  images = []
  for r in recs:
    blurred = Image.fromarray(r["image"]).filter(ImageFilter.GaussianBlur(resolution / 128))
    noisy = np.asarray(blurred, np.float32) + rng.normal(0, 12, r["image"].shape)
    images.append(np.clip(noisy / 255.0, 0.0, 1.0))       # float images in [0, 1] too
  result = alignment.alignment(images, [r["caption"] for r in recs])
  assert result["all"] >= 0.95, result


def test_score_reports_each_stated_attribute():
  attrs = [{"colour": "red", "shape": "cross", "position": "left", "size": "small"},
           {"colour": "blue", "shape": "square", "position": "right", "size": "large"}]
  image = scenes.render(attrs, 96)
  s = alignment.score(image, "a small red cross on the left and a large blue square on the right")
  assert s["colour"] == [True, True] and s["shape"] == [True, True]
  assert s["position"] == [True, True] and s["size"] == [True, True]
  assert s["count"] and s["all"]
  # Wrong colour of one object, and a relation that does not hold.
  s = alignment.score(image, "a small green cross on the left and a large blue square on the right")
  assert s["colour"].count(False) == 1 and not s["all"] and s["count"]
  s = alignment.score(image, "a red cross to the right of a blue square")
  assert s["position"] == [False] and s["colour"] == [True, True] and not s["all"]
  assert alignment.score(image, "a red cross to the left of a blue square")["all"]
  # An extra object in the image: attributes right, count wrong.
  s = alignment.score(image, "a red cross")
  assert s["colour"] == [True] and s["shape"] == [True] and not s["count"] and not s["all"]
  # Prompts with no size or position do not score them.
  s = alignment.score(image, "a red cross and a blue square")
  assert s["size"] == [] and s["position"] == [] and s["all"]


def test_empty_and_noise_images():
  grey = np.full((64, 64, 3), 128, np.uint8)
  assert alignment.detect(grey) == []
  s = alignment.score(grey, "a red circle")
  assert s["colour"] == [False] and not s["count"] and not s["all"]
  noise = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), np.uint8)
  assert alignment.alignment(noise, ["a red circle on the left"] * 8)["all"] == 0.0


def test_connected_components_against_a_flood_fill():
  rng = np.random.default_rng(3)
  mask = rng.random((40, 50)) < 0.45
  labels, n = alignment.label_components(mask)
  # Independent breadth-first flood fill with 8-connectivity.
  seen = np.zeros_like(mask, bool)
  groups = []
  for y, x in zip(*np.nonzero(mask)):
    if seen[y, x]:
      continue
    stack, group = [(y, x)], set()
    seen[y, x] = True
    while stack:
      cy, cx = stack.pop()
      group.add((cy, cx))
      for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
          ny, nx = cy + dy, cx + dx
          if 0 <= ny < 40 and 0 <= nx < 50 and mask[ny, nx] and not seen[ny, nx]:
            seen[ny, nx] = True
            stack.append((ny, nx))
    groups.append(group)
  assert n == len(groups)
  assert (labels[~mask] == 0).all()
  for group in groups:
    assert len({labels[p] for p in group}) == 1
  assert len({labels[next(iter(g))] for g in groups}) == n


def test_bad_inputs_raise_clear_errors():
  img = np.zeros((32, 32, 3), np.float32)
  with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
    alignment.detect(np.zeros((32, 32)))
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    alignment.detect(img + 5.0)
  with pytest.raises(ValueError, match="names no scene object"):
    alignment.score(img, "a photo of a dog")
  with pytest.raises(ValueError, match="2 images for 1 prompts"):
    alignment.alignment([img, img], ["a red circle"])


# ------------------------------------------------------------------------------------------------
# muse-eval (muse_jax/cli/evaluate.py): generator sweep with fake samplers, tokenizer reports.

def _render_prompts(prompts, seed, guidance, temperature):
  del seed, guidance, temperature
  return np.stack([scenes.render(scenes.parse_caption(p), 64) for p in prompts]) / 255.0


def _noise(prompts, seed, guidance, temperature):
  del guidance, temperature
  return np.random.default_rng(seed).random((len(prompts), 64, 64, 3))


def test_eval_generator_sweep_scores_renderer_high_and_noise_low(tmp_path):
  from muse_jax.cli import evaluate
  good = evaluate.evaluate_generator(_render_prompts, 24, [0.0, 3.0], [1.0])
  assert [(p["guidance"], p["temperature"]) for p in good["sweep"]] == [(0.0, 1.0), (3.0, 1.0)]
  for point in good["sweep"]:
    for split in ("eval", "eval_seen"):
      a = point[f"alignment_{split}"]
      assert a["all"] >= 0.95 and a["num_images"] == 24, a
  prompts, _ = evaluate.scene_prompts("eval", 24)
  assert all(any(tuple(p) in scenes.HELD_OUT for p in
                 [(o["colour"], o["shape"]) for o in scenes.parse_caption(c)]) for c in prompts)
  bad = evaluate.evaluate_generator(_noise, 24, [0.0], [1.0])
  assert bad["sweep"][0]["alignment_eval"]["all"] == 0.0
  evaluate.write_report(good, str(tmp_path))
  report = json.loads((tmp_path / "report.json").read_text())
  assert report["kind"] == "generator" and len(report["sweep"]) == 2
  md = (tmp_path / "report.md").read_text()
  assert "| 3 | 1 | held-out |" in md and "sweep.png" in md
  png = Image.open(tmp_path / "sweep.png")
  arr = np.asarray(png.convert("RGB"))
  assert arr.shape == (360, 480, 3)
  for colour in ((200, 30, 30), (30, 60, 200)):       # both series are drawn
    assert (arr == colour).all(-1).sum() > 20


def test_eval_generator_on_prompts_files(tmp_path):
  """A captioned folder's own held-out and seen pairs: --prompts-file files, one report row each."""
  from muse_jax.cli import evaluate
  (tmp_path / "heldout.txt").write_text("a small pink circle at the top\n\na big blue square\n"
                                        .replace("pink", "purple"))
  (tmp_path / "seen.jsonl").write_text(json.dumps({"id": "a", "prompt": "a red cross"}) + "\n")
  sets = evaluate.read_prompt_sets([str(tmp_path / "heldout.txt"), str(tmp_path / "seen.jsonl")])
  assert sets == {"heldout": ["a small purple circle at the top", "a big blue square"],
                  "seen": ["a red cross"]}
  good = evaluate.evaluate_generator(_render_prompts, 99, [2.0], [1.0], prompt_sets=sets)
  assert good["num_prompts"] == {"heldout": 2, "seen": 1}
  assert good["sweep"][0]["alignment_heldout"]["all"] == 1.0
  assert good["sweep"][0]["alignment_seen"]["num_images"] == 1
  bad = evaluate.evaluate_generator(_noise, 99, [2.0], [1.0], prompt_sets=sets)
  assert bad["sweep"][0]["alignment_heldout"]["all"] == 0.0
  evaluate.write_report(good, str(tmp_path / "out"))
  md = (tmp_path / "out" / "report.md").read_text()
  assert "| 2 | 1 | heldout | 1.000 |" in md and "Prompts: heldout 2, seen 1" in md
  # A prompt the scorer cannot read, FID without references, a tokenizer checkpoint: errors.
  (tmp_path / "dog.txt").write_text("a red circle\na photo of a dog\n")
  with pytest.raises(evaluate.UsageError, match="a photo of a dog"):
    evaluate.read_prompt_sets([str(tmp_path / "dog.txt")])
  with pytest.raises(evaluate.UsageError, match="FID"):
    evaluate.evaluate_generator(_noise, 2, [2.0], [1.0], fid_scorer=object(), prompt_sets=sets)


def test_eval_cli_on_a_tokenizer(tmp_path):
  import flax.linen as nn
  import jax

  from muse_jax.cli import evaluate
  from muse_jax.convert import vq
  from muse_jax.models.vqgan import VQGAN, VQGANConfig
  cfg = VQGANConfig(base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, mid_res_blocks=1,
                    latent_dim=8, codebook_size=32, norm_groups=4)
  params = nn.unbox(VQGAN(cfg).init(jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32)))
  tok = tmp_path / "tok"
  vq.save(params, cfg, tok)
  out = tmp_path / "report"
  assert evaluate.main(["--checkpoint", str(tok), "--num-images", "10", "--resolution", "16",
                        "--batch-size", "8", "--out", str(out)]) == 0
  report = json.loads((out / "report.json").read_text())
  assert report["kind"] == "tokenizer" and report["num_images"] == 10
  assert 0 < report["codes_used"] <= 32 and report["codebook_usage"] == report["codes_used"] / 32
  assert 1.0 <= report["code_perplexity"] <= report["codes_used"] + 1e-6
  assert np.isfinite(report["psnr"]) and -1.0 <= report["ssim"] <= 1.0
  # PSNR of the model's own reconstruction, recomputed in numpy.
  model = VQGAN(cfg)
  x = evaluate.load_images("scenes", 10, 16)
  lo, hi = cfg.pixel_range
  ids = model.apply({"params": params["params"]}, x * (hi - lo) + lo, method=model.encode)
  y = np.clip((np.asarray(model.apply({"params": params["params"]}, ids, method=model.decode))
               - lo) / (hi - lo), 0, 1)
  mse = ((x - y) ** 2).mean(axis=(1, 2, 3))
  np.testing.assert_allclose(report["psnr"], np.mean(10 * np.log10(1 / mse)), rtol=1e-3)
  assert "| psnr |" in (out / "report.md").read_text()
  # The reconstructions' prompt alignment, recomputed from the numpy reconstructions above.
  _, captions = evaluate.load_scenes(10, 16)
  expected = alignment.alignment(y, captions)
  assert report["recon_alignment"] == pytest.approx(
      {k: v for k, v in expected.items()}, nan_ok=True)
  assert "ceiling of a generator" in (out / "report.md").read_text()
  # Codes on plain-background token patches (4x4 px at f = 4), recounted here.
  ids = np.asarray(ids).reshape(10, 16)
  grey = np.asarray(scenes.BACKGROUNDS[scenes.BACKGROUND]) / 255.0
  plain = np.array([[np.abs(x[n, 4 * (t // 4):4 * (t // 4) + 4, 4 * (t % 4):4 * (t % 4) + 4]
                            - grey).max() < 2 / 255 for t in range(16)] for n in range(10)])
  assert report["background_token_fraction"] == pytest.approx(plain.mean())
  assert report["background_codes"] == len(set(ids[plain].tolist()))
  assert "| background_codes |" in (out / "report.md").read_text()


def test_eval_cli_scores_a_captioned_folder_tokenizer_report(tmp_path):
  """muse-eval's tokenizer report on any captioned folder: reconstructions and inputs scored
  against the folder's captions; records the scorer cannot use are skipped and counted."""
  import flax.linen as nn
  import jax

  from muse_jax.cli import evaluate
  from muse_jax.convert import vq
  from muse_jax.models.vqgan import VQGAN, VQGANConfig
  cfg = VQGANConfig(base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, mid_res_blocks=1,
                    latent_dim=8, codebook_size=32, norm_groups=4)
  params = nn.unbox(VQGAN(cfg).init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32)))
  vq.save(params, cfg, tmp_path / "tok")
  folder = tmp_path / "folder"
  folder.mkdir()
  source = scenes.SceneSource(6, resolution=48, split="eval")   # not the 32 px of the report
  lines = [{"file": "dog.png", "caption": "a photo of a dog"},       # no shape word: skipped
           {"file": "missing.png", "caption": "a red circle"}]       # no such file: skipped
  for i in range(6):
    Image.fromarray(source[i]["image"]).save(folder / f"{i}.png")
    lines.insert(i, {"file": f"{i}.png", "caption": source[i]["caption"]})
  Image.fromarray(source[0]["image"]).save(folder / "dog.png")
  (folder / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\nnot json\n")
  out = tmp_path / "report"
  assert evaluate.main(["--checkpoint", str(tmp_path / "tok"), "--data", str(folder),
                        "--num-images", "8", "--resolution", "32", "--out", str(out)]) == 0
  report = json.loads((out / "report.json").read_text())
  assert report["num_images"] == 6
  assert report["skipped"] == {"unreadable_image": 1, "caption_not_scorable": 1,
                               "bad_caption_line": 1}
  # Inputs: the folder's PNGs resized here with PIL; reconstructions through the model itself.
  x = np.stack([np.asarray(Image.open(folder / f"{i}.png").convert("RGB").resize(
      (32, 32), Image.BICUBIC), np.float32) / 255.0 for i in range(6)])
  captions = [source[i]["caption"] for i in range(6)]
  assert report["ground_truth_alignment"]["all"] == pytest.approx(
      alignment.alignment(x, captions)["all"])
  assert report["ground_truth_alignment"]["all"] >= 5 / 6
  model = VQGAN(cfg)
  lo, hi = cfg.pixel_range
  ids = model.apply({"params": params["params"]}, x * (hi - lo) + lo, method=model.encode)
  y = np.clip((np.asarray(model.apply({"params": params["params"]}, ids, method=model.decode))
               - lo) / (hi - lo), 0, 1)
  assert report["recon_alignment"] == pytest.approx(alignment.alignment(y, captions), nan_ok=True)
  assert "background_codes" not in report       # only the built-in scenes' grey is known
  md = (out / "report.md").read_text()
  assert "| input images |" in md and "caption_not_scorable 1" in md
  # A folder where no caption names a shape the scorer knows: a clear error, not an empty report.
  (folder / "captions.jsonl").write_text(json.dumps(lines[-2]) + "\n")
  assert evaluate.main(["--checkpoint", str(tmp_path / "tok"), "--data", str(folder),
                        "--resolution", "32", "--out", str(out)]) == 1


def test_background_codes_counts_codes_and_bits_on_plain_patches():
  from muse_jax.cli import evaluate
  grey = np.asarray(scenes.BACKGROUNDS[scenes.BACKGROUND], np.float32) / 255.0
  images = np.broadcast_to(grey, (2, 8, 8, 3)).copy()
  images[0, :4, :4] = 1.0                                   # token 0 of image 0 holds an object
  ids = np.array([[7, 1, 2, 2], [3, 3, 1, 2]])              # 2x2 tokens of 4 px
  got = evaluate.background_codes(images, ids)
  # plain patches: image 0 tokens 1-3 (codes 1, 2, 2), image 1 all (3, 3, 1, 2)
  p = np.array([2, 3, 2]) / 7                               # codes 1, 2, 3
  assert got == pytest.approx({"background_token_fraction": 7 / 8, "background_codes": 3,
                               "background_code_entropy_bits": float(-(p * np.log2(p)).sum())})


def test_eval_cli_errors(tmp_path, capsys):
  from muse_jax.cli import evaluate
  assert evaluate.main(["--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 1
  assert "does not exist" in capsys.readouterr().err
  assert evaluate.main(["--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
  assert "neither a muse-convert tokenizer folder nor a training workdir" in capsys.readouterr().err
