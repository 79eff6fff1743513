"""Warm-up files: written as TF Serving reads them, replayed before a version serves, and a
corrupt one fails only its own version."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from trainer.warmup_requests import write_warmup_file
from serving import metrics, process, warmup
from serving.batching import BatchingParameters
from serving.errors import ServingError
from serving.limits import Limits
from serving.servable import Servable
from tests.serving import metrics_helpers as m
from tests.serving.conftest import MODEL_NAME, push, reference_predict
from tests.serving.helpers import call
from trainer import features

WARMUP_IMAGES = 5


def test_written_records_are_prediction_logs_of_the_images(tmp_path, mnist_test):
  images = mnist_test.images[:3]
  path = write_warmup_file(tmp_path, images)
  assert path == tmp_path / 'assets.extra' / 'tf_serving_warmup_requests'
  records = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
             for r in tf.data.TFRecordDataset(str(path))]
  assert len(records) == 3
  for record, image in zip(records, images):
    request = record.predict_log.request
    assert request.model_spec.signature_name == features.SERVING_DEFAULT
    np.testing.assert_array_equal(tf.make_ndarray(request.inputs[features.PIXELS_INPUT]),
                                  image[np.newaxis].astype(np.float32))


def test_writer_refuses_what_tf_serving_would_not_replay(tmp_path):
  with pytest.raises(ValueError, match='at most 1000'):
    write_warmup_file(tmp_path, np.zeros((1001, 28, 28), np.uint8))
  with pytest.raises(ValueError, match=r'\[n, 28, 28\]'):
    write_warmup_file(tmp_path, np.zeros((2, 28, 27), np.uint8))


@pytest.fixture(scope='module')
def servable_dir(model_v1: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
  target = tmp_path_factory.mktemp('warm') / 'model'
  shutil.copytree(model_v1, target)
  return target


def test_replay_runs_every_record_and_refuses_bad_ones(servable_dir, mnist_test):
  servable = Servable.load(MODEL_NAME, 1, servable_dir, Limits())
  write_warmup_file(servable_dir, mnist_test.images[:4])
  assert warmup.replay(servable) == 4

  path = warmup.warmup_path(servable_dir)
  with tf.io.TFRecordWriter(str(path)) as writer:
    writer.write(b'\xff not a PredictionLog')
  with pytest.raises(ServingError, match='Failed to parse warmup record 1'):
    warmup.replay(servable)

  with tf.io.TFRecordWriter(str(path)) as writer:
    writer.write(prediction_log_pb2.PredictionLog(
        session_run_log=prediction_log_pb2.SessionRunLog()).SerializeToString())
  with pytest.raises(ServingError, match='Unsupported log_type for warmup: session_run_log'):
    warmup.replay(servable)

  record = prediction_log_pb2.PredictionLog()
  record.predict_log.request.inputs[features.PIXELS_INPUT].CopyFrom(
      tf.make_tensor_proto(np.zeros((1, 27, 28), np.float32)))
  with tf.io.TFRecordWriter(str(path)) as writer:
    writer.write(record.SerializeToString())
  with pytest.raises(ServingError, match='Warmup record 1 .* failed: .*shape'):
    warmup.replay(servable)

  path.write_bytes(b'this is no TFRecord file')
  with pytest.raises(ServingError, match='TFRecord format'):
    warmup.replay(servable)


def test_replay_with_batching_runs_the_model_straight_and_is_not_counted(servable_dir,
                                                                           mnist_test):
  """A replay is no client's request: with batching on it neither waits in the batch queue
  (here 60 s for a batch that never fills) nor counts as a prediction."""
  servable = Servable.load(MODEL_NAME, 1, servable_dir, Limits(), BatchingParameters(
      max_batch_size=8, batch_timeout_micros=60_000_000, num_batch_threads=1))
  try:
    write_warmup_file(servable_dir, mnist_test.images[:3])
    predictions = metrics.REGISTRY.get_sample_value(
        'serving_predictions_total', {'model_name': MODEL_NAME, 'version': '1'}) or 0
    start = time.monotonic()
    assert warmup.replay(servable) == 3
    assert time.monotonic() - start < 30
    assert (metrics.REGISTRY.get_sample_value(
        'serving_predictions_total', {'model_name': MODEL_NAME, 'version': '1'}) or 0
            ) == predictions
  finally:
    servable.close()


@pytest.fixture(scope='module')
def warm_server(model_v1, model_v2, mnist_test, tmp_path_factory):
  """Version 1 with a good warm-up file, version 2 (newer) with a corrupt one."""
  root = tmp_path_factory.mktemp('serving-warm')
  good = push(model_v1, root, 1)
  write_warmup_file(good, mnist_test.images[:WARMUP_IMAGES])
  broken = push(model_v2, root, 2)
  warmup.warmup_path(broken).parent.mkdir(parents=True, exist_ok=True)
  warmup.warmup_path(broken).write_bytes(b'\x00' * 7 + b'not a TFRecord file')
  with process.start_server(root, MODEL_NAME) as running:
    yield running


def test_good_file_replayed_corrupt_file_fails_only_its_version(warm_server, reference,
                                                                mnist_test):
  status, body = call(f'{warm_server.rest_url}/v1/models/mnist')
  assert status == 200
  states = {s['version']: s for s in body['model_version_status']}
  assert states['1']['state'] == 'AVAILABLE'
  assert states['2']['state'] == 'END'
  assert states['2']['status']['error_code'] == 'DATA_LOSS'
  assert 'TFRecord format' in states['2']['status']['error_message']

  log = warm_server.log_text()
  assert f'replayed {WARMUP_IMAGES} warmup records' in log
  assert 'Failed to load mnist version 2' in log

  samples = m.scrape(warm_server.rest_url)
  assert m.value(samples, 'serving_warmup_requests_total', model_name='mnist',
                 version='1') == WARMUP_IMAGES
  assert m.total(samples, ':tensorflow:serving:model_warmup_latency_count', status='OK') == 1
  assert m.total(samples, ':tensorflow:serving:model_warmup_latency_count',
                 status='DATA_LOSS') == 1
  assert m.total(samples, 'serving_predictions_total') == 0   # replays are not predictions

  images = mnist_test.images[:3]
  status, body = call(f'{warm_server.rest_url}/v1/models/mnist:predict',
                      {'instances': images.tolist()})
  assert status == 200
  assert [p['classes'] for p in body['predictions']] == reference_predict(
      reference, 1, images)[features.CLASSES_OUTPUT].tolist()
