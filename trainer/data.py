"""Training input: raw examples read once, put through Transform's graph, kept in memory.

Transform does not materialize transformed examples (writing 60,000 x 784 floats costs more
than applying its graph here, batched, once). Decoding is then done once up front, leaving
each epoch as shuffling and batching of in-memory tensors, with no per-step Python work.
"""

from __future__ import annotations

from typing import List, NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tfx.components.trainer.fn_args_utils import DataAccessor
from tfx_bsl.public import tfxio

from trainer import features

READ_BATCH_SIZE = 4096


class Arrays(NamedTuple):
  images: np.ndarray   # float32 [n, 28, 28, 1] in [0, 1]
  labels: np.ndarray   # int64 [n]


def read_transformed(file_pattern: List[str], data_accessor: DataAccessor,
                     tf_transform_output: tft.TFTransformOutput) -> Arrays:
  """Raw examples -> Transform's graph -> (normalized images, labels) in memory."""
  transform_layer = tf_transform_output.transform_features_layer()
  dataset = data_accessor.tf_dataset_factory(
      file_pattern,
      tfxio.TensorFlowDatasetOptions(batch_size=READ_BATCH_SIZE, num_epochs=1,
                                     shuffle=False),
      tf_transform_output.raw_metadata.schema).map(transform_layer)
  images, labels = [], []
  for batch in dataset.as_numpy_iterator():
    images.append(batch[features.IMAGE_KEY])
    labels.append(batch[features.LABEL_KEY].reshape(-1))
  return Arrays(np.concatenate(images), np.concatenate(labels))


PREFETCH_BATCHES = 2


def make_dataset(arrays: Arrays, batch_size: int, training: bool, seed: int) -> tf.data.Dataset:
  """(images, one-hot labels) batches gathered from in-memory tensors; a shuffled order
  each epoch when training. Indices are shuffled, not images, so the shuffle buffer is
  small. tf.data's autotuning is off: there is nothing to tune in a gather, and its model
  thread held up the iterator's teardown at the end of `fit` for ~45 s (it sleeps out
  its optimization period)."""
  images = tf.constant(arrays.images)
  one_hot = tf.constant(np.eye(features.NUM_CLASSES, dtype=np.float32)[arrays.labels])
  indices = tf.data.Dataset.range(len(arrays.labels))
  if training:
    indices = indices.shuffle(len(arrays.labels), seed=seed, reshuffle_each_iteration=True)
  options = tf.data.Options()
  options.autotune.enabled = False
  return (indices.batch(batch_size)
          .map(lambda i: (tf.gather(images, i), tf.gather(one_hot, i)))
          .prefetch(PREFETCH_BATCHES)
          .with_options(options))
