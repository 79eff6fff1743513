"""TF Serving's warm-up file for an exported model: real images as predict requests.

TF Serving replays `assets.extra/tf_serving_warmup_requests` (PredictionLog records) before a
version serves, so its first real requests do not pay for graph initialization; `python -m
serving` reads the same file (serving/warmup.py). The export writes it with held-out images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from trainer import features, serving_layout


def write_warmup_file(version_dir: Path, images: Sequence[np.ndarray],
                      model_name: str = 'mnist') -> Path:
  """Writes one predict request per 28x28 uint8 image (serving_default, batch of one)."""
  pixels = np.asarray(images)
  if pixels.ndim != 3 or pixels.shape[1:] != (features.IMAGE_HEIGHT, features.IMAGE_WIDTH):
    raise ValueError(f'expected images of shape [n, 28, 28], got {list(pixels.shape)}')
  if not 0 < len(pixels) <= serving_layout.WARMUP_MAX_RECORDS:
    most = serving_layout.WARMUP_MAX_RECORDS
    raise ValueError(f'expected 1 to {most} images (TF Serving replays at most {most}), '
                     f'got {len(pixels)}')
  path = Path(version_dir) / serving_layout.WARMUP_REQUESTS
  path.parent.mkdir(parents=True, exist_ok=True)
  with tf.io.TFRecordWriter(str(path)) as writer:
    for image in pixels:
      request = predict_pb2.PredictRequest()
      request.model_spec.name = model_name
      request.model_spec.signature_name = features.SERVING_DEFAULT
      request.inputs[features.PIXELS_INPUT].CopyFrom(
          tf.make_tensor_proto(image[np.newaxis].astype(np.float32)))
      record = prediction_log_pb2.PredictionLog()
      record.predict_log.request.CopyFrom(request)
      writer.write(record.SerializeToString())
  return path
