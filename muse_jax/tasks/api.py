"""The contract between a stage and the one train loop (muse_jax/train/loop.py).

Every stage's task subclasses `Task`. The loop calls exactly these members, and never probes a
task for others: what a stage does not have is declared here with a neutral default (no frozen
networks, no online encoder, no evaluation, no sample grids, nothing to load before step 0), so
a reader sees the whole surface in one place and a new stage knows what it must write.

Must define: batch_spec, init_boxed, init_state, train_step, make_source.
"""
import jax
import numpy as np
import optax

from muse_jax import checkpoint, treepath


class Task:
  """One training stage. `config` is the stage's ml_collections config."""

  # Train metrics shown on the progress bar beside the loss.
  progress_metrics: tuple[str, ...] = ()
  # tasks/online.py's OnlineEncoder when the stage trains from raw images through frozen
  # tokenizers and text encoder (data.source a raw image source); the loop loads it, assembles
  # host batches of its host_spec and runs it between the data and the step.
  online = None

  def __init__(self, config):
    self.config = config

  # Shapes and init ----------------------------------------------------------------------------
  def batch_spec(self, batch_size: int) -> dict:
    """name -> (jax.ShapeDtypeStruct, logical axes) of one global batch the step reads."""
    raise NotImplementedError

  def init_boxed(self, rng) -> tuple:
    """The trained networks' params with their nn.Partitioned boxes (logical axes), a tuple in
    the order init_state stores them: the loop derives the state's shardings from it."""
    raise NotImplementedError

  def init_state(self, rng, tx: optax.GradientTransformation):
    """The TrainState at step 0 (unboxed params, optimizer state, any extra)."""
    raise NotImplementedError

  def load_init(self, state):
    """The state a fresh run (no checkpoint yet) starts from: `state` as init_state made it, or,
    with config.init_from (a training workdir, step folder or muse-ema export of the same
    model), its params (EMA params when saved) in place of the initial ones, the training-time
    EMA restarted from them; the optimizer starts fresh (finetuning). Decoder finetuning
    overrides this to take only the encoder and codebook."""
    path = self.config.get("init_from")
    if not path:
      return state
    params = init_params_from(path, state.params)
    extra = state.extra
    if isinstance(extra, dict) and "ema_params" in extra:
      # Separate host copies: the caller donates the state to the train step, and two leaves
      # sharing one buffer would be donated twice.
      extra = dict(extra, ema_params=jax.tree.map(np.array, params))
    return state.replace(params=params, extra=extra)

  # Frozen networks the step reads --------------------------------------------------------------
  def frozen_abstract(self):
    """Shapes (a pytree of ShapeDtypeStruct) of the frozen networks the train step reads, or
    None when it reads none. Shapes only, so muse-fit compiles without their weight files."""
    return None

  def load_frozen(self):
    """The frozen networks' params, frozen_abstract's structure; a clear error naming the config
    field when a weight file is missing or wrong. Called only when frozen_abstract() is not None."""
    raise NotImplementedError(f"{type(self).__name__} declares frozen networks but cannot load them")

  # Steps --------------------------------------------------------------------------------------
  def train_step(self, state, batch, rng, tx, frozen=None):
    """(state, batch, rng, tx, frozen) -> (state, metrics); metrics hold a scalar "loss" (and
    "grad_norm" when computed), checked for NaN/inf by the loop. `frozen` is load_frozen()'s
    pytree, or None."""
    raise NotImplementedError

  # Evaluation and sample grids ----------------------------------------------------------------
  # evaluate(state, batch, workdir, step, write) -> {name: float}, run on every process every
  # train.eval_every steps on one fixed global batch, with the state sharded as the step holds
  # it (never pulled to one host); only the process with write=True writes files. None: the
  # stage has no evaluation.
  evaluate = None

  def make_sampler(self, mesh, rules, abstract_params):
    """A callable params -> tasks.samples.Samples for the training-time sample grids (called
    when train.sample_every > 0, after online.load()), or None when the stage draws none."""
    del mesh, rules, abstract_params
    return None

  # Data ---------------------------------------------------------------------------------------
  def make_source(self):
    """The random-access source of training records (grain's protocol: len and getitem)."""
    raise NotImplementedError

  def make_transform(self, counter):
    """record -> example (or None to skip it, counted by `counter`), or None for no transform."""
    del counter
    return None


def init_params_from(path: str, like):
  """The params stored at `path` (checkpoint.load_params) as host numpy in `like`'s structure and
  dtypes; a CheckpointError naming the first entry whose name or shape differs."""
  loaded = checkpoint.load_params(path)
  checkpoint.check_same_shapes(like, loaded, f"init_from {path}",
                               "it was trained with another model config")
  have = {treepath.show(p): x for p, x in jax.tree_util.tree_flatten_with_path(loaded)[0]}
  flat = [np.array(have[treepath.show(p)], dtype=x.dtype)
          for p, x in jax.tree_util.tree_flatten_with_path(like)[0]]
  return jax.tree.unflatten(jax.tree.structure(like), flat)
