"""Where new data lives beside the base dataset, and how a folder of it becomes trusted.

    <data>/train-images-idx3-ubyte.gz ...   the base dataset (span 0), as `trainer.idx` reads it
    <data>/spans/<N>/                        sealed span N = 1, 2, ...: read only once sealed
    <data>/spans/<N>/manifest.json           written last: every file's size and sha256
    <data>/incoming/<label>/<name>.png|.jpg  labelled images waiting to be sealed into a span

A span is sealed when its folder name is a positive integer and it holds `manifest.json`;
the manifest lists every other file with its size and sha256, so a span being written (no
manifest yet) is never read and a changed or half-copied one fails loudly. The sealer
(`components.spans`) writes manifests; this module only names things, lists, writes into
`incoming/`, and verifies. Stdlib only, so the pipeline, serving and scripts can all import
it. Local POSIX filesystems only: it relies on atomic `rename` and `flock`.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Union

from trainer import idx

PathLike = Union[str, os.PathLike]

SPANS_DIR = 'spans'
INCOMING_DIR = 'incoming'
INCOMING_TMP_DIR = '.incoming-tmp'   # write_incoming's temp files: never inside incoming/
REJECTED_DIR = 'rejected'            # incoming files the sealer could not use, with reasons
MANIFEST_FILE = 'manifest.json'
SEALING_PREFIX = '.sealing-'         # complete staged content, being sealed (resumable)
COPYING_PREFIX = '.copying-'         # a partial copy by seal_folder (its source still exists)
INCOMING_LOCK = '.incoming.lock'     # writers share it; the sealer takes it to move incoming/
SEAL_LOCK = '.seal.lock'             # one sealer at a time

FORMAT_IDX = 'idx'                   # train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz]
FORMAT_IMAGES = 'images'             # <label>/<name>.png|.jpg|.jpeg, label 0-9
FORMATS = (FORMAT_IDX, FORMAT_IMAGES)
SPAN_IDX_STEMS = idx.SOURCE_FILES['train']  # a span has no test files: test stays the base's
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
LABEL_DIRS = tuple(str(label) for label in range(idx.NUM_CLASSES))
MANIFEST_VERSION = 1

_SIGNATURES = {'.png': b'\x89PNG\r\n\x1a\n', '.jpg': b'\xff\xd8\xff', '.jpeg': b'\xff\xd8\xff'}
_TEMP_SUFFIXES = ('~', '.tmp', '.part', '.crdownload', '.swp')


class ManifestError(ValueError):
  """A span's manifest is missing, malformed, or disagrees with the files beside it."""


def is_temporary(name: str) -> bool:
  """Hidden or editor/download temp files: never data, dropped when staging a span."""
  return name.startswith('.') or name.endswith(_TEMP_SUFFIXES)


def span_number(name: str) -> int:
  """The span number a folder name stands for, or 0 when it is not a span's name.

  Only the canonical spelling counts ('7', not '07'), so two folders never share a number.
  """
  if not (name.isascii() and name.isdigit()) or name != str(int(name)):
    return 0
  return int(name)


def sealed_spans(data_dir: PathLike) -> Dict[int, Path]:
  """Sealed spans by number, ascending; unsealed, staging and other folders are left out."""
  spans_dir = Path(data_dir) / SPANS_DIR
  if not spans_dir.is_dir():
    return {}
  found = {span_number(p.name): p for p in spans_dir.iterdir()
           if span_number(p.name) and (p / MANIFEST_FILE).is_file()}
  return dict(sorted(found.items()))


def next_span_number(data_dir: PathLike) -> int:
  """One more than any span folder, sealed or not (a hand-written one may be on its way)."""
  spans_dir = Path(data_dir) / SPANS_DIR
  taken = [span_number(p.name) for p in spans_dir.iterdir()] if spans_dir.is_dir() else []
  return max(taken, default=0) + 1


@contextlib.contextmanager
def locked(path: Path, exclusive: bool) -> Iterator[None]:
  """An flock on `path` (created if needed); released when the holder dies, too."""
  with open(path, 'a+b') as f:
    fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _check_incoming(label: int, data: bytes, suffix: str) -> str:
  if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < idx.NUM_CLASSES:
    raise ValueError(f'expected a label 0-{idx.NUM_CLASSES - 1}, found {label!r}')
  suffix = suffix.lower() if suffix.startswith('.') else '.' + suffix.lower()
  if suffix not in IMAGE_SUFFIXES:
    raise ValueError(f'expected an image suffix {", ".join(IMAGE_SUFFIXES)}, found {suffix!r}')
  if not data.startswith(_SIGNATURES[suffix]):
    raise ValueError(f'expected {suffix} data (starting {_SIGNATURES[suffix].hex()}), found '
                     f'bytes {data[:8].hex() or "none"}')
  return suffix


def write_incoming(data_dir: PathLike, label: int, data: bytes, suffix: str) -> Path:
  """Adds one labelled image to `incoming/<label>/` whole or not at all; returns its path.

  The bytes go to a temp file outside `incoming/` and are renamed in under a shared lock,
  so the sealer (which takes the lock exclusively to move `incoming/` aside) sees either the
  whole file or nothing, and a file is never lost to a seal in between. Checks the label,
  the suffix and the file signature; the sealer decodes it and sets aside what does not.
  """
  suffix = _check_incoming(label, data, suffix)
  data_dir = Path(data_dir)
  tmp_dir = data_dir / INCOMING_TMP_DIR
  tmp_dir.mkdir(parents=True, exist_ok=True)
  name = uuid.uuid4().hex
  tmp = tmp_dir / (name + '.tmp')
  with open(tmp, 'wb') as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  final = data_dir / INCOMING_DIR / str(label) / (name + suffix)
  try:
    with locked(data_dir / INCOMING_LOCK, exclusive=False):
      while True:  # retried: incoming/ may be moved away by hand, outside the lock
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
          os.replace(tmp, final)
          return final
        except FileNotFoundError:
          if not tmp.exists():
            raise
  finally:
    tmp.unlink(missing_ok=True)


