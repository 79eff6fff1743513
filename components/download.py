"""`python -m components.download [--dataset mnist|fashion-mnist] [--dest DIR]`.

Fetches the four canonical IDX files from the first mirror that answers, checks each
against its published MD5, and caches them, so the pipeline can be pointed at the folder
with `--data-dir`. Needs the internet; the tests use a loopback server instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, Sequence, Tuple

from trainer import idx

CACHE_ROOT = Path.home() / '.cache' / 'mnist-tfx'
TIMEOUT_SECONDS = 60


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


def _fetch(name: str, dataset: Dataset, dest: Path) -> None:
  errors = []
  for mirror in dataset.mirrors:
    partial = dest.with_suffix(dest.suffix + '.part')
    try:
      with urllib.request.urlopen(mirror + name, timeout=TIMEOUT_SECONDS) as response:
        partial.write_bytes(response.read())
    except (urllib.error.URLError, OSError) as e:
      errors.append(f'{mirror}{name}: {e}')
      continue
    found = _md5(partial)
    if found != dataset.md5[name]:
      partial.unlink()
      errors.append(f'{mirror}{name}: expected MD5 {dataset.md5[name]}, found {found}')
      continue
    partial.rename(dest)  # only a verified file ever takes the final name
    return
  raise DownloadError('could not fetch a verified copy of ' + name + ':\n  ' +
                      '\n  '.join(errors))


def download(dataset: Dataset, dest: Path) -> Path:
  """Fills `dest` with the dataset's files; verified files already there are kept."""
  dest.mkdir(parents=True, exist_ok=True)
  for name in dataset.md5:
    path = dest / name
    if path.exists() and _md5(path) == dataset.md5[name]:
      continue
    print(f'downloading {name}', file=sys.stderr)
    _fetch(name, dataset, path)
  idx.load_source(dest, 'train')  # the structural checks the pipeline will make
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
