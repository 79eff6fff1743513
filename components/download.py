"""`python -m components.download [--dataset mnist|fashion-mnist] [--dest DIR]`.

Fetches the four canonical IDX files from the first mirror that answers, checks each
against its published MD5, and caches them, so the pipeline can be pointed at the folder
with `--data-dir`. `ensure_dataset` does the same for the pipeline command, only for the
files a folder lacks. Needs the internet; the tests use a loopback server instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

from trainer import idx

CACHE_ROOT = Path.home() / '.cache' / 'mnist-tfx'
TIMEOUT_SECONDS = 60
CHUNK_BYTES = 1 << 20
MB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Dataset:
  mirrors: Tuple[str, ...]
  md5: Dict[str, str]  # file name -> MD5 of the published .gz file


DATASETS = {
    'mnist': Dataset(
        mirrors=('https://ossci-datasets.s3.amazonaws.com/mnist/',
                 'https://storage.googleapis.com/cvdf-datasets/mnist/'),
        md5={'train-images-idx3-ubyte.gz': 'f68b3c2dcbeaaa9fbdd348bbdeb94873',
             'train-labels-idx1-ubyte.gz': 'd53e105ee54ea40749a09fcbcd1e9432',
             't10k-images-idx3-ubyte.gz': '9fb629c4189551a2d022fa330f9573f3',
             't10k-labels-idx1-ubyte.gz': 'ec29112dd5afa0611ce80d1b7f02629c'}),
    'fashion-mnist': Dataset(
        mirrors=('http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/',),
        md5={'train-images-idx3-ubyte.gz': '8d4fb7e6c68d591d4c3dfef9ec88bf0d',
             'train-labels-idx1-ubyte.gz': '25c81989df183df01b3e8a0aad5dffbe',
             't10k-images-idx3-ubyte.gz': 'bef4ecab320f06d8554ea6380940ec79',
             't10k-labels-idx1-ubyte.gz': 'bb300cfdad3c16e7a12a480ee83cd310'}),
}


class DownloadError(RuntimeError):
  pass


def _md5(path: Path) -> str:
  return hashlib.md5(path.read_bytes()).hexdigest()


def _stream(response, out, label: str) -> None:
  """Copies the response to `out`, showing progress on a terminal and one line when done."""
  total = int(response.headers.get('Content-Length') or 0)
  done, live = 0, sys.stderr.isatty()
  of_total = f' of {total / MB:.1f} MB' if total else ' MB'
  for chunk in iter(lambda: response.read(CHUNK_BYTES), b''):
    out.write(chunk)
    done += len(chunk)
    if live:
      print(f'\r  {label}: {done / MB:.1f}{of_total}', end='', file=sys.stderr, flush=True)
  if live:
    print(file=sys.stderr)  # ends the progress line
  if total and done != total:  # a chunked read does not raise IncompleteRead itself
    raise DownloadError(f'truncated: expected {total} bytes, received {done}')
  print(f'  {label}: {done / MB:.1f} MB done', file=sys.stderr)


def _fetch(name: str, dataset: Dataset, dest: Path) -> None:
  """Tries each mirror in turn; only a file matching its published MD5 takes `dest`'s name."""
  errors = []
  partial = dest.with_name(f'{name}.{uuid.uuid4().hex[:8]}.part')  # one per concurrent fetch
  for mirror in dataset.mirrors:
    url = mirror + name
    print(f'downloading {url}', file=sys.stderr)
    try:
      with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response, \
          open(partial, 'wb') as out:
        _stream(response, out, name)
    except (urllib.error.URLError, http.client.HTTPException, OSError, DownloadError) as e:
      errors.append(f'{url}: {e}')
    else:
      found = _md5(partial)
      if found == dataset.md5[name]:
        os.replace(partial, dest)
        return
      errors.append(f'{url}: expected MD5 {dataset.md5[name]}, found {found}')
    partial.unlink(missing_ok=True)
    print(f'  {errors[-1]}', file=sys.stderr)
  raise DownloadError('could not fetch a verified copy of ' + name + ':\n  ' +
                      '\n  '.join(errors))


def download(dataset: Dataset, dest: Path) -> Path:
  """Fills `dest` with the dataset's files; verified files already there are kept."""
  dest.mkdir(parents=True, exist_ok=True)
  for name in dataset.md5:
    path = dest / name
    if path.exists() and _md5(path) == dataset.md5[name]:
      continue
    _fetch(name, dataset, path)
  idx.load_source(dest, 'train')  # the structural checks the pipeline will make
  idx.load_source(dest, 'test')
  return dest


def ensure_dataset(dest_dir: Union[str, os.PathLike], dataset: str = 'mnist',
                   mirrors: Optional[Sequence[str]] = None) -> Path:
  """`dest_dir`, after fetching whichever of the four IDX files it lacks (none: no network).

  A file counts as present gzip'd or not, as `trainer.idx` reads either; what is present
  is not re-checked here (ExampleGen checks it). Fetched files are MD5-verified, tried
  mirror by mirror (`mirrors` replaces the dataset's list), so `make run` on a fresh
  machine needs no separate download step.
  """
  if dataset not in DATASETS:
    raise DownloadError(f'unknown dataset {dataset!r}: expected one of {", ".join(DATASETS)}')
  spec = DATASETS[dataset]
  if mirrors is not None:
    spec = dataclasses.replace(spec, mirrors=tuple(mirrors))
  dest = Path(dest_dir)
  missing = [name for name in spec.md5
             if not (dest / name).is_file() and not (dest / name[:-len('.gz')]).is_file()]
  if not missing:
    return dest
  print(f'{dest}: fetching {len(missing)} missing {dataset} file(s)', file=sys.stderr)
  dest.mkdir(parents=True, exist_ok=True)
  for name in missing:
    _fetch(name, spec, dest / name)
  idx.load_source(dest, 'train')
  idx.load_source(dest, 'test')
  return dest


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m components.download', description=__doc__)
  parser.add_argument('--dataset', choices=sorted(DATASETS), default='mnist')
  parser.add_argument('--dest', type=Path, help='default: ~/.cache/mnist-tfx/<dataset>')
  args = parser.parse_args(argv)
  try:
    folder = download(DATASETS[args.dataset], args.dest or CACHE_ROOT / args.dataset)
  except (DownloadError, idx.IdxError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'{folder}\nrun the pipeline on it with: python -m pipeline run --data-dir {folder}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
