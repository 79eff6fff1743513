"""Turn any photo or scan of a digit into a 28x28 MNIST-style image.

MNIST digits are white on black, size-normalized to fit a 20x20 box (aspect kept) and
placed in a 28x28 field with their centre of mass at the centre. A digit prepared any
other way (dark on light, off-centre, large) is out of the training distribution.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SIZE = 28
BOX = 20


def _flatten_alpha(image: Image.Image) -> Image.Image:
  """Transparent pixels become white paper, not black ink."""
  if image.mode in ('RGBA', 'LA') or 'transparency' in image.info:
    rgba = image.convert('RGBA')
    paper = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(paper, rgba)
  return image


def to_mnist(image: Image.Image) -> np.ndarray:
  """uint8 [28, 28]: grayscale, light background inverted, cropped, 20px box, centred by mass."""
  gray = np.asarray(_flatten_alpha(image).convert('L'), dtype=np.float32)
  border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
  if border.mean() > 127:                     # dark ink on light paper: make it MNIST's way
    gray = 255.0 - gray
    border = 255.0 - border
  gray = np.clip(gray - np.median(border), 0, None)   # background to exactly zero
  if gray.max() <= 0:
    return np.zeros((SIZE, SIZE), np.uint8)
  rows, cols = np.nonzero(gray > 0.1 * gray.max())
  crop = gray[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
  scale = BOX / max(crop.shape)
  height, width = (max(1, round(d * scale)) for d in crop.shape)
  digit = np.asarray(Image.fromarray(crop, mode='F').resize((width, height), Image.LANCZOS))
  digit = np.clip(digit, 0, None)
  digit *= 255.0 / max(digit.max(), 1e-6)
  total = digit.sum()
  cy, cx = (np.indices(digit.shape) * digit).reshape(2, -1).sum(axis=1) / total
  top = int(np.clip(round(SIZE / 2 - cy), 0, SIZE - height))
  left = int(np.clip(round(SIZE / 2 - cx), 0, SIZE - width))
  canvas = np.zeros((SIZE, SIZE), np.float32)
  canvas[top:top + height, left:left + width] = digit
  return np.clip(np.round(canvas), 0, 255).astype(np.uint8)


def load(path: str) -> np.ndarray:
  """Reads a PNG/JPEG (any size) as an MNIST-style uint8 [28, 28] image."""
  with Image.open(path) as image:
    return to_mnist(image)
