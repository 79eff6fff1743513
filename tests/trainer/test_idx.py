"""The IDX reader and every validation failure, on files the tests write."""

import gzip

import numpy as np
import pytest

from trainer import idx
from tests.conftest import write_idx_folder


def test_reads_the_canonical_files(mnist_dir):
  train = idx.load_source(mnist_dir, 'train')
  test = idx.load_source(mnist_dir, 'test')
  assert train.images.shape == (60000, 28, 28) and train.labels.shape == (60000,)
  assert test.images.shape == (10000, 28, 28)
  assert train.labels[0] == 5 and test.labels[0] == 7  # per the dataset's README
  assert np.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028,
                                               974, 1009]
  assert abs(train.images.mean() / 255 - 0.1307) < 1e-4


@pytest.mark.parametrize('gzipped', [True, False])
def test_round_trip_gzipped_or_not(tmp_path, gzipped):
  folder = write_idx_folder(tmp_path, 20, 5, gzipped=gzipped)
  data = idx.load_source(folder, 'train', limit=7)
  assert data.images.shape == (7, 28, 28)
  assert (data.images[:, 0, 0] == data.labels).all()


def test_missing_folder_and_file(tmp_path):
  with pytest.raises(idx.IdxError, match='data folder not found'):
    idx.load_source(tmp_path / 'nope', 'train')
  folder = write_idx_folder(tmp_path / 'd', 5, 5)
  (folder / 't10k-labels-idx1-ubyte.gz').unlink()
  with pytest.raises(idx.IdxError, match=r't10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte\.gz'):
    idx.load_source(folder, 'test')


def _raw(magic: int, dims, payload: bytes) -> bytes:
  return magic.to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in dims) + payload


@pytest.mark.parametrize('name,content,message', [
    ('wrong magic', _raw(2049, [2, 28, 28], bytes(2 * 784)), 'expected IDX magic number 2051, found 2049'),
    ('wrong dims', _raw(2051, [2, 32, 32], bytes(2 * 1024)), 'expected 28x28 images, found 32x32'),
    ('truncated', _raw(2051, [3, 28, 28], bytes(2 * 784)), r'truncated.*expected 2368 bytes, found 1584'),
    ('trailing', _raw(2051, [1, 28, 28], bytes(785)), 'has trailing bytes'),
    ('short header', b'\x00\x00', 'header of at least 4 bytes, found 2'),
])
def test_bad_images_file(tmp_path, name, content, message):
  path = tmp_path / 'train-images-idx3-ubyte'
  path.write_bytes(content)
  with pytest.raises(idx.IdxError, match=message) as err:
    idx.read_images(path)
  assert str(path) in str(err.value), name


def test_label_out_of_range(tmp_path):
  path = tmp_path / 'train-labels-idx1-ubyte'
  path.write_bytes(_raw(2049, [3], bytes([1, 12, 3])))
  with pytest.raises(idx.IdxError, match='expected labels 0-9, found 12 at index 1'):
    idx.read_labels(path)


def test_count_mismatch(tmp_path):
  folder = write_idx_folder(tmp_path, 10, 5)
  idx.write_idx(folder / 'train-labels-idx1-ubyte.gz', np.zeros(9, np.uint8))
  with pytest.raises(idx.IdxError, match='holds 10 images but train-labels-idx1-ubyte.gz holds 9'):
    idx.load_source(folder, 'train')


def test_not_gzip_and_corrupt_gzip(tmp_path):
  plain = tmp_path / 'train-images-idx3-ubyte.gz'
  plain.write_bytes(_raw(2051, [1, 28, 28], bytes(784)))
  with pytest.raises(idx.IdxError, match='expected gzip data'):
    idx.read_images(plain)
  cut = tmp_path / 'cut.gz'
  cut.write_bytes(gzip.compress(_raw(2051, [1, 28, 28], bytes(784)))[:30])
  with pytest.raises(idx.IdxError, match='gzip data is corrupt or truncated'):
    idx.read_images(cut)


def test_eval_indices_are_deterministic_and_validated():
  first = idx.eval_indices(1000, 100, seed=3)
  assert len(set(first)) == 100 and first.max() < 1000
  assert (first == idx.eval_indices(1000, 100, seed=3)).all()
  assert not (first == idx.eval_indices(1000, 100, seed=4)).all()
  with pytest.raises(idx.IdxError, match='eval_size 10 must be smaller than the 10'):
    idx.eval_indices(10, 10, seed=0)
