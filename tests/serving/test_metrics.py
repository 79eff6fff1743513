"""The Prometheus page: TF Serving's metric names, ours beside them, and counts that move."""

from __future__ import annotations

import collections

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_service_pb2_grpc

from serving import metrics
from tests.serving import metrics_helpers as m
from tests.serving.conftest import reference_predict
from tests.serving.helpers import call
from trainer import features

REQUEST_COUNT = ':tensorflow:serving:request_count'
REQUEST_LATENCY = ':tensorflow:serving:request_latency'


@pytest.fixture(scope='module')
def stub(default_server):
  with grpc.insecure_channel(default_server.grpc_target) as channel:
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def test_counts_move_with_rest_and_grpc_requests(default_server, stub, reference, mnist_test):
  rest_images, grpc_images, classify_images = (mnist_test.images[:3], mnist_test.images[3:5],
                                               mnist_test.images[5:7])
  before = m.scrape(default_server.rest_url)

  status, _ = call(f'{default_server.rest_url}/v1/models/mnist:predict',
                   {'instances': rest_images.tolist()})
  assert status == 200
  status, _ = call(f'{default_server.rest_url}/v1/models/mnist:predict',
                   {'signature_name': 'nope', 'instances': rest_images.tolist()})
  assert status == 400
  request = predict_pb2.PredictRequest()
  request.model_spec.name = 'mnist'
  request.inputs[features.PIXELS_INPUT].CopyFrom(tf.make_tensor_proto(
      grpc_images.astype(np.float32)))
  stub.Predict(request, timeout=30)
  classify = classification_pb2.ClassificationRequest()
  classify.model_spec.name = 'mnist'
  classify.model_spec.signature_name = features.SERVING_TF_EXAMPLE
  for image in classify_images:
    classify.input.example_list.examples.add().features.feature[
        features.IMAGE_KEY].int64_list.value.extend(image.reshape(-1).tolist())
  stub.Classify(classify, timeout=30)

  after = m.scrape(default_server.rest_url)
  assert m.delta(before, after, REQUEST_COUNT, model_name='mnist', status='OK') == 3
  assert m.delta(before, after, REQUEST_COUNT, model_name='mnist', status='INVALID_ARGUMENT') == 1
  for api, entrypoint in (('predict', 'REST'), ('Predict', 'GRPC'), ('Classify', 'GRPC')):
    assert m.delta(before, after, REQUEST_LATENCY + '_count', model_name='mnist', API=api,
                   entrypoint=entrypoint) == 1, (api, entrypoint)
    assert m.delta(before, after, REQUEST_LATENCY + '_bucket', model_name='mnist', API=api,
                   entrypoint=entrypoint, le='+Inf') == 1
  assert m.delta(before, after, 'serving_predictions_total', model_name='mnist',
                 version='2') == 7
  expected = collections.Counter(reference_predict(
      reference, 2, np.concatenate([rest_images, grpc_images, classify_images])
  )[features.CLASSES_OUTPUT].tolist())
  moved = {label: m.delta(before, after, 'serving_predicted_class_total', model_name='mnist',
                          version='2', **{'class': str(label)}) for label in range(10)}
  assert {k: v for k, v in moved.items() if v} == dict(expected)


def test_load_metrics_use_tf_serving_names(default_server):
  samples = m.scrape(default_server.rest_url)
  loaded = {dict(labels)['model_path'] for (name, labels), v in samples.items()
            if name == ':tensorflow:cc:saved_model:load_attempt_count'
            and dict(labels)['status'] == 'success' and v >= 1}
  assert {path.rsplit('/', 1)[-1] for path in loaded} == {'2'}   # latest policy: version 2
  assert m.total(samples, ':tensorflow:cc:saved_model:load_latency') > 0
  # Latencies in microseconds with TF Serving's buckets (10 x 1.8^i).
  assert (REQUEST_LATENCY + '_bucket', (('API', 'predict'), ('entrypoint', 'REST'), ('le', '10.0'),
                                        ('model_name', 'mnist'))) in samples


def test_count_correction_is_exposed():
  before = m.parse(metrics.exposition().decode())
  metrics.count_correction('mnist')
  metrics.count_correction('mnist', 2)
  after = m.parse(metrics.exposition().decode())
  assert m.delta(before, after, 'serving_corrections_received_total', model_name='mnist') == 3
