"""Image preprocessing of the CLIP recipe, in numpy + PIL (runs in loader workers).

Train: RandomResizedCrop(res, scale=constants.RRC_SCALE, ratio 3/4..4/3,
bicubic), as MetaCLIP/OpenCLIP. Eval: resize the short side to res (bicubic)
and center-crop, as OpenAI CLIP. Both stay uint8: the OpenAI mean/std
normalisation runs on the device (models/vit.py normalize_uint8).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from mode_jax import constants

RRC_RATIO = constants.RRC_RATIO


def rrc_box(h: int, w: int, rng: np.random.Generator, scale=constants.RRC_SCALE,
            ratio=RRC_RATIO) -> tuple[int, int, int, int]:
  """(top, left, height, width) of a random crop, torchvision's algorithm.

  Ten tries at an area fraction ~ U(scale) and log-uniform aspect ratio; if none
  fits, the central crop with the aspect ratio clamped to `ratio`.
  """
  area = h * w
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  for _ in range(10):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_lo, log_hi))
    cw = int(round(math.sqrt(target * aspect)))
    ch = int(round(math.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
  in_ratio = w / h
  if in_ratio < ratio[0]:
    cw, ch = w, int(round(w / ratio[0]))
  elif in_ratio > ratio[1]:
    ch, cw = h, int(round(h * ratio[1]))
  else:
    cw, ch = w, h
  return (h - ch) // 2, (w - cw) // 2, ch, cw


def random_resized_crop(image: np.ndarray, res: int, rng: np.random.Generator,
                        scale=constants.RRC_SCALE) -> np.ndarray:
  """uint8 [H, W, 3] -> uint8 [res, res, 3]: crop by `rrc_box`, bicubic resize."""
  top, left, ch, cw = rrc_box(image.shape[0], image.shape[1], rng, scale)
  im = Image.fromarray(image)
  return np.asarray(im.resize((res, res), Image.BICUBIC,
                              box=(left, top, left + cw, top + ch)))


def resize_center_crop(image: np.ndarray, res: int) -> np.ndarray:
  """uint8 [H, W, 3] -> uint8 [res, res, 3]: short side to res (bicubic), center crop."""
  h, w = image.shape[:2]
  # torchvision Resize(int): the long side is truncated, not rounded.
  nh, nw = (res, int(res * w / h)) if h <= w else (int(res * h / w), res)
  im = Image.fromarray(image)
  if (nh, nw) != (h, w):
    im = im.resize((nw, nh), Image.BICUBIC)
  top, left = int(round((nh - res) / 2)), int(round((nw - res) / 2))
  return np.asarray(im.crop((left, top, left + res, top + res)))

