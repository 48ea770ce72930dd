"""The one train loop. A stage's task (a muse_jax.tasks.api.Task: the contract is written there)
supplies shapes, init, the train step, its frozen networks and its data; the loop owns the mesh,
shardings, compilation, data, checkpoints, metrics, sample grids and preemption, identically for
every stage."""
import contextlib
import dataclasses
import functools
import json
import signal
import threading
import time

import flax.linen as nn
import jax
import numpy as np
import tensorboardX
import tqdm
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from muse_jax import checkpoint as ckpt_lib
from muse_jax import grids, tasks
from muse_jax.data import pipeline, preprocess
from muse_jax.parallel import axes, mesh as mesh_lib, sharding as sharding_lib
from muse_jax.train import optimizers


class NonFiniteLossError(FloatingPointError):
  """Raised when a step produces a NaN/inf loss or gradient."""


class Setup:
  """Everything derived from a config before any step runs: task, mesh, shardings, optimizer and
  the compiled train step. Built without data or device memory beyond the state itself, so
  configuration mistakes fail here, in seconds."""

  def __init__(self, config, devices=None):
    self.config = config
    self.task = tasks.get_task(config)
    self.rules = axes.rules_from_config(config.axis_rules)
    self.mesh = mesh_lib.make_mesh(config.mesh, devices)
    self.global_batch = int(config.train.batch_size)
    split = mesh_lib.batch_axis_size(self.mesh, self.rules)
    if self.global_batch % split:
      raise ValueError(f"train.batch_size={self.global_batch} is not divisible by the {split} "
                       f"ways the batch is split over the mesh {dict(self.mesh.shape)}")
    pipeline.local_batch_size(self.global_batch, jax.process_count())
    if config.train.num_steps <= 0:
      raise ValueError(f"train.num_steps must be positive, got {config.train.num_steps}")
    self.tx, self.schedule = optimizers.make_optimizer(config.optim, config.train.num_steps)

    rng = jax.random.key(config.seed)
    with self.context():
      boxed = jax.eval_shape(self.task.init_boxed, rng)
      self.abstract_state = jax.eval_shape(functools.partial(self.task.init_state, tx=self.tx), rng)
    self.state_shardings = sharding_lib.state_shardings(self.mesh, self.rules, boxed,
                                                        self.abstract_state)
    spec = self.task.batch_spec(self.global_batch)
    self.batch_abstract = {k: v[0] for k, v in spec.items()}
    self.batch_shardings = {k: mesh_lib.logical_sharding(self.mesh, self.rules, v[1])
                            for k, v in spec.items()}
    # Stages trained from raw images through frozen models (tasks/online.py) get host batches of
    # another form, turned into `spec`'s on the devices each step.
    self.online = self.task.online
    self.host_shardings = self.batch_shardings
    if self.online is not None:
      self.host_shardings = {k: mesh_lib.logical_sharding(self.mesh, self.rules, v[1])
                             for k, v in self.online.host_spec(self.global_batch).items()}
    self.replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    # Frozen networks that the train step reads (the vqgan stage's LPIPS): a replicated, explicit
    # argument of the step, neither closed over nor in the state (checkpoints stay the trained
    # model's). Shapes only here, so muse-fit compiles without their weight files; load_frozen
    # reads those.
    self.frozen_abstract = self.task.frozen_abstract()

  @contextlib.contextmanager
  def context(self):
    """Mesh + logical-axis-rules context under which model code is traced."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def init_state(self, rng):
    """The train state, born sharded."""
    with self.context():
      init = jax.jit(functools.partial(self.task.init_state, tx=self.tx),
                     out_shardings=self.state_shardings)
      return init(rng)

  def load_frozen(self):
    """The frozen networks' params placed on the mesh (None when the task has none), the train
    step's last argument. Missing or wrong weight files fail here."""
    if self.frozen_abstract is None:
      return None
    return jax.device_put(self.task.load_frozen(), self.replicated)

  def make_sampler(self):
    """The task's sample-grid sampler (tasks/samples.py: params -> Samples, compiled here for the
    state's param shardings) when config.train.sample_every > 0, else None. After online.load():
    it reuses the frozen tokenizers and text encoder."""
    if not int(self.config.train.get("sample_every", 0)):
      return None
    abstract = ckpt_lib.abstract_with_shardings(self.abstract_state, self.state_shardings)
    return self.task.make_sampler(self.mesh, self.rules, abstract.params)

  def lower_train_step(self):
    """The jitted, donated train step lowered with explicit in/out shardings: (state, batch,
    rng, frozen) -> (state, metrics); frozen is None for a stage without frozen networks."""
    in_shardings = (self.state_shardings, self.batch_shardings, self.replicated,
                    self.replicated)
    abstract_state = ckpt_lib.abstract_with_shardings(self.abstract_state, self.state_shardings)
    abstract_batch = ckpt_lib.abstract_with_shardings(self.batch_abstract, self.batch_shardings)
    # The key dtype, taken outside the mesh context: under a compile-only (muse-fit) mesh,
    # creating a key would try to run on devices that cannot execute.
    key = jax.ShapeDtypeStruct((), jax.eval_shape(jax.random.key, 0).dtype,
                               sharding=self.replicated)
    frozen = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                         sharding=self.replicated),
                          self.frozen_abstract)

    def step(state, batch, rng, frozen):
      return self.task.train_step(state, batch, rng, tx=self.tx, frozen=frozen)

    jitted = jax.jit(step, in_shardings=in_shardings,
                     out_shardings=(self.state_shardings, self.replicated), donate_argnums=0)
    with self.context():
      return jitted.lower(abstract_state, abstract_batch, key, frozen)


