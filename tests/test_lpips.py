"""LPIPS-VGG (muse_jax/models/lpips.py) against the lpips package (0.1.4, lpips.LPIPS(net='vgg'))
sharing weights through files in torchvision's and lpips' layouts; the loaders' errors; the vqgan
stage training with the frozen perceptual loss, and failing before training without its files."""
import contextlib
import importlib
import importlib.util
import os
import socket
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from configs import vqgan as vq_config
from muse_jax import tasks
from muse_jax.models import lpips as lpips_lib
from muse_jax.train import loop
from tests import helpers

# torchvision.models.vgg16: make_layers(cfgs["D"]), a 3x3 conv (padding 1) + ReLU per number and a
# 2x2 max pool per "M", indexed in that order in `features`.
VGG16_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
LIN_CHANNELS = (64, 128, 256, 512, 512)


def _random_state_dicts(seed: int):
  """(VGG16 state dict with torchvision's keys, lin state dict with lpips' keys) of He-scaled
  random weights, numpy float32."""
  rng = np.random.default_rng(seed)
  vgg, c, i = {}, 3, 0
  for v in VGG16_D:
    if v == "M":
      i += 1
      continue
    vgg[f"features.{i}.weight"] = (rng.normal(size=(v, c, 3, 3)) * np.sqrt(2 / (9 * c))).astype(
        np.float32)
    vgg[f"features.{i}.bias"] = rng.normal(0, 0.1, v).astype(np.float32)
    c, i = v, i + 2
  lin = {f"lin{k}.model.1.weight": rng.uniform(0, 0.5, (1, ch, 1, 1)).astype(np.float32)
         for k, ch in enumerate(LIN_CHANNELS)}
  return vgg, lin


def _save(tmp_path, vgg, lin, prefix=""):
  paths = tmp_path / f"{prefix}vgg16.safetensors", tmp_path / f"{prefix}lin.safetensors"
  save_file(vgg, paths[0])
  save_file(lin, paths[1])
  return paths


@pytest.fixture
def no_network(monkeypatch):
  """Any connection or torch hub download fails the test: the reference must not fetch weights."""
  def refuse(*args, **kwargs):
    raise AssertionError(f"tried to reach the network: {args!r}")
  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  torch = sys.modules.get("torch")
  if torch is not None:
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


# ------------------------------------------------------------------------------------------------
# The reference: the lpips package.

def _transcribed_torchvision():
  """Stand-ins for torchvision and torchvision.models with vgg16's layout transcribed (for
  net='vgg' lpips reads nothing of torchvision but vgg16(pretrained=...).features)."""
  import torch

  def vgg16(pretrained=False, **kwargs):
    del kwargs
    assert not pretrained, "the reference must not load (download) ImageNet weights"
    layers, c = [], 3
    for v in VGG16_D:
      if v == "M":
        layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
      else:
        layers += [torch.nn.Conv2d(c, v, kernel_size=3, padding=1), torch.nn.ReLU(inplace=True)]
        c = v
    return types.SimpleNamespace(features=torch.nn.Sequential(*layers))

  models = types.ModuleType("torchvision.models")
  models.vgg16 = vgg16
  tv = types.ModuleType("torchvision")
  tv.models = models
  return {"torchvision": tv, "torchvision.models": models}


@contextlib.contextmanager
def _fresh_modules(replace: dict):
  """sys.modules with `replace` in it and no lpips module (so lpips is imported anew against
  it); every name touched is put back afterwards."""
  def touched(name):
    return name in replace or name.split(".")[0] == "lpips"
  saved = {k: v for k, v in sys.modules.items() if touched(k)}
  for k in saved:
    del sys.modules[k]
  sys.modules.update(replace)
  try:
    yield
  finally:
    for k in [k for k in sys.modules if touched(k)]:
      del sys.modules[k]
    sys.modules.update(saved)