def count_incoming(data_dir: PathLike) -> int:
  """Images waiting in `incoming/` (label folders 0-9, image suffixes, no temp files)."""
  incoming = Path(data_dir) / INCOMING_DIR
  try:
    return sum(1 for label in LABEL_DIRS if (incoming / label).is_dir()
               for p in (incoming / label).iterdir()
               if p.suffix.lower() in IMAGE_SUFFIXES and not is_temporary(p.name) and p.is_file())
  except FileNotFoundError:  # sealed while counting: what waited is in a span now
    return 0


def sha256(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def data_files(folder: Path) -> List[str]:
  """Every file under `folder` but the manifest, as sorted POSIX paths relative to it."""
  return sorted(p.relative_to(folder).as_posix() for p in folder.rglob('*')
                if p.is_file() and p.relative_to(folder).as_posix() != MANIFEST_FILE)


def write_manifest(folder: Path, span_format: str, label_counts: List[int]) -> dict:
  """Describes every file now in `folder` in `manifest.json`, written atomically and synced."""
  if span_format not in FORMATS:
    raise ValueError(f'expected a span format in {FORMATS}, found {span_format!r}')
  manifest = {
      'version': MANIFEST_VERSION,
      'format': span_format,
      'examples': sum(label_counts),
      'label_counts': list(label_counts),
      'sealed_at': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'files': {rel: {'size': (folder / rel).stat().st_size, 'sha256': sha256(folder / rel)}
                for rel in data_files(folder)},
  }
  tmp = folder / f'.{MANIFEST_FILE}.{uuid.uuid4().hex}.tmp'
  with open(tmp, 'w') as f:
    json.dump(manifest, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, folder / MANIFEST_FILE)
  return manifest


def read_manifest(span_dir: PathLike) -> dict:
  """The parsed manifest, its fields checked for type (not yet against the files)."""
  path = Path(span_dir) / MANIFEST_FILE
  try:
    manifest = json.loads(path.read_text())
  except FileNotFoundError:
    raise ManifestError(f'{path}: not found (a span is read only once sealed, and '
                        f'{MANIFEST_FILE} is what seals it)') from None
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ManifestError(f'{path}: expected a JSON manifest, cannot read it ({e})') from None
  expected = {'version': int, 'format': str, 'examples': int, 'label_counts': list,
              'sealed_at': str, 'files': dict}
  if not isinstance(manifest, dict):
    raise ManifestError(f'{path}: expected a JSON object, found {type(manifest).__name__}')
  for key, kind in expected.items():
    if not isinstance(manifest.get(key), kind):
      raise ManifestError(f'{path}: expected field {key!r} of type {kind.__name__}, found '
                          f'{manifest.get(key)!r}')
  if manifest['version'] != MANIFEST_VERSION or manifest['format'] not in FORMATS:
    raise ManifestError(f'{path}: expected version {MANIFEST_VERSION} and a format in '
                        f'{FORMATS}, found version {manifest["version"]} and format '
                        f'{manifest["format"]!r}')
  counts = manifest['label_counts']
  if (len(counts) != idx.NUM_CLASSES or not all(isinstance(c, int) and c >= 0 for c in counts)
      or sum(counts) != manifest['examples']):
    raise ManifestError(f'{path}: expected {idx.NUM_CLASSES} label counts summing to '
                        f'examples={manifest["examples"]}, found {counts}')
  for rel, entry in manifest['files'].items():
    parts = Path(rel).parts
    if Path(rel).is_absolute() or '..' in parts or not parts or rel == MANIFEST_FILE:
      raise ManifestError(f'{path}: expected file paths inside the span, found {rel!r}')
    if not (isinstance(entry, dict) and isinstance(entry.get('size'), int)
            and isinstance(entry.get('sha256'), str)):
      raise ManifestError(f'{path}: expected {{"size": int, "sha256": str}} for {rel!r}, '
                          f'found {entry!r}')
  return manifest


def verify_span(span_dir: PathLike) -> dict:
  """The manifest, once every listed file matches its size and sha256 and nothing else is
  there: a span changed, half-copied or added to after sealing is refused."""
  span_dir = Path(span_dir)
  manifest = read_manifest(span_dir)
  files: Mapping[str, dict] = manifest['files']
  for rel, entry in sorted(files.items()):
    path = span_dir / rel
    if not path.is_file():
      raise ManifestError(f'{path}: listed in {MANIFEST_FILE} but missing')
    size = path.stat().st_size
    if size != entry['size']:
      raise ManifestError(f'{path}: {MANIFEST_FILE} expects {entry["size"]} bytes, '
                          f'found {size}')
    digest = sha256(path)
    if digest != entry['sha256']:
      raise ManifestError(f'{path}: {MANIFEST_FILE} expects sha256 {entry["sha256"]}, '
                          f'found {digest}')
  extra = [rel for rel in data_files(span_dir) if rel not in files]
  if extra:
    raise ManifestError(f'{span_dir / extra[0]}: not listed in {MANIFEST_FILE} (a sealed '
                        f'span holds only what its manifest lists; {len(extra)} such file(s))')
  return manifest