def memory_report(compiled) -> str:
  m = compiled.memory_analysis()
  if m is None:
    return "memory analysis unavailable on this backend"
  gib = 2.0 ** 30
  return (f"per-device memory: arguments {m.argument_size_in_bytes / gib:.3f} GiB, outputs "
          f"{m.output_size_in_bytes / gib:.3f} GiB, temporaries {m.temp_size_in_bytes / gib:.3f} "
          f"GiB, aliased {m.alias_size_in_bytes / gib:.3f} GiB, generated code "
          f"{m.generated_code_size_in_bytes / gib:.3f} GiB")


class _Preemption:
  """SIGTERM sets a flag that the loop reads between steps (single process). With several
  processes, the jax.distributed preemption sync point makes all of them stop at the same step."""

  def __init__(self):
    self.requested = threading.Event()
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self.requested.set())

  def reached(self, step: int, manager) -> bool:
    if jax.process_count() > 1:
      return manager.reached_preemption(step)
    return self.requested.is_set()

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _first_nonfinite(metrics: dict):
  for k in ("loss", "grad_norm"):
    if k in metrics and not np.isfinite(metrics[k]):
      return k
  return None


def _skip_metrics(skips) -> dict:
  """Skipped-record counts summed over processes (a collective: every process calls it)."""
  snap = skips.snapshot()
  values = np.array(list(snap.values()), np.int64)
  if jax.process_count() > 1:
    values = multihost_utils.process_allgather(values).sum(0)
  out = dict(zip(snap, values.tolist()))
  if out["skipped/total"]:
    logging.warning("skipped records so far: %s", {k: v for k, v in out.items() if v})
  return out


def sample_due(step: int, every: int, num_steps: int) -> bool:
  """Sample grids every `every` steps (0: never) and after the last step."""
  return every > 0 and (step % every == 0 or step == num_steps)


def write_samples(sampler, params, step: int, workdir, writer, metrics_file) -> None:
  """Samples with the current params on every process (one program over the mesh); process 0
  (the one with a writer) writes the labelled grid to WORKDIR/samples/step_STEP.png and to
  TensorBoard ("samples"), and the prompts' alignment scores, when they are scene captions, as
  samples/* scalars and a metrics.jsonl line."""
  t0 = time.perf_counter()
  samples = sampler(params)
  if writer is None:
    return
  grid = grids.save_labelled_grid(workdir / "samples" / f"step_{step:08d}.png",
                                  samples.images_BxHxWx3, samples.prompts)
  writer.add_image("samples", grid, step, dataformats="HWC")
  scores = samples.scores()
  for k, v in scores.items():
    writer.add_scalar(k, v, step)
  if scores:
    metrics_file.write(json.dumps({"step": step, **scores}) + "\n")
    metrics_file.flush()
  logging.info("samples at step %d (%.1f s): %s", step, time.perf_counter() - t0,
               scores or "grid written")


