"""Stage `vqgan`: tokenizer training (tasks/decoder_finetune.py subclasses it for a wider
decoder on a frozen encoder and codebook).

Generator loss: reconstruction (L1 or L2) + VQ (commitment, codebook[, entropy]) + perceptual
(LPIPS-VGG of reconstruction and input, from loss.perceptual_weight > 0) + adversarial
(non-saturating, on from loss.adv_start_step). Discriminator: non-saturating loss + R1 penalty
+ optional LeCam regulariser; it is run and trained only from loss.adv_start_step on (before,
a step costs the autoencoder alone). The generator's EMA is kept in the state. The generator and
discriminator states are one pytree: TrainState(params, opt_state, extra={disc_params,
disc_opt_state, ema_params, lecam_real, lecam_fake}). The perceptual loss network is frozen and
not part of the state: its params (models/lpips.py, read from loss.perceptual_vgg_weights and
loss.perceptual_lin_weights) are the train step's explicit `frozen` argument (train/loop.py).
"""
import dataclasses
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import PIL.Image
from etils import epath
from jax.experimental import multihost_utils

from muse_jax.data import preprocess, sources
from muse_jax.metrics import recon
from muse_jax.models import lpips
from muse_jax.models.discriminator import Discriminator
from muse_jax.models.vqgan import VQGAN, VQGANConfig
from muse_jax.parallel import axes
from muse_jax.tasks import api
from muse_jax.train import optimizers
from muse_jax.train.state import TrainState

@dataclasses.dataclass(frozen=True)
class LossConfig:
  reconstruction: str = "l1"
  reconstruction_weight: float = 1.0
  adversarial_weight: float = 0.1
  adv_start_step: int = 0
  r1_gamma: float = 10.0
  lecam_weight: float = 0.0
  lecam_decay: float = 0.99
  ema_decay: float = 0.999
  perceptual_weight: float = 0.0
  perceptual_vgg_weights: str = ""
  perceptual_lin_weights: str = ""

  def __post_init__(self):
    if self.reconstruction not in ("l1", "l2"):
      raise ValueError(f"loss.reconstruction={self.reconstruction!r}; expected 'l1' or 'l2'")
    if self.perceptual_weight < 0:
      raise ValueError(f"loss.perceptual_weight={self.perceptual_weight} is negative; 0 turns the "
                       f"perceptual loss off")


def model_config(model: dict) -> VQGANConfig:
  """VQGANConfig from a config's `model` section (a dict, e.g. as saved in a checkpoint)."""
  model = dict(model)
  for key in ("channel_mult", "decoder_channel_mult", "pixel_range", "fsq_levels"):
    if model.get(key) is not None:
      model[key] = tuple(model[key])
  return VQGANConfig(**model)


def _to_unit(img, pixel_range):
  lo, hi = pixel_range
  return jnp.clip((img - lo) / (hi - lo), 0.0, 1.0)


def _to_signed(img, pixel_range):
  """pixel_range -> [-1, 1], without clipping (gradients pass everywhere)."""
  lo, hi = pixel_range
  return (img - lo) * (2.0 / (hi - lo)) - 1.0


