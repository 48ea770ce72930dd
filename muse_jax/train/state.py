"""Train state: the pytree every stage's train step takes and returns."""
from typing import Any

import flax.struct
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """step, params and optimizer state. `extra` holds stage-specific trees (a discriminator's
  state, EMA params); it is checkpointed and sharded with the rest."""
  step: jnp.ndarray
  params: Any
  opt_state: Any
  extra: Any = None

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation, extra=None):
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
               extra=extra)
