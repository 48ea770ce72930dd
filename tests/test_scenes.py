"""The procedural scene data set: determinism, held-out splits, captions and what the pixels show."""
import collections
import io

import grain
import numpy as np
import pytest
from PIL import Image

from muse_jax.data import scenes

N = 300


def _pairs(record):
  return [(o["colour"], o["shape"]) for o in record["attributes"]["objects"]]


def _cell(x: float, y: float, resolution: int):
  """Names the 3x3-grid cell of a pixel point: left/right/top/bottom/center, or None (a corner)."""
  col, row = min(int(3 * x / resolution), 2), min(int(3 * y / resolution), 2)
  return {(0, 1): "left", (2, 1): "right", (1, 0): "top", (1, 2): "bottom",
          (1, 1): "center"}.get((col, row))


def test_constants_are_consistent():
  assert 6 <= len(scenes.COLOURS) <= 8 and 4 <= len(scenes.SHAPES) <= 6
  assert 4 <= len(scenes.HELD_OUT) <= 6
  for colour in scenes.COLOURS:     # every colour and shape keeps partners in training
    assert any(c == colour for c, _ in scenes.SEEN_PAIRS)
  for shape in scenes.SHAPES:
    assert any(s == shape for _, s in scenes.SEEN_PAIRS)
  palette = np.array(list(scenes.COLOURS.values()) + list(scenes.BACKGROUNDS.values()), float)
  dist = np.linalg.norm(palette[:, None] - palette[None], axis=-1)
  assert dist[~np.eye(len(palette), dtype=bool)].min() > 80    # well separated in RGB


def test_same_index_same_record_and_seeds_differ():
  a, b = scenes.SceneSource(50, 64, seed=3), scenes.SceneSource(50, 64, seed=3)
  for i in (0, 7, 49):
    ra, rb = a[i], b[i]
    np.testing.assert_array_equal(ra["image"], rb["image"])
    assert ra["caption"] == rb["caption"] and ra["attributes"] == rb["attributes"]
  np.testing.assert_array_equal(a[7]["image"], a[7]["image"])
  other = scenes.SceneSource(50, 64, seed=4)
  assert [a[i]["caption"] for i in range(10)] != [other[i]["caption"] for i in range(10)]
  assert any(not np.array_equal(a[i]["image"], other[i]["image"]) for i in range(10))


def test_grain_reads_the_same_records():
  source = scenes.SceneSource(20, 32, seed=1)
  ds = grain.MapDataset.source(source).map(lambda r: {"image": r["image"]}).batch(4)
  np.testing.assert_array_equal(ds[1]["image"][2], source[6]["image"])
  assert "SceneSource(n=20, resolution=32" in repr(source)


@pytest.mark.parametrize("resolution", [32, 64, 256])
def test_record_types_and_ranges(resolution):
  source = scenes.SceneSource(40, resolution, seed=2, max_objects=2)
  for i in range(0, 40, 3):
    r = source[i]
    assert r["image"].shape == (resolution, resolution, 3) and r["image"].dtype == np.uint8
    assert isinstance(r["caption"], str) and r["caption"]
    attrs = r["attributes"]
    assert attrs["background"] == scenes.BACKGROUND
    assert 1 <= len(attrs["objects"]) <= 2
    for o in attrs["objects"]:
      assert o["colour"] in scenes.COLOURS and o["shape"] in scenes.SHAPES
      assert o["position"] in scenes.POSITIONS and o["size"] in scenes.SIZES
      x0, y0, x1, y1 = o["bbox"]
      assert all(isinstance(v, int) for v in o["bbox"])
      assert 0 <= x0 < x1 <= resolution and 0 <= y0 < y1 <= resolution
    # Background pixels everywhere outside the objects' boxes.
    outside = np.ones((resolution, resolution), bool)
    for x0, y0, x1, y1 in (o["bbox"] for o in attrs["objects"]):
      outside[y0:y1, x0:x1] = False
    assert (r["image"][outside] == scenes.BACKGROUNDS["grey"]).all()


def test_layout_and_caption_do_not_depend_on_resolution():
  small, large = scenes.SceneSource(30, 32, seed=5), scenes.SceneSource(30, 256, seed=5)
  for i in range(30):
    a, b = small[i], large[i]
    assert a["caption"] == b["caption"]
    strip = lambda r: [{k: v for k, v in o.items() if k != "bbox"} for o in r["attributes"]["objects"]]
    assert strip(a) == strip(b)


