"""The training input pipeline over in-memory arrays."""

import numpy as np

from trainer import data


def _epoch(dataset):
  images, labels = zip(*dataset.as_numpy_iterator())
  return np.concatenate(images), np.concatenate(labels)


def test_each_epoch_is_every_example_once_reshuffled_when_training():
  n = 300
  images = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 28, 28, 1),
                                                                          np.float32)
  labels = np.arange(n) % 10
  dataset = data.make_dataset(data.Arrays(images, labels), batch_size=64, training=True,
                              seed=0)
  assert [len(b[0]) for b in dataset.as_numpy_iterator()] == [64, 64, 64, 64, 44]
  orders = []
  for _ in range(2):
    batch_images, one_hot = _epoch(dataset)
    order = batch_images[:, 0, 0, 0].astype(int)
    assert sorted(order) == list(range(n))  # a permutation: nothing lost or repeated
    np.testing.assert_array_equal(one_hot.argmax(axis=1), labels[order])  # pairs intact
    orders.append(order.tolist())
  assert orders[0] != orders[1] and orders[0] != list(range(n))

  evaluation = data.make_dataset(data.Arrays(images, labels), 64, training=False, seed=0)
  assert _epoch(evaluation)[0][:, 0, 0, 0].astype(int).tolist() == list(range(n))
