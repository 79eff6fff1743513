"""The ExampleGen executor on real Beam over a generated IDX folder."""

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tfx.dsl.components.base.base_beam_executor import BaseBeamExecutor
from tfx.proto import example_gen_pb2
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from trainer import idx
from components import spans
from components.mnist_example_gen import component, encoding, executor
from pipeline import configs
from trainer import features


def _run_executor(data_dir: Path, out_dir: Path, eval_size=50, limit_train=0, limit_test=0,
                  span_window=0):
  examples = standard_artifacts.Examples()
  examples.uri = str(out_dir)
  exec_properties = {
      'input_base': str(data_dir),
      'input_config': proto_utils.proto_to_json(component.input_config()),
      'output_config': proto_utils.proto_to_json(example_gen_pb2.Output()),
      'output_data_format': example_gen_pb2.FORMAT_TF_EXAMPLE,
      'output_file_format': example_gen_pb2.FORMAT_TFRECORDS_GZIP,
      executor.EVAL_SIZE_KEY: eval_size, executor.LIMIT_TRAIN_KEY: limit_train,
      executor.LIMIT_TEST_KEY: limit_test, executor.SPLIT_SEED_KEY: 0,
      executor.SPAN_WINDOW_KEY: span_window, executor.HOLDOUT_FRACTION_KEY: 0.1,
  }
  context = BaseBeamExecutor.Context(
      beam_pipeline_args=configs.load(environ={}).beam_pipeline_args())
  executor.Executor(context).Do({}, {'examples': [examples]}, exec_properties)
  return examples


def _read_split(out_dir: Path, split: str):
  files = tf.io.gfile.glob(str(out_dir / f'Split-{split}' / '*.gz'))
  images, labels, spans = [], [], []
  for record in tf.data.TFRecordDataset(files, compression_type='GZIP'):
    example = tf.train.Example.FromString(record.numpy())
    images.append(example.features.feature[features.IMAGE_KEY].int64_list.value)
    labels.append(example.features.feature[features.LABEL_KEY].int64_list.value[0])
    spans.append(example.features.feature[features.SPAN_KEY].int64_list.value[0])
  return np.array(images).reshape(-1, 784), np.array(labels), np.array(spans)


def test_splits_counts_and_round_trip(small_idx_dir, tmp_path):
  examples = _run_executor(small_idx_dir, tmp_path / 'out', eval_size=50)
  assert json.loads(examples.split_names) == ['train', 'eval', 'test', 'holdout']
  counts = json.loads(examples.get_string_custom_property(executor.SPLIT_COUNTS_PROPERTY))
  assert counts == {'train': 250, 'eval': 50, 'test': 100, 'holdout': 0}
  assert examples.span == 0 and examples.get_string_custom_property('spans') == '[]'
  assert examples.get_int_custom_property('num_examples_eval') == 50

  source = idx.load_source(small_idx_dir, 'train')
  held_out = set(idx.eval_indices(300, 50, seed=0).tolist())
  for split, rows in (('train', [i for i in range(300) if i not in held_out]),
                      ('eval', sorted(held_out))):
    images, labels, spans = _read_split(tmp_path / 'out', split)
    assert images.shape == (len(rows), 784) and not spans.any()
    # Every example is one source row, pixels and label intact (order is Beam's).
    expected = {source.images[i].tobytes(): source.labels[i] for i in rows}
    got = {img.astype(np.uint8).tobytes(): lab for img, lab in zip(images, labels)}
    assert got == expected
  images, labels, _ = _read_split(tmp_path / 'out', 'test')
  assert images.shape == (100, 784) and images.min() >= 0 and images.max() <= 255
  assert (images[:, 0] == labels).all()


def test_limits(small_idx_dir, tmp_path):
  examples = _run_executor(small_idx_dir, tmp_path / 'out', eval_size=20, limit_train=120,
                           limit_test=30)
  counts = json.loads(examples.get_string_custom_property(executor.SPLIT_COUNTS_PROPERTY))
  assert counts == {'train': 100, 'eval': 20, 'test': 30, 'holdout': 0}