def test_splits_respect_held_out_pairs():
  train = scenes.SceneSource(N, 32, split="train")
  held = scenes.SceneSource(N, 32, split="eval")
  seen = scenes.SceneSource(N, 32, split="eval_seen")
  held_found = set()
  for i in range(N):
    assert not set(_pairs(train[i])) & scenes.HELD_OUT
    assert not set(_pairs(seen[i])) & scenes.HELD_OUT
    found = set(_pairs(held[i])) & scenes.HELD_OUT
    assert found, held[i]["caption"]
    held_found |= found
  assert held_found == scenes.HELD_OUT
  assert [train[i]["caption"] for i in range(20)] != [seen[i]["caption"] for i in range(20)]


def test_default_scenes_hold_one_object():
  source = scenes.SceneSource(50, 32, split="train")
  assert all(len(source.attributes(i)[0]["objects"]) == 1 for i in range(50))


def test_train_covers_every_colour_shape_position_size_and_template():
  source = scenes.SceneSource(N, 32, split="train", max_objects=2)
  counts = collections.Counter()
  for i in range(N):
    attrs, template = source.attributes(i)
    counts[template] += 1
    for o in attrs["objects"]:
      counts.update([o["colour"], o["shape"], o["position"], o["size"]])
    counts[len(attrs["objects"])] += 1
  for name in (*scenes.COLOURS, *scenes.SHAPES, *scenes.POSITIONS, *scenes.SIZES,
               *scenes.TEMPLATES, 1, 2):
    assert counts[name] > 0, name


@pytest.mark.parametrize("split", ["train", "eval"])
def test_every_caption_parses_back(split):
  source = scenes.SceneSource(N, 32, seed=7, split=split, max_objects=2)
  for i in range(N):
    attrs, template = source.attributes(i)
    caption = scenes.prompt_for(attrs, template)
    objects, parsed = attrs["objects"], scenes.parse_caption(caption)
    assert [(p["colour"], p["shape"]) for p in parsed] == [(o["colour"], o["shape"])
                                                            for o in objects], caption
    for p, o in zip(parsed, objects):
      for key in ("position", "size"):
        assert p.get(key, o[key]) == o[key], caption
      if "relation" in p:
        rel, other = p["relation"]
        assert rel == scenes.relation(o["position"], objects[other]["position"]), caption
    if template in ("full", "there_is", "part", "relation_sized"):
      assert all("size" in p for p in parsed), caption


@pytest.mark.parametrize("template", range(len(scenes.TEMPLATES)))
def test_prompt_for_each_template(template):
  attrs = {"objects": [{"colour": "orange", "shape": "triangle", "position": "left", "size": "small"},
                       {"colour": "blue", "shape": "cross", "position": "top", "size": "large"}]}
  caption = scenes.prompt_for(attrs, template)
  assert caption == scenes.prompt_for(attrs, scenes.TEMPLATES[template])
  assert [(p["colour"], p["shape"]) for p in scenes.parse_caption(caption)] == [
      ("orange", "triangle"), ("blue", "cross")], caption
  assert "a orange" not in caption and "an small" not in caption, caption    # article agrees


def test_parse_handwritten_prompts():
  assert scenes.parse_caption("A big Red circle in the centre.") == [
      {"colour": "red", "shape": "circle", "size": "large", "position": "center"}]
  assert scenes.parse_caption("a tiny white cross on the left of the image") == [
      {"colour": "white", "shape": "cross", "size": "small", "position": "left"}]
  assert scenes.parse_caption("green square below a black cross") == [
      {"colour": "green", "shape": "square", "relation": ("below", 1)},
      {"colour": "black", "shape": "cross"}]
  assert scenes.parse_caption("a circle") == [{"colour": None, "shape": "circle"}]
  assert scenes.parse_caption("nothing to see") == []


def _palette_labels(pixels):
  """Index into COLOURS of each pixel's nearest palette colour; -1 for the background."""
  names = list(scenes.COLOURS) + ["background"]
  palette = np.array([scenes.COLOURS[n] for n in names[:-1]] + [scenes.BACKGROUNDS["grey"]], float)
  nearest = np.linalg.norm(pixels[:, None].astype(float) - palette[None], axis=-1).argmin(-1)
  return np.where(nearest == len(names) - 1, -1, nearest)


