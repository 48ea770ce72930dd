"""Every preset evaluates; parameter counts match the paper; bad configs fail at start."""

import chex
import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import base as base_config
from configs import decoder_finetune as ft_config
from configs import vqgan as vqgan_config
from muse_jax import tasks
from muse_jax.train import loop
from tests import helpers


@pytest.mark.parametrize("size", sorted(base_config.PRESETS))
def test_every_base_preset_evaluates(size):
  config = base_config.get_config(f"size={size}")
  assert helpers.param_count(config) > 0


@pytest.mark.parametrize("size,paper", [("632m", 632e6), ("3b", 3e9)])
def test_paper_parameter_counts_within_10_percent(size, paper):
  n = helpers.param_count(base_config.get_config(f"size={size}"))
  assert abs(n - paper) / paper < 0.10, f"{size}: {n / 1e6:.1f}M params vs paper {paper / 1e6:.0f}M"


# (tests/test_superres.py instantiates the super-res presets.)
STAGE_PRESETS = ([(vqgan_config, s) for s in sorted(vqgan_config.PRESETS)]
                 + [(ft_config, s) for s in sorted(vqgan_config.PRESETS)])


@pytest.mark.parametrize("module,size", STAGE_PRESETS,
                         ids=[f"{m.__name__.split('.')[-1]}-{s}" for m, s in STAGE_PRESETS])
def test_every_other_stage_preset_instantiates(module, size):
  # Shapes only (jax.eval_shape): the paper presets (vqgan f16-256 / f8-512 and their decoder
  # finetuning) build without memory or weight files.
  config = module.get_config(f"size={size}")
  if config.stage == "decoder_finetune":
    config.init_from = "/unused/trained_tokenizer"   # read by load_init only, not at build
    plain = helpers.param_count(vqgan_config.get_config(f"size={size}"))
    assert helpers.param_count(config) > plain          # the wider decoder
  else:
    assert helpers.param_count(config) > 0


def test_cpu_bench_is_about_40m():
  n = helpers.param_count(base_config.get_config("size=cpu-bench"))
  assert 35e6 < n < 50e6, n


def test_every_parameter_has_logical_axes():
  task = tasks.get_task(helpers.tiny_base())
  boxed = jax.eval_shape(task.init_params, jax.random.key(0))
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  unnamed = [x for x in leaves if not isinstance(x, nn.Partitioned)]
  assert not unnamed
  for x in leaves:
    chex.assert_equal(len(x.names), x.value.ndim)


def test_unknown_size_and_argument_fail():
  with pytest.raises(ValueError, match="unknown size preset"):
    base_config.get_config("size=huge")
  with pytest.raises(ValueError, match="unknown config argument"):
    base_config.get_config("sise=tiny")


def test_batch_not_divisible_by_data_axes():
  config = helpers.tiny_base(**{"train.batch_size": 12})
  with pytest.raises(ValueError, match="not divisible by the 8 ways"):
    loop.Setup(config)


def test_mesh_larger_than_devices():
  config = helpers.tiny_base(**{"mesh.data": 4, "mesh.fsdp": 4})
  with pytest.raises(ValueError, match="needs 16 devices but 8 are available"):
    loop.Setup(config)


def test_unknown_stage():
  with pytest.raises(ValueError, match="not a known stage"):
    tasks.get_task(helpers.tiny_base(stage="nope"))


def test_heads_must_divide_hidden():
  with pytest.raises(ValueError, match="divisible by model.num_heads"):
    tasks.get_task(helpers.tiny_base(**{"model.num_heads": 3}))


def test_command_line_override_and_locked_config(tmp_path):
  ok = helpers.run_main("configs/base.py:size=tiny", tmp_path / "a", "--config.optim.lr=3e-4",
                        "--config.train.num_steps=2")
  assert ok.returncode == 0
  bad = helpers.run_main("configs/base.py:size=tiny", tmp_path / "b", "--config.optim.lrr=3e-4",
                         check=False)
  assert bad.returncode != 0 and "lrr" in bad.stderr


def test_a_mesh_axis_that_does_not_divide_a_dimension_is_dropped():
  from jax.sharding import PartitionSpec as P
  from muse_jax.parallel import sharding
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:8]).reshape(2, 2, 2),
                           ("data", "fsdp", "tensor"))
  # A tokenizer's output conv: 3 channels cannot split 2 ways; its kernel's 8 inputs can.
  assert sharding.fit_spec(mesh, P(None, "tensor"), (8, 3)) == P(None, None)
  assert sharding.fit_spec(mesh, P("tensor", None), (8, 3)) == P("tensor", None)
  assert sharding.fit_spec(mesh, P(("data", "fsdp")), (6,)) == P(None)
  assert sharding.fit_spec(mesh, P(("data", "fsdp")), (12, 5)) == P(("data", "fsdp"), None)
