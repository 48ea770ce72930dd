"""CLIP score of generated images against their prompts (Muse Table 1 / Fig. 8: 0.32 for 3B on
COCO): the mean over pairs of max(cos(image embedding, text embedding), 0), the cosine
torchmetrics' CLIPScore reports x100.

  scorer = CLIPScorer("/ckpt/clip-vit-large-patch14")     # a Hugging Face CLIPModel folder
  scorer.scores(images_BxHxWx3, prompts)                    # [B] float, images in [0, 1]

Embeddings come from muse_jax/models/clip.py (parity with transformers' CLIPModel in
tests/test_clip.py); batches are padded to `batch_size` rows so each encoder compiles once.
"""
import jax
import numpy as np

from muse_jax.models import clip


class CLIPScorer:
  """A loaded CLIP on the default device with jitted image and text encoders."""

  def __init__(self, path: str, batch_size: int = 16):
    self.cfg, params, self.tokenizer = clip.load(path)
    self.batch_size = int(batch_size)
    self.params = jax.device_put(jax.tree.map(np.asarray, params))
    model, size = clip.CLIP(self.cfg), self.cfg.vision.image_size
    self._image = jax.jit(lambda p, x: model.apply(
        {"params": p}, clip.preprocess_images(x, size), method=model.encode_image))
    self._text = jax.jit(lambda p, ids, mask: model.apply(
        {"params": p}, ids, mask, method=model.encode_text))

  def _batched(self, fn, *arrays):
    """fn over `batch_size`-row chunks (the last one padded by repeating its final row)."""
    n, out = len(arrays[0]), []
    for i in range(0, n, self.batch_size):
      chunk = [a[i:i + self.batch_size] for a in arrays]
      pad = self.batch_size - len(chunk[0])
      chunk = [np.concatenate([c, np.repeat(c[-1:], pad, 0)]) for c in chunk]
      out.append(np.asarray(fn(self.params, *chunk))[:self.batch_size - pad])
    return np.concatenate(out)

  def scores(self, images_BxHxWx3, prompts) -> np.ndarray:
    """Per-pair CLIP score, [B] float32: image b against prompts[b]."""
    images = np.asarray(images_BxHxWx3, np.float32)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(prompts):
      raise ValueError(f"CLIP score takes B images [B, H, W, 3] and B prompts, got images "
                       f"{images.shape} and {len(prompts)} prompts")
    ids, mask = self.tokenizer(list(prompts))
    image_emb = self._batched(self._image, images)
    text_emb = self._batched(self._text, ids, mask)
    return np.asarray(clip.clip_score(image_emb, text_emb), np.float32)
