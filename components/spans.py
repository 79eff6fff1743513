"""Sealing new data into numbered spans, and reading a sealed span back as MNIST arrays.

A span holds either the training IDX pair or label folders `0/`..`9/` of PNG/JPEG images
of any size and colour, converted the MNIST way by `trainer.mnist_image.to_mnist` (the
one definition, shared with the serving client). The layout and the sealing rule are in
`trainer.data_layout`; docs/continuous-training.md explains them for users.

Sealing stages the content under `spans/.sealing-<uuid>` (one atomic rename for
`incoming/`, a copy for `seal_folder`), checks it, writes `manifest.json`, and renames the
staging folder to `spans/<N>`. One sealer runs at a time (an flock); a `.sealing-*`
folder found by the next seal is a killed seal's complete content and is sealed then.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image

from trainer import data_layout, idx, mnist_image
from trainer.data_layout import PathLike

Problem = Tuple[str, str]  # (path relative to the span folder, what is wrong with it)

_IDX_NAMES = {stem + ext for stems in idx.SOURCE_FILES.values() for stem in stems
              for ext in ('', '.gz')}
_SPAN_IDX_NAMES = {stem + ext for stem in data_layout.SPAN_IDX_STEMS for ext in ('', '.gz')}
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_EXPECTED = ('label folders 0-9 of .png/.jpg/.jpeg images, or train-images-idx3-ubyte[.gz] '
             'and train-labels-idx1-ubyte[.gz]')


_LOG = logging.getLogger(__name__)
STALE_TEMP_SECONDS = 3600  # far longer than write_incoming takes to write one image


class SpanError(ValueError):
  """A span (or a folder to seal) is empty, malformed, or disagrees with its manifest."""


def _decode(path: Path) -> np.ndarray:
  with Image.open(path, formats=('PNG', 'JPEG')) as image:
    return mnist_image.to_mnist(image)


def _is_idx_form(folder: Path) -> bool:
  return any(p.name in _IDX_NAMES for p in folder.iterdir())


def _load_images(folder: Path) -> Tuple[np.ndarray, np.ndarray, List[Problem]]:
  """Every good image (by label, then name) and every file or folder that is not one."""
  images, labels, problems = [], [], []
  for entry in sorted(folder.iterdir()):
    if entry.name == data_layout.MANIFEST_FILE or data_layout.is_temporary(entry.name):
      continue
    if not entry.is_dir():
      problems.append((entry.name, f'unknown file type outside the label folders (expected '
                                   f'{_EXPECTED})'))
    elif entry.name not in data_layout.LABEL_DIRS:
      problems.append((entry.name, f'expected a label folder named 0-9, found folder '
                                   f'{entry.name!r}'))
    else:
      for path in sorted(entry.iterdir()):
        rel = f'{entry.name}/{path.name}'
        if data_layout.is_temporary(path.name):
          continue
        if path.is_dir():
          problems.append((rel, f'expected image files in label folder {entry.name}, found '
                                f'a folder'))
        elif path.suffix.lower() not in data_layout.IMAGE_SUFFIXES:
          problems.append((rel, f'unknown file type {path.suffix or "(no suffix)"!r} '
                                f'(expected {", ".join(data_layout.IMAGE_SUFFIXES)})'))
        else:
          try:
            images.append(_decode(path))
            labels.append(int(entry.name))
          except _DECODE_ERRORS as e:
            problems.append((rel, f'cannot decode it as a PNG or JPEG image ({e})'))
  return (np.asarray(images, np.uint8).reshape(-1, idx.IMAGE_ROWS, idx.IMAGE_COLS),
          np.asarray(labels, np.uint8), problems)


def _load_idx(folder: Path) -> Tuple[np.ndarray, np.ndarray]:
  for entry in sorted(folder.iterdir()):
    if (entry.name == data_layout.MANIFEST_FILE or entry.name in _SPAN_IDX_NAMES
        or data_layout.is_temporary(entry.name)):
      continue
    if entry.name in _IDX_NAMES:
      raise SpanError(f'{entry}: a span holds no test files (the test split is always the '
                      f"base dataset's); remove it")
    raise SpanError(f'{entry}: unexpected {"folder" if entry.is_dir() else "file"} beside '
                    f'the IDX files (a span holds either train-images-idx3-ubyte[.gz] and '
                    f'train-labels-idx1-ubyte[.gz], or label folders 0-9, nothing else)')
  for stem in data_layout.SPAN_IDX_STEMS:
    if (folder / stem).exists() and (folder / (stem + '.gz')).exists():
      raise SpanError(f'{folder}: expected one of {stem} or {stem}.gz, found both')
  try:
    return idx.load_source(folder, 'train')
  except idx.IdxError as e:
    raise SpanError(str(e)) from None


def _read(folder: Path) -> Tuple[str, np.ndarray, np.ndarray]:
  """The format, images and labels of a span's files; SpanError naming every bad file."""
  if _is_idx_form(folder):
    return (data_layout.FORMAT_IDX, *_load_idx(folder))
  images, labels, problems = _load_images(folder)
  if problems:
    raise SpanError(f'{folder}: {len(problems)} bad file(s):\n' +
                    '\n'.join(f'  {folder / rel}: {why}' for rel, why in problems))
  if not len(labels):
    raise SpanError(f'{folder}: empty span: expected {_EXPECTED}')
  return data_layout.FORMAT_IMAGES, images, labels