@pytest.mark.parametrize("resolution", [32, 64, 256])
def test_pixels_show_the_stated_colour_and_position(resolution):
  source = scenes.SceneSource(60 if resolution == 256 else 150, resolution, seed=11,
                              max_objects=2)
  names = list(scenes.COLOURS)
  for i in range(len(source)):
    r = source[i]
    boxes = [o["bbox"] for o in r["attributes"]["objects"]]
    for o in r["attributes"]["objects"]:
      x0, y0, x1, y1 = o["bbox"]
      labels = _palette_labels(r["image"][y0:y1, x0:x1].reshape(-1, 3))
      labels = labels[labels >= 0]
      assert labels.size, (i, o)
      assert names[np.bincount(labels).argmax()] == o["colour"], (i, r["caption"])
      assert _cell((x0 + x1) / 2, (y0 + y1) / 2, resolution) == o["position"], (i, o)
    if len(boxes) == 2:                # the two objects' boxes are disjoint
      (a0, b0, a1, b1), (c0, d0, c1, d1) = boxes
      assert a1 <= c0 or c1 <= a0 or b1 <= d0 or d1 <= b0, (i, boxes)


def test_render_a_parsed_prompt():
  image = scenes.render(scenes.parse_caption("a red circle to the left of a blue square"), 64)
  labels = _palette_labels(image.reshape(-1, 3)).reshape(64, 64)
  names = list(scenes.COLOURS)
  red_x = np.nonzero(labels == names.index("red"))[1].mean()
  blue_x = np.nonzero(labels == names.index("blue"))[1].mean()
  assert red_x < 32 < blue_x
  # A record's attributes render to its own image.
  r = scenes.SceneSource(5, 48, seed=9)[3]
  np.testing.assert_array_equal(scenes.render(r["attributes"], 48), r["image"])


@pytest.mark.parametrize("make, match", [
    (lambda: scenes.SceneSource(10, resolution=8), "resolution must be an int >= 16"),
    (lambda: scenes.SceneSource(10, split="test"), "unknown scene split"),
    (lambda: scenes.SceneSource(0), "num_examples > 0"),
    (lambda: scenes.SceneSource(10, max_objects=9), "max_objects"),
    (lambda: scenes.prompt_for([{"colour": "red", "shape": "cross"}], "relation"), "exactly 2"),
    (lambda: scenes.prompt_for([{"colour": "red", "shape": "cross"}], "full"), "needs a size"),
    (lambda: scenes.render([{"colour": "pink", "shape": "cross"}], 32), "colour 'pink'"),
])
def test_clear_errors(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_index_out_of_range():
  with pytest.raises(IndexError, match="out of range"):
    scenes.SceneSource(5, 32)[5]


def test_export_folder_is_read_back_by_the_folder_source(tmp_path):
  """`python -m muse_jax.data.scenes export` / `prompts`: the folder recipe's data, as the folder
  source reads it (the same pixels and captions as the scene source)."""
  from muse_jax.data import sources
  assert scenes.main(["export", "--out", str(tmp_path / "f"), "--num-examples", "5",
                      "--resolution", "32", "--split", "eval"]) == 0
  folder = sources.FolderSource(str(tmp_path / "f"))
  source = scenes.SceneSource(5, resolution=32, split="eval")
  assert len(folder) == 5
  for i in range(5):
    rec = folder[i]
    with Image.open(io.BytesIO(rec["image_bytes"])) as im:
      np.testing.assert_array_equal(np.asarray(im), source[i]["image"])
    assert rec["caption"] == source[i]["caption"]
  assert scenes.main(["prompts", "--split", "eval", "--num", "3", "--out",
                      str(tmp_path / "heldout.txt")]) == 0
  lines = (tmp_path / "heldout.txt").read_text().splitlines()
  assert lines == [scenes.SceneSource(3, 16, seed=1, split="eval")[i]["caption"] for i in range(3)]
  assert all(any((o["colour"], o["shape"]) in scenes.HELD_OUT for o in scenes.parse_caption(c))
             for c in lines)
  assert scenes.main(["export", "--out", str(tmp_path / "g"), "--num-examples", "0",
                      "--resolution", "32"]) == 1
