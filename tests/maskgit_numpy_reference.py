"""MaskGIT's VQGAN tokenizer in numpy, written from its description, for parity tests only.

MaskGIT (maskgit/nets/vqgan_tokenizer.py, config `vqvae`: filters, channel_multipliers,
num_res_blocks, embedding_dim, codebook_size; GroupNorm(32 groups, eps 1e-6), swish, avg-pool
downsampling) stores auto-named Flax linen parameters:

  encoder: Conv_0 3x3 no bias; per level num_res_blocks ResBlocks, then a 2x2 average pool between
           levels; num_res_blocks more ResBlocks; GroupNorm_0, swish, Conv_1 1x1 -> embedding_dim
  decoder: Conv_0 3x3 -> filters * mult[-1]; num_res_blocks ResBlocks; for levels L-1..0:
           num_res_blocks ResBlocks, then (level > 0) nearest 2x upsample and a 3x3 conv;
           GroupNorm_0, swish, 3x3 conv -> 3
  ResBlock(filters): GroupNorm_0, swish, Conv_0 3x3 no bias, GroupNorm_1, swish, Conv_1 3x3 no
           bias; when the input width differs from filters, Conv_2 1x1 no bias is applied to the
           block's *output* and that is the residual
  quantizer: codebook [K, D]; ids = argmin squared distance

Inputs are images in [0, 1], NHWC. Nothing here imports muse_jax.
"""
import numpy as np


def random_tree(rng, filters, channel_multipliers, num_res_blocks, embedding_dim, codebook_size):
  """MaskGIT's exact parameter tree ('params' collection) with random float32 weights."""
  def conv(k, cin, cout, bias):
    p = {"kernel": (rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin))
         .astype(np.float32)}
    if bias:
      p["bias"] = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    return p

  def norm(c):
    return {"scale": (1 + 0.1 * rng.standard_normal(c)).astype(np.float32),
            "bias": (0.1 * rng.standard_normal(c)).astype(np.float32)}

  def resblock(cin, cout):
    p = {"GroupNorm_0": norm(cin), "Conv_0": conv(3, cin, cout, False),
         "GroupNorm_1": norm(cout), "Conv_1": conv(3, cout, cout, False)}
    if cin != cout:
      p["Conv_2"] = conv(1, cout, cout, False)  # applied to the output: cout -> cout
    return p

  chans = [filters * m for m in channel_multipliers]
  enc, blocks, c = {"Conv_0": conv(3, 3, filters, False)}, [], filters
  for ch in chans:
    for _ in range(num_res_blocks):
      blocks.append(resblock(c, ch))
      c = ch
  for _ in range(num_res_blocks):
    blocks.append(resblock(c, c))
  enc.update({f"ResBlock_{i}": b for i, b in enumerate(blocks)})
  enc["GroupNorm_0"] = norm(c)
  enc["Conv_1"] = conv(1, c, embedding_dim, True)

  c = chans[-1]
  dec, blocks, convs = {}, [], [conv(3, embedding_dim, c, True)]
  for _ in range(num_res_blocks):
    blocks.append(resblock(c, c))
  for level in reversed(range(len(chans))):
    for _ in range(num_res_blocks):
      blocks.append(resblock(c, chans[level]))
      c = chans[level]
    if level > 0:
      convs.append(conv(3, c, c, True))
  convs.append(conv(3, c, 3, True))
  dec.update({f"Conv_{i}": p for i, p in enumerate(convs)})
  dec.update({f"ResBlock_{i}": b for i, b in enumerate(blocks)})
  dec["GroupNorm_0"] = norm(c)
  codebook = rng.standard_normal((codebook_size, embedding_dim)).astype(np.float32)
  return {"encoder": enc, "decoder": dec, "quantizer": {"codebook": codebook}}


def conv2d(x, p):
  """SAME-padded stride-1 conv, NHWC x HWIO (+ bias)."""
  k = p["kernel"].astype(np.float64)
  kh, kw = k.shape[:2]
  b, h, w, _ = x.shape
  xp = np.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
  out = np.zeros((b, h, w, k.shape[3]))
  for dy in range(kh):
    for dx in range(kw):
      out += xp[:, dy:dy + h, dx:dx + w, :] @ k[dy, dx]
  return out + p["bias"] if "bias" in p else out


def group_norm(x, p, groups=32, eps=1e-6):
  b, h, w, c = x.shape
  g = x.reshape(b, h, w, groups, c // groups)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = g.var(axis=(1, 2, 4), keepdims=True)
  return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * p["scale"] + p["bias"]


def swish(x):
  return x / (1 + np.exp(-x))


def resblock(x, p, filters):
  h = conv2d(swish(group_norm(x, p["GroupNorm_0"])), p["Conv_0"])
  h = conv2d(swish(group_norm(h, p["GroupNorm_1"])), p["Conv_1"])
  residual = x if x.shape[-1] == filters else conv2d(h, p["Conv_2"])
  return h + residual


def avg_pool2(x):
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def upsample2(x):
  return x.repeat(2, axis=1).repeat(2, axis=2)


def encode_latents(tree, img, filters, channel_multipliers, num_res_blocks):
  p = tree["encoder"]
  x = conv2d(img.astype(np.float64), p["Conv_0"])
  k = 0
  for level, m in enumerate(channel_multipliers):
    for _ in range(num_res_blocks):
      x = resblock(x, p[f"ResBlock_{k}"], filters * m)
      k += 1
    if level < len(channel_multipliers) - 1:
      x = avg_pool2(x)
  for _ in range(num_res_blocks):
    x = resblock(x, p[f"ResBlock_{k}"], x.shape[-1])
    k += 1
  return conv2d(swish(group_norm(x, p["GroupNorm_0"])), p["Conv_1"])


def quantize(tree, z):
  e = tree["quantizer"]["codebook"].astype(np.float64)
  d = (z ** 2).sum(-1, keepdims=True) - 2 * z @ e.T + (e ** 2).sum(-1)
  return d.argmin(-1)


def decode_ids(tree, ids, filters, channel_multipliers, num_res_blocks):
  p = tree["decoder"]
  x = conv2d(tree["quantizer"]["codebook"].astype(np.float64)[ids], p["Conv_0"])
  k, conv = 0, 1
  for _ in range(num_res_blocks):
    x = resblock(x, p[f"ResBlock_{k}"], x.shape[-1])
    k += 1
  for level in reversed(range(len(channel_multipliers))):
    for _ in range(num_res_blocks):
      x = resblock(x, p[f"ResBlock_{k}"], filters * channel_multipliers[level])
      k += 1
    if level > 0:
      x = conv2d(upsample2(x), p[f"Conv_{conv}"])
      conv += 1
  return conv2d(swish(group_norm(x, p["GroupNorm_0"])), p[f"Conv_{conv}"])
