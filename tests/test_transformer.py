"""Base transformer: shapes, no leak of masked ground truth, text dropout semantics."""
import chex
import jax
import jax.numpy as jnp
import numpy as np

from muse_jax import tasks
from tests import helpers


def _setup():
  task = tasks.get_task(helpers.tiny_base())
  params = jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x,
                        task.init_params(jax.random.key(0)),
                        is_leaf=lambda x: hasattr(x, "unbox"))
  src = task.make_source()
  batch = {k: jnp.stack([src[i][k] for i in range(4)]) for k in ("tokens", "txt", "txt_mask")}
  return task, params, batch


def test_logits_shape_and_padded_vocab():
  task, params, batch = _setup()
  c = task.model_cfg
  logits = task.model.apply({"params": params}, batch["tokens"], batch["txt"], batch["txt_mask"])
  chex.assert_shape(logits, (4, c.seq_len, c.output_vocab))
  assert logits.dtype == jnp.float32
  assert c.input_vocab % c.vocab_pad_multiple == 0 and c.input_vocab > c.codebook_size


def test_masked_ground_truth_cannot_leak():
  """Through the training corruption (task.mask_and_drop_text, what loss_fn runs): changing the
  true ids at masked positions leaves the model's inputs and logits unchanged; changing an
  unmasked id changes them (the test can fail)."""
  task, params, batch = _setup()
  c = task.model_cfg
  rng = jax.random.key(3)
  inputs_a, mask, _, txt_mask, _ = task.mask_and_drop_text(rng, batch["tokens"],
                                                             batch["txt_mask"])
  scrambled = jnp.where(mask, (batch["tokens"] + 17) % c.codebook_size, batch["tokens"])
  assert bool((scrambled != batch["tokens"])[mask].all())
  inputs_b, mask_b, *_ = task.mask_and_drop_text(rng, scrambled, batch["txt_mask"])
  np.testing.assert_array_equal(np.asarray(mask), np.asarray(mask_b))
  assert bool((inputs_a[mask] == c.mask_id).all())

  def logits(inputs):
    return np.asarray(task.model.apply({"params": params},
                                       *task.model_args(inputs, batch, txt_mask)))

  la = logits(inputs_a)
  np.testing.assert_array_equal(la, logits(inputs_b))
  b, n = np.argwhere(~np.asarray(mask))[0]
  inputs_c = inputs_a.at[b, n].set((inputs_a[b, n] + 1) % c.codebook_size)
  assert not np.allclose(la, logits(inputs_c))
  _, metrics = task.loss_fn(params, batch, rng)
  assert np.isfinite(float(metrics["loss"]))


def test_dropped_text_ignores_text_states():
  """An example with an all-False text mask is unaffected by its text states (pure image model)."""
  task, params, batch = _setup()
  no_text = jnp.zeros_like(batch["txt_mask"])
  la = task.model.apply({"params": params}, batch["tokens"], batch["txt"], no_text)
  lb = task.model.apply({"params": params}, batch["tokens"], batch["txt"] * 5 + 1, no_text)
  np.testing.assert_array_equal(np.asarray(la), np.asarray(lb))
  lc = task.model.apply({"params": params}, batch["tokens"], batch["txt"], batch["txt_mask"])
  assert not np.allclose(np.asarray(la), np.asarray(lc))


def test_padding_text_positions_are_ignored():
  task, params, batch = _setup()
  txt_b = jnp.where(batch["txt_mask"][..., None], batch["txt"], 123.0)
  la = task.model.apply({"params": params}, batch["tokens"], batch["txt"], batch["txt_mask"])
  lb = task.model.apply({"params": params}, batch["tokens"], txt_b, batch["txt_mask"])
  np.testing.assert_allclose(np.asarray(la), np.asarray(lb), rtol=1e-5, atol=1e-5)


def test_text_drop_fraction():
  task, params, batch = _setup()
  big = {k: jnp.repeat(v, 256, axis=0) for k, v in batch.items()}
  _, m = task.loss_fn(params, big, jax.random.key(5))
  assert abs(float(m["text_kept"]) - 0.9) < 0.03


def test_remat_policies_keep_the_gradients_and_recompute():
  """The model.remat policies give the same gradients as keeping everything; the
  rematerialising ones really wrap the layer in a checkpoint (visible in the jaxpr), and an
  unknown policy name fails with the choices. ("dots_no_batch" is wired exactly like "dots":
  left out to keep the default test run short.)"""
  import pytest
  _, params, batch = _setup()                 # the same params and batch for every policy
  grads, jaxprs = {}, {}
  for policy in ("none", "dots", "full"):
    config = helpers.tiny_base()
    config.model.remat = policy
    task = tasks.get_task(config)
    fn = jax.grad(lambda p: task.loss_fn(p, batch, jax.random.key(1))[0])
    jaxpr = jax.make_jaxpr(fn)(params)
    jaxprs[policy] = str(jaxpr)
    grads[policy] = jax.core.eval_jaxpr(jaxpr.jaxpr, jaxpr.consts, *jax.tree.leaves(params))
  for policy in ("dots", "full"):
    chex.assert_trees_all_close(grads[policy], grads["none"], rtol=1e-5, atol=1e-6)
    assert "checkpoint" in jaxprs[policy] or "remat" in jaxprs[policy], policy
  assert "checkpoint" not in jaxprs["none"] and "remat" not in jaxprs["none"]
  config = helpers.tiny_base()
  config.model.remat = "some"
  with pytest.raises(ValueError, match=r"model.remat='some'; expected one of"):
    tasks.get_task(config)