def _label_counts(labels: np.ndarray) -> List[int]:
  return np.bincount(labels, minlength=idx.NUM_CLASSES).tolist()


def read_span(span_dir: PathLike) -> Tuple[np.ndarray, np.ndarray]:
  """images uint8 [n, 28, 28] and labels uint8 [n] of a sealed span, once its manifest
  verifies; images are in (label, file name) order. Raises SpanError."""
  span_dir = Path(span_dir)
  try:
    manifest = data_layout.verify_span(span_dir)
  except data_layout.ManifestError as e:
    raise SpanError(str(e)) from None
  span_format, images, labels = _read(span_dir)
  counts = _label_counts(labels)
  if span_format != manifest['format'] or counts != manifest['label_counts']:
    raise SpanError(f'{span_dir / data_layout.MANIFEST_FILE}: expects format '
                    f'{manifest["format"]!r} with label counts {manifest["label_counts"]}, '
                    f'found {span_format!r} with {counts}')
  return images, labels


def _drop_temporary(folder: Path) -> None:
  """Removes hidden and temp files and folders, then empty folders, below `folder`."""
  for root, dirs, files in os.walk(folder, topdown=True):
    for name in [d for d in dirs if data_layout.is_temporary(d)]:
      shutil.rmtree(Path(root) / name)
      dirs.remove(name)
    for name in files:
      if data_layout.is_temporary(name):
        (Path(root) / name).unlink()
  for root, dirs, _ in os.walk(folder, topdown=False):
    for name in dirs:
      if not any((Path(root) / name).iterdir()):
        (Path(root) / name).rmdir()


def _reject(data_dir: Path, staged: Path, problems: List[Problem]) -> None:
  """Moves what cannot go into a span to `rejected/<id>/`, with the reasons beside it."""
  rejected = data_dir / data_layout.REJECTED_DIR / staged.name.lstrip('.')
  for rel, why in problems:
    _LOG.warning('%s: %s; moved to %s', rel, why, rejected / rel)
    (rejected / rel).parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged / rel, rejected / rel)
  with open(rejected / 'reasons.txt', 'a') as f:
    f.writelines(f'{rel}: {why}\n' for rel, why in problems)


