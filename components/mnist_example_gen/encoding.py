"""MNIST rows -> serialized tf.Examples (`image`: 784 int64 pixels, `label` and `span`:
int64).

Encoded a chunk at a time by tfx_bsl's C++ coder from an Arrow batch: building one
`tf.train.Example` proto per image in Python took 6 of ExampleGen's 13 s on the full data.
No TensorFlow or Beam import: tests can use it without the executor's dependencies.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np
import pyarrow as pa
from tfx_bsl.coders import example_coder

from trainer import features


def _int64_lists(values: np.ndarray) -> pa.ListArray:
  """Rows of `values` ([n, k]) as an Arrow list<int64> column."""
  rows, width = values.shape
  offsets = np.arange(0, rows * width + 1, width, dtype=np.int32)
  return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.reshape(-1), pa.int64()))


def to_examples(images: np.ndarray, labels: np.ndarray,
                spans: Optional[np.ndarray] = None) -> List[bytes]:
  """`images` [n, 28, 28] (or [n, 784]), `labels` [n] and `spans` [n] (default: all from
  the base files) -> n serialized tf.Examples."""
  images = np.asarray(images).reshape(len(images), features.IMAGE_PIXELS)
  labels = np.asarray(labels).reshape(len(labels), 1)
  spans = (np.full((len(labels), 1), features.BASE_SPAN) if spans is None
           else np.asarray(spans).reshape(len(labels), 1))
  batch = pa.RecordBatch.from_arrays(
      [_int64_lists(images), _int64_lists(labels), _int64_lists(spans)],
      [features.IMAGE_KEY, features.LABEL_KEY, features.SPAN_KEY])
  return example_coder.RecordBatchToExamples(batch)


def to_example(image: np.ndarray, label: int, span: int = features.BASE_SPAN) -> bytes:
  return to_examples(np.asarray(image)[None], np.array([label]), np.array([span]))[0]
