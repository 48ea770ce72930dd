"""The contract between a stage and the one train loop (muse_jax/train/loop.py).

Every stage's task subclasses `Task`. The loop calls exactly these members, and never probes a
task for others: what a stage does not have is declared here with a neutral default (no frozen
networks, no online encoder, no evaluation, no sample grids, nothing to load before step 0), so
a reader sees the whole surface in one place and a new stage knows what it must write.

Must define: batch_spec, init_boxed, init_state, train_step, make_source.
"""
import optax


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
    """The state a fresh run (no checkpoint yet) starts from: `state` as init_state made it,
    or with parts read from elsewhere (decoder finetuning's trained encoder)."""
    return state

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
  # evaluate(state, batch, workdir, step) -> {name: float}, run on process 0 every
  # train.eval_every steps on one fixed batch; None: the stage has no evaluation.
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
