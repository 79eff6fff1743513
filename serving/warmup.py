"""TF Serving's SavedModel warm-up: replay recorded requests before a version serves.

A version may carry `assets.extra/tf_serving_warmup_requests`, a TFRecord file of
`tensorflow.serving.PredictionLog` records. As in TF Serving 2.16.1
(servables/tensorflow/saved_model_warmup_util.cc and saved_model_warmup.cc), each record's
request (predict, classify or regress) runs once against the freshly loaded version before
it becomes available, at most 1000 records; a record that does not parse, a file that is
not TFRecord, an unsupported log type or a failing request fails the load of that version,
which then reports END with the error while the versions already serving stay.

The export writes the file (trainer/warmup_requests.py) with real held-out images.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterator

import grpc
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow_serving.apis import prediction_log_pb2

from serving import metrics, tensors
from serving.errors import ServingError
from serving.servable import Servable
from trainer import serving_layout

log = logging.getLogger(__name__)

MAX_RECORDS = serving_layout.WARMUP_MAX_RECORDS   # WarmupConsts::kMaxNumRecords


def warmup_path(version_dir: Path) -> Path:
  return Path(version_dir) / serving_layout.WARMUP_REQUESTS


def _records(path: Path) -> Iterator[bytes]:
  try:
    for record in tf.data.TFRecordDataset(str(path)):
      yield record.numpy()
  except tf.errors.DataLossError as e:
    raise ServingError(grpc.StatusCode.DATA_LOSS,
                       f'{e.message}. Please verify your warmup data is in TFRecord format.'
                       ) from None


def _replay_one(servable: Servable, record: prediction_log_pb2.PredictionLog) -> None:
  kind = record.WhichOneof('log_type')
  if kind == 'predict_log':
    request = record.predict_log.request
    name = request.model_spec.signature_name
    inputs = tensors.predict_inputs(servable.signature(name), request.inputs, servable.limits)
    servable.predict(name, inputs, request.output_filter, record=False)
  elif kind == 'classify_log':
    request = record.classify_log.request
    servable.classify(request.model_spec.signature_name,
                      tensors.examples(request.input, servable.limits), record=False)
  elif kind == 'regress_log':
    request = record.regress_log.request
    servable.regress(request.model_spec.signature_name,
                     tensors.examples(request.input, servable.limits), record=False)
  else:
    raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f'Unsupported log_type for warmup: {kind}')


def replay(servable: Servable) -> int:
  """Replays the version's warm-up file, if it has one; returns how many records ran."""
  path = warmup_path(servable.path)
  if not path.is_file():
    return 0
  start = time.monotonic()
  count, status = 0, 'UNKNOWN'
  try:
    for data in _records(path):
      count += 1
      if count > MAX_RECORDS:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f'Number of warmup records exceeds the maximum ({MAX_RECORDS}) at '
                           f'{path}')
      try:
        record = prediction_log_pb2.PredictionLog.FromString(data)
      except DecodeError:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f'Failed to parse warmup record {count} from {path}') from None
      try:
        _replay_one(servable, record)
      except ServingError as e:
        raise ServingError(e.code, f'Warmup record {count} from {path} failed: {e.message}'
                           ) from None
    status = 'OK'
  except ServingError as e:
    status = e.code.name
    raise
  finally:
    metrics.record_warmup(servable.name, servable.version, str(servable.path), status,
                          count if status == 'OK' else 0, time.monotonic() - start)
  log.info('Warmed up %s version %d: replayed %d warmup records from %s in %.2fs',
           servable.name, servable.version, count, path, time.monotonic() - start)
  return count