def _lpips_package(reference: str):
  pytest.importorskip("torch", reason="the lpips reference runs on torch")
  if importlib.util.find_spec("lpips") is None:
    pytest.skip("the lpips package is not installed: pip install --no-deps lpips==0.1.4")
  if reference == "torchvision":
    try:
      importlib.import_module("torchvision.models")
    except Exception as e:  # noqa: BLE001  ImportError, or a CUDA build's ops failing to load
      pytest.skip(f"torchvision is not importable here ({type(e).__name__}: {e}); PyPI's wheels "
                  f"are CUDA builds that do not load next to the CPU torch. The transcribed "
                  f"VGG16 layout covers the same check")
    return importlib.import_module("lpips")
  with _fresh_modules(_transcribed_torchvision()):
    return importlib.import_module("lpips")


@pytest.mark.parametrize("reference", ["transcribed", "torchvision"])
def test_lpips_matches_the_lpips_package(reference, tmp_path, no_network):
  lpips_pkg = _lpips_package(reference)
  import torch
  # pretrained=True: lin weights from the package's own weights/v0.1/vgg.pth; pnet_rand: a random
  # VGG16 instead of torchvision's ImageNet weights (nothing is downloaded).
  ref = lpips_pkg.LPIPS(net="vgg", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
  g = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for m in ref.net.modules():
      if isinstance(m, torch.nn.Conv2d):        # He-scaled weights and non-zero biases
        m.weight.normal_(0, (2 / m.weight[0].numel()) ** 0.5, generator=g)
        m.bias.normal_(0, 0.1, generator=g)
  ref.eval()
  # torchvision's file: lpips' slices keep the `features` indices (slice2.5.weight is
  # features.5.weight); its classifier is ignored.
  vgg_state = {"features." + k.split(".", 1)[1]: v for k, v in ref.net.state_dict().items()}
  vgg_state["classifier.6.bias"] = torch.zeros(1000)
  vgg_path = tmp_path / lpips_lib.VGG_FILE
  torch.save(vgg_state, vgg_path)
  lin_path = os.path.join(os.path.dirname(lpips_pkg.__file__), "weights", "v0.1", "vgg.pth")
  params = lpips_lib.load_params(vgg_path, lin_path)
  apply = jax.jit(lpips_lib.LPIPS().apply)
  rng = np.random.default_rng(0)
  for shape in ((2, 48, 48, 3), (1, 37, 50, 3)):      # odd, non-square: floor-sized pools
    x0 = rng.uniform(-1, 1, shape).astype(np.float32)
    x1 = np.clip(x0 + rng.normal(0, 0.3, shape), -1, 1).astype(np.float32)
    x1[-1] = rng.uniform(-1, 1, shape[1:])             # and an unrelated pair
    with torch.no_grad():
      want = ref(*(torch.from_numpy(x).permute(0, 3, 1, 2) for x in (x0, x1))).numpy()
    assert want.shape == (shape[0], 1, 1, 1) and want.min() > 1e-3
    got = np.asarray(apply({"params": params}, x0, x1))
    np.testing.assert_allclose(got, want.reshape(-1), rtol=1e-5)


def test_safetensors_conversion_loads_the_same_params(tmp_path):
  torch = pytest.importorskip("torch", reason="writing .pth files needs torch")
  vgg, lin = _random_state_dicts(0)
  vgg["classifier.0.bias"] = np.zeros(8, np.float32)
  for name, state in (("vgg16-397923af", vgg), ("vgg", lin)):
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / f"{name}.pth")
    assert lpips_lib.main([str(tmp_path / f"{name}.pth"),
                           str(tmp_path / f"{name}.safetensors")]) == 0
  from_pth = lpips_lib.load_params(tmp_path / "vgg16-397923af.pth", tmp_path / "vgg.pth")
  from_st = lpips_lib.load_params(tmp_path / "vgg16-397923af.safetensors",
                                  tmp_path / "vgg.safetensors")
  jax.tree.map(np.testing.assert_array_equal, from_pth, from_st)
  np.testing.assert_array_equal(from_st["vgg"]["conv5"]["kernel"],
                                vgg["features.5.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(from_st["lin3"]["kernel"][:, 0],
                                lin["lin3.model.1.weight"][0, :, 0, 0])
  # The converter refuses a wrong file before writing anything.
  del lin["lin4.model.1.weight"]
  torch.save({k: torch.from_numpy(v) for k, v in lin.items()}, tmp_path / "bad.pth")
  with pytest.raises(ValueError, match=r"lack lin4\.model\.1\.weight"):
    lpips_lib.main([str(tmp_path / "bad.pth"), str(tmp_path / "bad.safetensors")])
  assert not (tmp_path / "bad.safetensors").exists()


def test_missing_or_wrong_weight_files_raise_clear_errors(tmp_path):
  vgg, lin = _random_state_dicts(0)
  vgg_path, lin_path = _save(tmp_path, vgg, lin)
  with pytest.raises(FileNotFoundError, match=r"vgg16-397923af\.pth, from "
                     r"https://download\.pytorch\.org/models/vgg16-397923af\.pth"):
    lpips_lib.load_params(tmp_path / "nope.pth", lin_path)
  with pytest.raises(FileNotFoundError, match=r"weights/v0\.1/vgg\.pth, shipped inside the lpips "
                     r"package"):
    lpips_lib.load_params(vgg_path, tmp_path / "nope.safetensors")
  cases = [
      ({k: v for k, v in vgg.items() if k != "features.28.bias"}, lin,
       r"VGG16 weights lack features\.28\.bias \(shape \(512,\)\)"),
      (dict(vgg, **{"features.3.weight": np.zeros((2, 2), np.float32)}), lin,
       r"unexpected key features\.3\.weight \(shape \(2, 2\)"),
      (dict(vgg, **{"features.0.weight": np.zeros((64, 1, 3, 3), np.float32)}), lin,
       r"features\.0\.weight has shape \(64, 1, 3, 3\), expected \(64, 3, 3, 3\)"),
      (vgg, dict(lin, **{"lin2.model.1.weight": np.zeros((1, 128, 1, 1), np.float32)}),
       r"lin2\.model\.1\.weight has shape \(1, 128, 1, 1\), expected \(1, 256, 1, 1\)"),
      (vgg, dict(lin, **{"scaling_layer.shift": np.zeros((1, 3, 1, 1), np.float32)}),
       r"lin weights have unexpected key scaling_layer\.shift"),
      (lin, vgg, r"VGG16 weights lack features\.0\.weight .*not torchvision's"),   # swapped
  ]
  for k, (bad_vgg, bad_lin, message) in enumerate(cases):
    paths = _save(tmp_path, bad_vgg, bad_lin, prefix=f"bad{k}_")
    with pytest.raises(ValueError, match=message):
      lpips_lib.load_params(*paths)


# ------------------------------------------------------------------------------------------------
# The vqgan stage.

def _tiny(**overrides):
  return helpers.override(vq_config.get_config("size=tiny"), **overrides)


@pytest.mark.slow       # ~37 s: the default run is kept under 15 minutes; CI runs the slow set
def test_vqgan_stage_trains_with_a_frozen_perceptual_loss(tmp_path):
  vgg, lin = _random_state_dicts(1)
  vgg_path, lin_path = _save(tmp_path, vgg, lin)
  weight, batch_size, device = 0.05, 4, [jax.devices()[0]]
  setup = loop.Setup(_tiny(**{"loss.perceptual_weight": weight, "train.batch_size": batch_size,
                              "loss.perceptual_vgg_weights": str(vgg_path),
                              "loss.perceptual_lin_weights": str(lin_path)}), devices=device)
  # The LPIPS params are not trained: the state (params, optimizer state, EMA, ...) is the one
  # of the same config without the perceptual loss.
  plain = loop.Setup(_tiny(**{"train.batch_size": batch_size}), devices=device).abstract_state
  assert jax.tree.structure(setup.abstract_state) == jax.tree.structure(plain)
  assert ([(a.shape, a.dtype) for a in jax.tree.leaves(setup.abstract_state)]
          == [(a.shape, a.dtype) for a in jax.tree.leaves(plain)])
  frozen = setup.load_frozen()
  want_frozen = {"lpips": lpips_lib.params_from_state_dicts(vgg, lin)}
  # An rbg key: its init compiles in a fraction of threefry's time on the CPU.
  state = setup.init_state(jax.random.key(0, impl="unsafe_rbg"))
  compiled = setup.lower_train_step().compile()
  img = jax.random.uniform(jax.random.key(1), (batch_size, 32, 32, 3), minval=-1, maxval=1)
  params0 = jax.device_get(state.params)

  @jax.jit
  def perceptual(params, lpips_params, x):
    rec, _, _ = setup.task.model.apply({"params": params}, x)
    return jnp.mean(lpips_lib.LPIPS().apply({"params": lpips_params}, rec, x))

  want_perceptual = perceptual(params0, want_frozen["lpips"], img)
  batch = jax.device_put({"image": img}, setup.batch_shardings)
  for step in range(2):
    state, metrics = compiled(state, batch, jax.random.key(2), frozen)
    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
    assert np.isfinite(m["perceptual_loss"]) and m["perceptual_loss"] > 0
    assert np.isfinite(m["grad_norm"]) and m["g_adv"] == 0     # adversarial from step 10
    np.testing.assert_allclose(m["loss"], m["rec_loss"] + m["vq_loss"]
                               + weight * m["perceptual_loss"], rtol=1e-5)
    if step == 0:
      np.testing.assert_allclose(m["perceptual_loss"], want_perceptual, rtol=1e-4)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(frozen), want_frozen)
  moved = [not np.array_equal(a, b)
           for a, b in zip(jax.tree.leaves(params0), jax.tree.leaves(jax.device_get(state.params)))]
  assert any(moved)