def test_bad_data_stops_the_component_naming_the_file(small_idx_dir, tmp_path):
  bad = small_idx_dir / 't10k-labels-idx1-ubyte.gz'
  idx.write_idx(bad, np.full(100, 11, np.uint8))
  with pytest.raises(idx.IdxError, match=f'{bad}: expected labels 0-9, found 11'):
    _run_executor(small_idx_dir, tmp_path / 'out')
  assert not (tmp_path / 'out' / 'Split-train').exists()


def test_encoding_matches_tf_train_example():
  images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
  labels = np.array([0, 3, 9, 1, 7], dtype=np.uint8)
  for record, image, label in zip(encoding.to_examples(images, labels), images, labels):
    expected = tf.train.Example(features=tf.train.Features(feature={
        'image': tf.train.Feature(int64_list=tf.train.Int64List(value=image.ravel().tolist())),
        'label': tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
        'span': tf.train.Feature(int64_list=tf.train.Int64List(value=[0])),
    }))
    assert tf.train.Example.FromString(record) == expected
  one = tf.train.Example.FromString(encoding.to_example(images[1], 3))
  assert list(one.features.feature['image'].int64_list.value) == images[1].ravel().tolist()


def test_direct_runner_does_not_package_tfx_into_temp(small_idx_dir, tmp_path, monkeypatch):
  """Without the project's Beam flags TFX copies its install into a new temp folder per
  Beam component (tfx/utils/dependency_utils.py) and never removes it."""
  temp = tmp_path / 'temp'
  temp.mkdir()
  monkeypatch.setattr(tempfile, 'tempdir', str(temp))
  _run_executor(small_idx_dir, tmp_path / 'out')
  assert not list(temp.glob('*/build/tfx'))


def _seal_idx_span(data_dir: Path, count: int, label: int, tmp_path: Path) -> int:
  folder = tmp_path / f'span-source-{label}'
  folder.mkdir()
  images = np.full((count, 28, 28), label * 20, np.uint8)
  idx.write_idx(folder / 'train-images-idx3-ubyte.gz', images)
  idx.write_idx(folder / 'train-labels-idx1-ubyte.gz', np.full(count, label, np.uint8))
  return spans.seal_folder(data_dir, folder)


def test_sealed_spans_train_and_keep_a_seeded_holdout(small_idx_dir, tmp_path):
  """Base + a window of sealed spans; each span's holdout keeps its span number; an
  unsealed folder (no manifest yet) is not read."""
  first = _seal_idx_span(small_idx_dir, 40, 3, tmp_path)
  second = _seal_idx_span(small_idx_dir, 20, 5, tmp_path)
  (small_idx_dir / 'spans' / '9').mkdir()  # being written: no manifest
  examples = _run_executor(small_idx_dir, tmp_path / 'all', eval_size=50)
  counts = json.loads(examples.get_string_custom_property(executor.SPLIT_COUNTS_PROPERTY))
  assert counts == {'train': 250 + 36 + 18, 'eval': 50, 'test': 100, 'holdout': 4 + 2}
  assert json.loads(examples.get_string_custom_property('spans')) == [first, second]
  assert examples.span == second
  _, labels, span_of = _read_split(tmp_path / 'all', 'holdout')
  assert sorted(span_of.tolist()) == [first] * 4 + [second] * 2
  assert set(zip(span_of.tolist(), labels.tolist())) == {(first, 3), (second, 5)}
  _, _, train_spans = _read_split(tmp_path / 'all', 'train')
  assert (train_spans == 0).sum() == 250

  newest = _run_executor(small_idx_dir, tmp_path / 'newest', eval_size=50, span_window=1)
  assert json.loads(newest.get_string_custom_property('spans')) == [second]


def test_a_bad_span_stops_the_component_naming_the_file(small_idx_dir, tmp_path):
  number = _seal_idx_span(small_idx_dir, 30, 2, tmp_path)
  labels = small_idx_dir / 'spans' / str(number) / 'train-labels-idx1-ubyte.gz'
  idx.write_idx(labels, np.full(30, 4, np.uint8))  # changed after sealing
  with pytest.raises(ValueError, match='train-labels-idx1-ubyte.gz'):
    _run_executor(small_idx_dir, tmp_path / 'out')
