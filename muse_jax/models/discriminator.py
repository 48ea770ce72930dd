"""StyleGAN-style residual discriminator: img_BxHxWx3 -> logits_B (float32)."""
import math

import flax.linen as nn
import jax.numpy as jnp

from muse_jax.parallel import axes


def _conv(features, kernel, use_bias=True, name=None):
  return nn.Conv(features, (kernel, kernel), padding="SAME", use_bias=use_bias,
                 param_dtype=jnp.float32,
                 kernel_init=nn.with_logical_partitioning(
                     nn.initializers.variance_scaling(1.0, "fan_in", "normal"),
                     (None, None, axes.CONV_IN, axes.CONV_OUT)),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes.CONV_OUT,)),
                 name=name)


class DownBlock(nn.Module):
  """conv-lrelu-conv-lrelu-avgpool with a 1x1 avgpooled skip, scaled by 1/sqrt(2)."""
  features: int

  @nn.compact
  def __call__(self, x):
    h = nn.leaky_relu(_conv(x.shape[-1], 3, name="conv1")(x), 0.2)
    h = nn.leaky_relu(_conv(self.features, 3, name="conv2")(h), 0.2)
    h = nn.avg_pool(h, (2, 2), (2, 2))
    skip = _conv(self.features, 1, use_bias=False, name="skip")(nn.avg_pool(x, (2, 2), (2, 2)))
    return (h + skip) / math.sqrt(2.0)


class Discriminator(nn.Module):
  """channels: per resolution level (each halves the image); the final 4x4-ish map is flattened
  into a 2-layer MLP head."""
  channels: tuple = (64, 128, 256, 256)

  @nn.compact
  def __call__(self, img):
    x = nn.leaky_relu(_conv(self.channels[0], 3, name="conv_in")(img.astype(jnp.float32)), 0.2)
    for i, ch in enumerate(self.channels):
      x = DownBlock(ch, name=f"block_{i}")(x)
    x = nn.leaky_relu(_conv(self.channels[-1], 3, name="conv_out")(x), 0.2)
    x = x.reshape(x.shape[0], -1)
    dense = lambda f, n: nn.Dense(f, param_dtype=jnp.float32, name=n,  # noqa: E731
                                  kernel_init=nn.with_logical_partitioning(
                                      nn.initializers.variance_scaling(1.0, "fan_in", "normal"),
                                      (None, None)),
                                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                                         (None,)))
    x = nn.leaky_relu(dense(self.channels[-1], "fc")(x), 0.2)
    return dense(1, "logits")(x)[:, 0]