def _publish(data_dir: Path, staged: Path) -> int:
  """Renames the manifested staging folder to the next free `spans/<N>`; returns N."""
  spans_dir = data_dir / data_layout.SPANS_DIR
  while True:
    number = data_layout.next_span_number(data_dir)
    try:
      (spans_dir / str(number)).mkdir()  # the claim: a racing writer sees N taken
      os.rename(staged, spans_dir / str(number))  # replaces our empty claim, atomically
    except FileExistsError:
      continue
    except OSError as e:
      if e.errno in (errno.ENOTEMPTY, errno.EEXIST):  # someone wrote into our claim
        continue
      raise
    fd = os.open(spans_dir, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
    return number


def _seal_staged(data_dir: Path, staged: Path) -> Optional[int]:
  """Seals complete staged content; what is not a decodable image in a label folder 0-9
  goes to `rejected/` (IDX content is all or nothing: SpanError)."""
  _drop_temporary(staged)
  if _is_idx_form(staged):
    span_format, _, labels = _read(staged)
  else:
    span_format = data_layout.FORMAT_IMAGES
    _, labels, problems = _load_images(staged)
    if problems:
      _reject(data_dir, staged, problems)
      _drop_temporary(staged)
  if not len(labels):
    staged.rmdir()
    return None
  data_layout.write_manifest(staged, span_format, _label_counts(labels))
  return _publish(data_dir, staged)


def _resume_leftovers(data_dir: Path) -> Optional[int]:
  """Seals the complete content a killed seal left (one that fails stays, reported);
  drops a killed seal_folder's partial copy, whose source still holds the data. Call
  under the seal lock; returns the newest span sealed."""
  spans_dir = data_dir / data_layout.SPANS_DIR
  newest = None
  for path in sorted(spans_dir.glob(data_layout.COPYING_PREFIX + '*')):
    _LOG.warning('%s: partial copy left by an interrupted seal_folder; removed (seal '
                    'its source folder again)', path)
    shutil.rmtree(path)
  leftovers = sorted(spans_dir.glob(data_layout.SEALING_PREFIX + '*'),
                     key=lambda p: p.stat().st_mtime)
  for path in leftovers:
    _LOG.warning('%s: left by an interrupted seal; sealing it now', path)
    try:
      newest = _seal_staged(data_dir, path) or newest
    except SpanError as e:
      _LOG.error('%s: cannot seal it, left in place: %s', path, e)
  return newest


def _staging(data_dir: Path, prefix: str) -> Path:
  spans_dir = data_dir / data_layout.SPANS_DIR
  spans_dir.mkdir(parents=True, exist_ok=True)
  return spans_dir / f'{prefix}{uuid.uuid4().hex}'


def _drop_stale_temp_files(data_dir: Path) -> None:
  """write_incoming's temp files left by writers killed mid-write."""
  cutoff = time.time() - STALE_TEMP_SECONDS
  for path in (data_dir / data_layout.INCOMING_TMP_DIR).glob('*.tmp'):
    with contextlib.suppress(FileNotFoundError):
      if path.stat().st_mtime < cutoff:
        path.unlink()


def seal_incoming(data_dir: PathLike) -> Optional[int]:
  """Seals `incoming/` as the next span and returns the number of the newest span sealed
  (a killed seal's leftovers are sealed first, each as its own span); None when nothing
  was there. Images arriving meanwhile go to a fresh `incoming/`; files that are not
  decodable images in a label folder 0-9 are moved to `rejected/` with their reasons."""
  data_dir = Path(data_dir)
  _drop_stale_temp_files(data_dir)
  spans_dir = data_dir / data_layout.SPANS_DIR
  if not ((data_dir / data_layout.INCOMING_DIR).exists()
          or any(spans_dir.glob(data_layout.SEALING_PREFIX + '*'))
          or any(spans_dir.glob(data_layout.COPYING_PREFIX + '*'))):
    return None  # writes nothing, so a read-only data folder is fine
  staged = _staging(data_dir, data_layout.SEALING_PREFIX)
  with data_layout.locked(data_dir / data_layout.SEAL_LOCK, exclusive=True):
    newest = _resume_leftovers(data_dir)
    with data_layout.locked(data_dir / data_layout.INCOMING_LOCK, exclusive=True):
      try:
        os.rename(data_dir / data_layout.INCOMING_DIR, staged)
      except FileNotFoundError:
        return newest
    return _seal_staged(data_dir, staged) or newest


def seal_folder(data_dir: PathLike, source_dir: PathLike) -> int:
  """Copies a prepared folder (IDX pair or label folders) in as the next span; returns its
  number. The source is checked first and left untouched; SpanError names its bad files."""
  data_dir, source_dir = Path(data_dir), Path(source_dir)
  if not source_dir.is_dir():
    raise SpanError(f'{source_dir}: expected a folder holding {_EXPECTED}, found '
                    f'{"a file" if source_dir.exists() else "nothing"}')
  _read(source_dir)
  copy = _staging(data_dir, data_layout.COPYING_PREFIX)
  with data_layout.locked(data_dir / data_layout.SEAL_LOCK, exclusive=True):
    _resume_leftovers(data_dir)
    shutil.copytree(source_dir, copy, ignore=lambda _, names: [
        n for n in names if data_layout.is_temporary(n)])
    staged = copy.with_name(data_layout.SEALING_PREFIX +
                            copy.name[len(data_layout.COPYING_PREFIX):])
    os.rename(copy, staged)
    try:
      number = _seal_staged(data_dir, staged)
    except SpanError:
      shutil.rmtree(staged)  # the source changed while it was copied; it holds the data
      raise
  if number is None:  # the source emptied while it was copied
    raise SpanError(f'{source_dir}: empty span: expected {_EXPECTED}')
  return number