class VQGANTask(api.Task):
  """The tokenizer stage: generator (autoencoder + quantizer) and discriminator in one state."""

  progress_metrics = ("psnr", "codebook_usage")

  def __init__(self, config):
    super().__init__(config)
    self.model_cfg = model_config(config.model.to_dict())
    self.loss_cfg = LossConfig(**config.loss.to_dict())
    self.model = VQGAN(self.model_cfg)
    self.disc = Discriminator(tuple(config.discriminator.channels))
    self.disc_tx, _ = optimizers.make_optimizer(config.disc_optim, config.train.num_steps)
    self.resolution = int(config.data.resolution)
    if self.resolution % self.model_cfg.factor:
      raise ValueError(f"data.resolution={self.resolution} is not divisible by the tokenizer's "
                       f"downsampling factor {self.model_cfg.factor}")
    self.perceptual = (lpips.LPIPS(dtype=self.model_cfg.compute_dtype)
                       if self.loss_cfg.perceptual_weight > 0 else None)

  # Shapes and init ----------------------------------------------------------------------------
  def batch_spec(self, batch_size):
    r = self.resolution
    return {"image": (jax.ShapeDtypeStruct((batch_size, r, r, 3), jnp.float32),
                      (axes.BATCH, None, None, None))}

  def _dummy(self):
    return jnp.zeros((1, self.resolution, self.resolution, 3), jnp.float32)

  def init_params(self, rng):
    return self.model.init(rng, self._dummy())["params"]

  def init_disc(self, rng):
    return self.disc.init(rng, self._dummy())["params"]

  def init_boxed(self, rng):
    g, d = jax.random.split(rng)
    return self.init_params(g), self.init_disc(d)

  def generator_tx(self, tx):
    """The generator's optimizer (decoder finetuning freezes part of it)."""
    return tx

  def frozen_abstract(self):
    """Shapes of the frozen networks the train step reads ({"lpips": ...}), None without any."""
    if self.perceptual is None:
      return None
    return {"lpips": lpips.abstract_params()}

  def load_frozen(self):
    """{"lpips": params} from the weight files named in config.loss (frozen_abstract's
    structure); a clear error naming the config field when a file is missing or wrong."""
    if self.perceptual is None:
      return None
    lc = self.loss_cfg
    off = "or set loss.perceptual_weight=0 to train without the perceptual loss"
    for field, source in (("perceptual_vgg_weights", lpips.VGG_SOURCE),
                          ("perceptual_lin_weights", lpips.LIN_SOURCE)):
      path = getattr(lc, field)
      if not path or not os.path.isfile(path):
        what = f"{path!r} is not a file" if path else "is not set"
        raise FileNotFoundError(
            f"loss.perceptual_weight={lc.perceptual_weight} needs the frozen LPIPS-VGG network, "
            f"but loss.{field} {what}: set it to {source} (or its .safetensors conversion, "
            f"`python -m muse_jax.models.lpips IN.pth OUT.safetensors`), {off}")
    try:
      return {"lpips": lpips.load_params(lc.perceptual_vgg_weights, lc.perceptual_lin_weights)}
    except (ValueError, ImportError) as e:
      raise type(e)(f"loss.perceptual_vgg_weights={lc.perceptual_vgg_weights!r} / "
                    f"loss.perceptual_lin_weights={lc.perceptual_lin_weights!r}: {e}; {off}") from e

  def init_state(self, rng, tx):
    g_rng, d_rng = jax.random.split(rng)
    params = nn.unbox(self.init_params(g_rng))
    disc_params = nn.unbox(self.init_disc(d_rng))
    extra = {"disc_params": disc_params, "disc_opt_state": self.disc_tx.init(disc_params),
             "ema_params": params, "lecam_real": jnp.zeros(()), "lecam_fake": jnp.zeros(())}
    return TrainState.create(params, self.generator_tx(tx), extra=extra)

  # Steps --------------------------------------------------------------------------------------
  def _reconstruct(self, params, img):
    """(reconstruction, ids, vq losses) of `img` as the generator's loss sees them."""
    return self.model.apply({"params": params}, img)

  def train_step(self, state, batch, rng, tx, frozen=None):
    """frozen: {"lpips": params} when loss.perceptual_weight > 0 (Setup.load_frozen)."""
    lc = self.loss_cfg
    del rng  # the stage is deterministic given the batch
    if self.perceptual is not None and frozen is None:
      raise ValueError("loss.perceptual_weight > 0: the train step needs the frozen LPIPS params "
                       "as `frozen` (train.loop.Setup.load_frozen)")
    img = batch["image"]
    # With adversarial_weight 0 the discriminator never runs (the demo preset).
    adv_on = (state.step >= lc.adv_start_step) & (lc.adversarial_weight > 0)
    disc_params = state.extra["disc_params"]

    # Before adv_start_step the discriminator is neither run nor trained: lax.cond executes only
    # the taken branch, so the early steps cost the autoencoder alone.
    def g_adv_term(rec):
      return jnp.mean(jax.nn.softplus(-self.disc.apply({"params": disc_params}, rec)))

    def gen_loss(params):
      rec, ids, vq = self._reconstruct(params, img)
      err = rec - img
      rec_loss = jnp.mean(jnp.abs(err)) if lc.reconstruction == "l1" else jnp.mean(err ** 2)
      g_adv = jax.lax.cond(adv_on, g_adv_term, lambda r: jnp.zeros((), jnp.float32), rec)
      loss = lc.reconstruction_weight * rec_loss + vq["vq_loss"] + lc.adversarial_weight * g_adv
      aux = dict(vq, rec_loss=rec_loss, g_adv=g_adv)
      if self.perceptual is not None:
        pr = self.model_cfg.pixel_range
        perceptual = jnp.mean(self.perceptual.apply(
            {"params": frozen["lpips"]}, _to_signed(rec, pr), _to_signed(img, pr)))
        loss = loss + lc.perceptual_weight * perceptual
        aux["perceptual_loss"] = perceptual
      return loss, (rec, ids, aux)

    (loss, (rec, ids, aux)), grads = jax.value_and_grad(gen_loss, has_aux=True)(state.params)
    g_tx = self.generator_tx(tx)
    updates, opt_state = g_tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    rec_sg = jax.lax.stop_gradient(rec)

    def disc_loss(dp):
      real = self.disc.apply({"params": dp}, img)
      fake = self.disc.apply({"params": dp}, rec_sg)
      loss = jnp.mean(jax.nn.softplus(-real)) + jnp.mean(jax.nn.softplus(fake))
      lecam = jnp.mean(jax.nn.relu(real - state.extra["lecam_fake"]) ** 2) + jnp.mean(
          jax.nn.relu(state.extra["lecam_real"] - fake) ** 2)
      r1_grads = jax.grad(lambda x: jnp.sum(self.disc.apply({"params": dp}, x)))(img)
      r1 = jnp.mean(jnp.sum(r1_grads ** 2, axis=(1, 2, 3)))
      total = loss + lc.lecam_weight * lecam + 0.5 * lc.r1_gamma * r1
      return total, (real.mean(), fake.mean(), r1, loss)

    def disc_update(_):
      (_, stats), d_grads = jax.value_and_grad(disc_loss, has_aux=True)(disc_params)
      d_updates, d_opt = self.disc_tx.update(d_grads, state.extra["disc_opt_state"], disc_params)
      return optax.apply_updates(disc_params, d_updates), d_opt, stats

    def disc_skip(_):
      zero = jnp.zeros((), jnp.float32)
      return disc_params, state.extra["disc_opt_state"], (zero, zero, zero, zero)

    new_disc, d_opt, (real, fake, r1, d_loss) = jax.lax.cond(adv_on, disc_update, disc_skip, None)
    lecam = lambda ema, x: jnp.where(  # noqa: E731
        adv_on, lc.lecam_decay * ema + (1 - lc.lecam_decay) * x, ema)
    decay = lc.ema_decay
    extra = {
        "disc_params": new_disc,
        "disc_opt_state": d_opt,
        "ema_params": jax.tree.map(lambda e, p: decay * e + (1 - decay) * p,
                                   state.extra["ema_params"], params),
        "lecam_real": lecam(state.extra["lecam_real"], real),
        "lecam_fake": lecam(state.extra["lecam_fake"], fake),
    }
    pr = self.model_cfg.pixel_range
    metrics = {
        "loss": loss, "grad_norm": optax.tree.norm(grads), "disc_loss": d_loss, "r1": r1,
        "logits_real": real, "logits_fake": fake,
        "psnr": recon.psnr(_to_unit(rec_sg, pr), _to_unit(img, pr)).mean(),
        **{k: v for k, v in aux.items()},
    }
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              extra=extra)
    return new_state, metrics

  # Evaluation ---------------------------------------------------------------------------------
  @functools.partial(jax.jit, static_argnums=0)
  def _eval(self, params, img):
    rec, ids, vq = self.model.apply({"params": params}, img)
    pr = self.model_cfg.pixel_range
    a, b = _to_unit(rec, pr), _to_unit(img, pr)
    return a, ids, {"psnr": recon.psnr(a, b).mean(), "ssim": recon.ssim(a, b).mean(),
                    "codebook_usage": vq["codebook_usage"]}

  def evaluate(self, state, batch, workdir, step, write: bool):
    """Reconstructs `batch` with the EMA generator: PSNR, SSIM, codebook usage, and (write) a PNG
    grid (top row inputs, bottom row reconstructions) at workdir/samples/recon_STEP.png. Runs on
    every process: params and batch stay sharded as the step holds them (one program over the
    mesh), and the images and ids are gathered to each host for the grid and the usage count."""
    rec, ids, m = self._eval(state.extra["ema_params"], batch["image"])
    gather = lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True))
    rec, ids, img = gather(rec), gather(ids), gather(batch["image"])
    if write:
      top = np.asarray(_to_unit(img, self.model_cfg.pixel_range))
      grid = np.concatenate([np.concatenate(list(top), 1), np.concatenate(list(rec), 1)], 0)
      out = epath.Path(workdir) / "samples"
      out.mkdir(parents=True, exist_ok=True)
      with (out / f"recon_{step:08d}.png").open("wb") as f:
        PIL.Image.fromarray((grid * 255).round().astype(np.uint8)).save(f, "PNG")
    usage = len(np.unique(ids)) / self.model_cfg.codebook_size
    return {"eval_psnr": float(m["psnr"]), "eval_ssim": float(m["ssim"]),
            "eval_codebook_usage": usage}

  # Data ---------------------------------------------------------------------------------------
  def make_source(self):
    return sources.image_text_source(self.config.data)

  def make_transform(self, counter):
    d = self.config.data
    cfg = preprocess.ImageConfig(resolution=self.resolution, crop=d.crop, flip=d.flip,
                                 value_range=self.model_cfg.pixel_range)
    return preprocess.ImageTextProcessor(cfg, None, counter)
