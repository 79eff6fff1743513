"""What runs before the DAG, in its first second, before TensorFlow is even imported: the
data made ready (`prepare_data`), then checks that fail a bad run at once.

Without them a missing or unreadable data folder surfaces minutes later as a Beam
traceback inside ExampleGen, a read-only output folder as an SQLite error, and a full
disk half-way through Transform. Each check names the path, what is wrong, and the flag
that changes it. Plain Python only: `python -m pipeline run` calls this first.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from components import download, spans
from pipeline.configs import DOWNLOAD_CACHE_DIR, LocalConfig, is_uri
from trainer import idx

MB = 1024 * 1024


class PreflightError(RuntimeError):
  """The run cannot start: bad input, unwritable output, or not enough disk space."""


def _readable_file(path: Path) -> Optional[str]:
  try:
    with open(path, 'rb') as f:
      f.read(1)
  except OSError as e:
    return f'{path}: cannot read it ({e.strerror}); check its permissions'
  return None


def check_data_dir(data_dir: Path) -> List[str]:
  """The four IDX files exist and can be read (their content is checked by ExampleGen)."""
  if not data_dir.exists():
    return [f'data folder {data_dir} does not exist (--data-dir / MNIST_DATA_DIR; '
            f'`python -m components.download` fetches MNIST)']
  if not data_dir.is_dir():
    return [f'data folder {data_dir} is not a folder (--data-dir / MNIST_DATA_DIR)']
  try:
    os.listdir(data_dir)
  except OSError as e:
    return [f'data folder {data_dir}: cannot list it ({e.strerror}); check its permissions']
  problems = []
  for stems in idx.SOURCE_FILES.values():
    for stem in stems:
      try:
        path = idx.find_file(data_dir, stem)
      except idx.IdxError as e:
        problems.append(str(e))
        continue
      problems += filter(None, [_readable_file(path)])
  return problems


def _write_problem(path: Path) -> Optional[Tuple[Path, str]]:
  """Creates `path` if needed and writes a probe file there: the one test that root, ACLs
  and read-only mounts all answer truthfully. Returns (the folder that refused, why)."""
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f'.write-probe-{uuid.uuid4().hex}'
    probe.write_bytes(b'ok')
    probe.unlink()
  except OSError as e:
    refused = next(p for p in [path, *path.parents] if p.exists())
    return refused, ('no space left on the device' if e.errno == errno.ENOSPC
                     else f'cannot write there ({e.strerror}); fix its permissions or '
                          f'choose another folder')
  return None


def check_outputs(config: LocalConfig) -> List[str]:
  """Everything the run writes: pipeline root, ML Metadata, serving dir. One line per
  folder that refused, with the flags that move what was to go there. URIs (object
  storage) are the storage's business."""
  refusals: Dict[Tuple[Path, str], List[str]] = {}
  locations = config.locations()
  for path, flag in ((locations.pipeline_root, '--output-dir'),
                     (str(config.metadata_path.parent), '--output-dir'),
                     (locations.serving, '--serving-dir')):
    if is_uri(path):
      continue
    problem = _write_problem(Path(path))
    if problem and flag not in refusals.setdefault(problem, []):
      refusals[problem].append(flag)
  problems = [f'{folder}: {why} ({", ".join(flags)})'
              for (folder, why), flags in refusals.items()]
  if not problems and config.metadata_path.exists() and not os.access(config.metadata_path,
                                                                      os.W_OK):
    problems.append(f'{config.metadata_path}: ML Metadata database is read-only')
  return problems


def check_free_space(config: LocalConfig) -> List[str]:
  problems, devices = [], set()
  for path in (Path(p) for p in (config.output_dir, config.serving_dir) if not is_uri(p)):
    existing = next(p for p in [path, *path.parents] if p.exists())
    device = os.stat(existing).st_dev
    if device in devices:
      continue  # one message per filesystem
    devices.add(device)
    free = shutil.disk_usage(existing).free
    if free < config.min_free_mb * MB:
      problems.append(f'{path}: only {free // MB} MB free on its filesystem, the run needs '
                      f'at least {config.min_free_mb} MB (free space, or lower '
                      f'--min-free-mb / MNIST_MIN_FREE_MB)')
  return problems


def check(config: LocalConfig) -> None:
  """Raises PreflightError listing every problem found (not only the first)."""
  problems = [] if is_uri(config.data_dir) else check_data_dir(Path(config.data_dir))
  if not is_uri(config.schema_path) and not Path(config.schema_path).is_file():
    problems.append(f'schema {config.schema_path} not found (--schema-path)')
  problems += check_free_space(config)  # before writing probes on a full disk
  problems += check_outputs(config)
  if problems:
    raise PreflightError('cannot start the run:\n' + '\n'.join(f'  - {p}' for p in problems))


def prepare(config: LocalConfig, mirrors: Optional[Sequence[str]] = None) -> Optional[int]:
  """Everything before a run, in order: MNIST fetched into the download cache when that is
  the data folder and it lacks files (a fresh machine); the checks (`check`); then
  `incoming/` sealed into the next span, so images that arrive during the run wait for the
  next one. Returns the span sealed, if any."""
  local_data = not is_uri(config.data_dir)
  if local_data and Path(config.data_dir) == DOWNLOAD_CACHE_DIR:
    download.ensure_dataset(config.data_dir, mirrors=mirrors)
  check(config)
  sealed = spans.seal_incoming(config.data_dir) if local_data else None
  if sealed is not None:
    print(f'Sealed {config.data_dir}/incoming into span {sealed}', flush=True)
  return sealed


def explain(error: BaseException) -> Optional[str]:
  """A plain sentence for a disk error found anywhere in an exception's chain."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if (isinstance(error, OSError) and error.errno == errno.ENOSPC) or (
        'No space left on device' in str(error)):  # TensorFlow's file errors carry text
      return ('no space left on the device: free space and run again; the components '
              'that finished are reused from the cache')
    if isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
      return (f'permission denied on {error.filename or "a file"}: fix its permissions '
              f'and run again; the components that finished are reused from the cache')
    error = error.__cause__ or error.__context__
  return None