def test_perceptual_loss_without_its_files_fails_before_training(tmp_path):
  config = _tiny(**{"loss.perceptual_weight": 0.05})
  with pytest.raises(FileNotFoundError, match=r"loss\.perceptual_weight=0\.05 needs the frozen "
                     r"LPIPS-VGG network, but loss\.perceptual_vgg_weights is not set: .*"
                     r"vgg16-397923af\.pth.*set loss\.perceptual_weight=0 to train without"):
    loop.run(config, tmp_path / "run")
  # No step ran: no metrics, no checkpoint (the empty checkpoints/ folder is the writability
  # check, made before anything loads or compiles).
  assert not (tmp_path / "run" / "metrics.jsonl").exists()
  assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()]
  vgg_path, _ = _save(tmp_path, *_random_state_dicts(0))
  config = _tiny(**{"loss.perceptual_weight": 0.05, "loss.perceptual_vgg_weights": str(vgg_path),
                    "loss.perceptual_lin_weights": str(tmp_path / "vgg.pth")})
  with pytest.raises(FileNotFoundError, match=r"loss\.perceptual_lin_weights '.*vgg\.pth' is not a "
                     r"file: set it to lpips' linear-layer weights weights/v0\.1/vgg\.pth"):
    loop.run(config, tmp_path / "run")
  # The paper presets train with it, so they need the files (muse-fit only needs shapes).
  for size in ("f16-256", "f8-512"):
    config = vq_config.get_config(f"size={size}")
    assert config.loss.perceptual_weight == 0.05
    task = tasks.get_task(config)
    assert jax.tree.leaves(task.frozen_abstract())
    with pytest.raises(FileNotFoundError, match="loss.perceptual_vgg_weights is not set"):
      task.load_frozen()
