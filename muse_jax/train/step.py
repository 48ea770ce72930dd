"""The gradient step shared by single-optimizer stages (base, super-res)."""
import flax.linen as nn
import jax
import optax

from muse_jax.train.state import TrainState


def init_state(init_params, rng, tx):
  """TrainState from a boxed-params initializer (boxes stripped: shardings come from elsewhere)."""
  return TrainState.create(nn.unbox(init_params(rng)), tx)


def gradient_step(loss_fn, state: TrainState, batch, rng, tx):
  """One optimizer step. rng is the base key; the step's key is fold_in(rng, state.step), so a
  resumed run draws the same masks as an uninterrupted one."""
  step_rng = jax.random.fold_in(rng, state.step)
  grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, batch, step_rng)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics
