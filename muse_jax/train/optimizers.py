"""Optimizers and learning-rate schedules from `config.optim` (all optax)."""
import optax

OPTIMIZERS = ("adafactor", "adamw")
DECAYS = ("cosine", "linear", "constant")


def learning_rate_schedule(optim, total_steps: int) -> optax.Schedule:
  """Linear warm-up to optim.lr over optim.warmup_steps, then optim.decay to lr * optim.end_lr_frac."""
  if optim.decay not in DECAYS:
    raise ValueError(f"optim.decay={optim.decay!r}; expected one of {DECAYS}")
  warmup = int(optim.warmup_steps)
  rest = max(int(total_steps) - warmup, 1)
  end = optim.lr * optim.end_lr_frac
  if optim.decay == "cosine":
    after = optax.cosine_decay_schedule(optim.lr, rest, alpha=optim.end_lr_frac)
  elif optim.decay == "linear":
    after = optax.linear_schedule(optim.lr, end, rest)
  else:
    after = optax.constant_schedule(optim.lr)
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, optim.lr, warmup), after], [warmup])


def make_optimizer(optim, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer named by optim.name, with gradient clipping and decoupled weight decay.

  adafactor: factored second moments with a constant beta2 = optim.b2 (the paper's 0.96) and
  epsilon optim.eps (1e-30 in the presets: Adafactor's eps1, added to squared gradients), first
  moment EMA with optim.b1, decoupled weight decay; as in Muse Table 4.
  adamw: optax.adamw with (b1, b2, eps).
  """
  schedule = learning_rate_schedule(optim, total_steps)
  chain = []
  if optim.grad_clip_norm:
    chain.append(optax.clip_by_global_norm(optim.grad_clip_norm))
  if optim.name == "adafactor":
    b2 = float(optim.b2)
    chain += [
        optax.scale_by_factored_rms(decay_rate_fn=lambda step, _: b2,
                                   epsilon=float(optim.eps)),
        optax.clip_by_block_rms(1.0),
        optax.ema(optim.b1, debias=False),
    ]
  elif optim.name == "adamw":
    chain.append(optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps))
  else:
    raise ValueError(f"optim.name={optim.name!r}; expected one of {OPTIMIZERS}")
  if optim.weight_decay:
    chain.append(optax.add_decayed_weights(optim.weight_decay))
  chain.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*chain), schedule
