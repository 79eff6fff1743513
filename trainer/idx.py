"""Reading and validating MNIST-format IDX files (gzip'd or not).

Pure numpy, no TensorFlow, so the checks run (and are tested) cheaply before any Beam
work starts. Every failure raises `IdxError` naming the file and saying what was expected
and what was found.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
IMAGE_ROWS = 28
IMAGE_COLS = 28
NUM_CLASSES = 10

# The canonical file stems of each source file; `.gz` is optional.
SOURCE_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
GZIP_MAGIC = b'\x1f\x8b'


class IdxError(ValueError):
  """A data file is missing, malformed, or inconsistent with its partner."""


class LabeledImages(NamedTuple):
  images: np.ndarray  # uint8 [n, 28, 28]
  labels: np.ndarray  # uint8 [n]


def find_file(data_dir: Path, stem: str) -> Path:
  """Returns `<data_dir>/<stem>` or `<stem>.gz`, whichever exists."""
  data_dir = Path(data_dir)
  if not data_dir.is_dir():
    raise IdxError(f'{data_dir}: data folder not found (expected a folder holding the '
                   f'four MNIST IDX files, e.g. {stem}.gz)')
  for name in (stem, stem + '.gz'):
    if (data_dir / name).is_file():
      return data_dir / name
  raise IdxError(f'{data_dir}: expected {stem} or {stem}.gz, found neither '
                 f'(folder holds: {", ".join(sorted(p.name for p in data_dir.iterdir())) or "nothing"})')


def _read_bytes(path: Path) -> bytes:
  raw = path.read_bytes()
  if raw[:2] == GZIP_MAGIC:
    try:
      return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
      raise IdxError(f'{path}: gzip data is corrupt or truncated ({e})') from None
  if path.suffix == '.gz':
    raise IdxError(f'{path}: expected gzip data (magic 1f8b), found bytes {raw[:2].hex() or "none"}')
  return raw


def read_idx(path: Path, expected_magic: int, expected_ndim: int) -> np.ndarray:
  """Parses one IDX file of unsigned bytes into an array of its declared shape."""
  path = Path(path)
  data = _read_bytes(path)
  if len(data) < 4:
    raise IdxError(f'{path}: expected an IDX header of at least 4 bytes, found {len(data)}')
  magic = int.from_bytes(data[:4], 'big')
  if magic != expected_magic:
    raise IdxError(f'{path}: expected IDX magic number {expected_magic}, found {magic} '
                   f'(not an MNIST-format file of this kind)')
  header_len = 4 + 4 * expected_ndim
  if len(data) < header_len:
    raise IdxError(f'{path}: expected a {header_len}-byte header, found {len(data)} bytes')
  dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(expected_ndim))
  expected_len = header_len + int(np.prod(dims))
  if len(data) != expected_len:
    what = 'truncated' if len(data) < expected_len else 'has trailing bytes'
    raise IdxError(f'{path}: {what}: header declares shape {dims}, so expected '
                   f'{expected_len} bytes, found {len(data)}')
  return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def read_images(path: Path) -> np.ndarray:
  images = read_idx(path, IMAGES_MAGIC, 3)
  if images.shape[1:] != (IMAGE_ROWS, IMAGE_COLS):
    raise IdxError(f'{path}: expected {IMAGE_ROWS}x{IMAGE_COLS} images, found '
                   f'{images.shape[1]}x{images.shape[2]}')
  return images


def read_labels(path: Path) -> np.ndarray:
  labels = read_idx(path, LABELS_MAGIC, 1)
  if labels.size and labels.max() >= NUM_CLASSES:
    bad = int(np.argmax(labels >= NUM_CLASSES))
    raise IdxError(f'{path}: expected labels 0-{NUM_CLASSES - 1}, found {labels[bad]} '
                   f'at index {bad}')
  return labels


def load_source(data_dir: Path, source: str, limit: int = 0) -> LabeledImages:
  """Reads the `train` or `test` pair of files, checks they agree, keeps the first `limit`."""
  images_stem, labels_stem = SOURCE_FILES[source]
  images_path = find_file(data_dir, images_stem)
  labels_path = find_file(data_dir, labels_stem)
  images = read_images(images_path)
  labels = read_labels(labels_path)
  if len(images) != len(labels):
    raise IdxError(f'{images_path}: holds {len(images)} images but {labels_path.name} holds '
                   f'{len(labels)} labels (expected equal counts)')
  if len(images) == 0:
    raise IdxError(f'{images_path}: expected at least one image, found none')
  if limit:
    images, labels = images[:limit], labels[:limit]
  return LabeledImages(images, labels)


def eval_indices(num_examples: int, eval_size: int, seed: int) -> np.ndarray:
  """The training-file rows held out for `eval`: a seeded, hence repeatable, sample."""
  if eval_size >= num_examples:
    raise IdxError(f'eval_size {eval_size} must be smaller than the {num_examples} '
                   f'training images read')
  rng = np.random.default_rng(seed)
  return np.sort(rng.permutation(num_examples)[:eval_size])


def write_idx(path: Path, array: np.ndarray) -> None:
  """Writes uint8 images [n, rows, cols] or labels [n] in IDX format (gzip'd for `.gz`)."""
  array = np.asarray(array, dtype=np.uint8)
  magic = {3: IMAGES_MAGIC, 1: LABELS_MAGIC}[array.ndim]
  header = magic.to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in array.shape)
  payload = header + array.tobytes()
  path = Path(path)
  path.write_bytes(gzip.compress(payload, mtime=0) if path.suffix == '.gz' else payload)