class MetricsLogger:
  """The host side of every finished step: step t-1's metrics are read after step t was
  dispatched (so the host never stalls the devices), a NaN/inf loss or gradient stops the run,
  and every train.log_every steps (and the last) the metrics, skipped-record counts, rate and
  learning rate go to TensorBoard (train/*), metrics.jsonl and the progress bar. Every process
  constructs one (the skip counts are a collective); process 0 alone writes."""

  def __init__(self, workdir, setup: Setup, skips, checkpointer, start: int):
    self.is_main = jax.process_index() == 0
    self.setup, self.skips, self.checkpointer = setup, skips, checkpointer
    cfg = setup.config.train
    self.log_every, self.num_steps = int(cfg.log_every), int(cfg.num_steps)
    self.writer = (tensorboardX.SummaryWriter(str(workdir / "tensorboard"))
                   if self.is_main else None)
    # Plain-text metrics next to TensorBoard: one JSON object per logged step (appended on resume).
    self.file = (workdir / "metrics.jsonl").open("a") if self.is_main else None
    self.bar = tqdm.tqdm(total=self.num_steps, initial=start,
                         desc=f"train {setup.config.stage}", unit="step",
                         disable=not self.is_main, dynamic_ncols=True)
    self.pending = None
    self.t_last, self.steps_since = time.perf_counter(), 0

  def step_dispatched(self, step_done: int, metrics) -> None:
    """Takes step `step_done`'s metrics (device arrays) and handles the previous step's."""
    self.flush()
    self.pending = (step_done, metrics)
    self.bar.update(1)

  def flush(self) -> None:
    """Handles the pending step now (before a save: never save a state whose loss is unchecked)."""
    if self.pending is not None:
      step_done, metrics = self.pending
      self.pending = None
      self._handle(step_done, metrics)

  def _handle(self, step_done: int, metrics) -> None:
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    bad = _first_nonfinite(metrics)
    if bad is not None:
      self.checkpointer.wait()
      raise NonFiniteLossError(
          f"{bad} is {metrics[bad]} at step {step_done}; stopping. The last good checkpoint "
          f"(step {self.checkpointer.latest_step()}) in {self.checkpointer.directory} is intact; "
          f"lower optim.lr or check the data before resuming.")
    self.steps_since += 1
    if step_done % self.log_every and step_done != self.num_steps:
      return
    metrics.update(_skip_metrics(self.skips))          # all processes take part in this
    now = time.perf_counter()
    rate = self.steps_since / max(now - self.t_last, 1e-9)
    self.t_last, self.steps_since = now, 0
    if not self.is_main:
      return
    metrics["steps_per_sec"] = rate
    metrics["lr"] = float(self.setup.schedule(step_done - 1))
    self.scalars(step_done, metrics, "train/")
    self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", steps_s=f"{rate:.2f}",
                         **{k: f"{metrics[k]:.3f}" for k in self.setup.task.progress_metrics})
    logging.info("step %d: %s", step_done,
                 ", ".join(f"{k}={v:.5g}" for k, v in sorted(metrics.items())))

  def scalars(self, step: int, values: dict, prefix: str) -> None:
    """values -> TensorBoard (prefix + name) and one metrics.jsonl line (process 0)."""
    if not self.is_main or not values:
      return
    for k, v in values.items():
      self.writer.add_scalar(f"{prefix}{k}", v, step)
    self.file.write(json.dumps({"step": step, **values}) + "\n")
    self.file.flush()

  def close(self) -> None:
    self.bar.close()
    if self.writer is not None:
      self.writer.close()
      self.file.close()


@dataclasses.dataclass(frozen=True)
class RunResult:
  start_step: int      # the step the run started from (0, or the checkpoint it resumed)
  final_step: int      # the last step saved
  preempted: bool      # stopped by SIGTERM / a multi-host preemption notice (saved first)


def run(config, workdir: str, devices=None) -> RunResult:
  """Trains config.stage until config.train.num_steps, resuming from workdir's latest checkpoint.
  Phases: setup (task, mesh, shardings; the workdir is checked writable before anything
  compiles), frozen networks and sample grids loaded, the step compiled, data, restore-or-init,
  then the steps (metrics: MetricsLogger; saves every checkpoint.every steps, at the last step
  and on preemption)."""
  workdir = epath.Path(workdir)
  setup = Setup(config, devices)
  num_steps = int(config.train.num_steps)
  checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", config.checkpoint.every,
                                       config.checkpoint.keep, config.checkpoint.async_save,
                                       config.checkpoint.keep_period)
  try:
    return _train(setup, workdir, checkpointer, num_steps)
  finally:
    checkpointer.close()


def _train(setup: Setup, workdir, checkpointer, num_steps: int) -> RunResult:
  config = setup.config
  if setup.online is not None:     # frozen tokenizer / text encoder: checked and placed first
    setup.online.load(setup.mesh, setup.rules, setup.batch_shardings)
  frozen = setup.load_frozen()     # frozen loss networks (LPIPS): weight files checked here
  sampler = setup.make_sampler()   # sample grids: tokenizer, text encoder, prompts checked here
  compiled = setup.lower_train_step().compile()
  logging.info("train step compiled for mesh %s; %s", dict(setup.mesh.shape),
               memory_report(compiled))

  source = setup.task.make_source()
  skips = preprocess.SkipCounter(repr(source), give_up_after=min(len(source), 10_000))
  data_iter = pipeline.make_iterator(source, setup.global_batch, config.data.seed,
                                     transform=setup.task.make_transform(skips), counter=skips,
                                     num_threads=config.data.num_threads)
  evaluate = setup.task.evaluate
  eval_every = int(config.train.get("eval_every", 0)) if evaluate is not None else 0
  if eval_every:       # one fixed batch (each host its rows), the same on every resume
    eval_batch = pipeline.to_global_batch(next(pipeline.make_iterator(
        source, setup.global_batch, config.data.seed + 1, transform=setup.task.make_transform(
            preprocess.SkipCounter(repr(source), min(len(source), 10_000))), num_threads=1)),
        setup.host_shardings)

  base_rng = jax.random.key(config.seed)
  start = checkpointer.latest_step()
  if start is None:
    state = jax.device_put(setup.task.load_init(setup.init_state(base_rng)),
                           setup.state_shardings)
    start = 0
  else:
    abstract = ckpt_lib.abstract_with_shardings(setup.abstract_state, setup.state_shardings)
    state, data_iter = checkpointer.restore(start, abstract, data_iter)
  logging.info("stage %s: %d parameters, start step %d of %d", config.stage,
               sum(x.size for x in jax.tree.leaves(state.params)), start, num_steps)

  logger = MetricsLogger(workdir, setup, skips, checkpointer, start)
  preemption = _Preemption()
  config_json = config.to_json_best_effort()
  sample_every = int(config.train.get("sample_every", 0))
  last_saved, preempted = start, False
  try:
    for step in range(start + 1, num_steps + 1):      # `step`: the step count after this one
      batch = pipeline.to_global_batch(next(data_iter), setup.host_shardings)
      if setup.online is not None:
        batch = setup.online(batch)
      state, metrics = compiled(state, batch, base_rng, frozen)
      logger.step_dispatched(step, metrics)
      if eval_every and (step % eval_every == 0 or step == num_steps):
        # On every process (sharded params, one program over the mesh); process 0 writes.
        with setup.context():
          scores = evaluate(state, eval_batch, workdir, step, write=logger.is_main)
        if logger.is_main:
          logger.scalars(step, scores, "eval/")
          logging.info("eval at step %d: %s", step, scores)
      if sampler is not None and sample_due(step, sample_every, num_steps):
        write_samples(sampler, state.params, step, workdir, logger.writer, logger.file)
      preempted = preemption.reached(step, checkpointer.manager)
      if preempted or checkpointer.should_save(step) or step == num_steps:
        logger.flush()
        checkpointer.save(step, state, data_iter, config_json)
        last_saved = step
      if preempted:
        logging.warning("preemption requested: saved step %d, exiting", step)
        break
    logger.flush()
  finally:
    logger.close()
    preemption.restore()
  return RunResult(start_step=start, final_step=last_saved, preempted=preempted)
