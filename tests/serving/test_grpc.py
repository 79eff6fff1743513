"""The gRPC API through the official tensorflow-serving-api stubs, unchanged."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from tests.serving.conftest import MAX_BATCH, reference_predict
from trainer import features


@pytest.fixture(scope='module')
def channel(server):
  with grpc.insecure_channel(server.grpc_target) as ch:
    grpc.channel_ready_future(ch).result(timeout=30)
    yield ch


@pytest.fixture(scope='module')
def predictions(channel):
  return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope='module')
def models(channel):
  return model_service_pb2_grpc.ModelServiceStub(channel)


def predict_request(images, version=None, label=None, signature=features.SERVING_DEFAULT):
  request = predict_pb2.PredictRequest()
  request.model_spec.name = 'mnist'
  request.model_spec.signature_name = signature
  if version is not None:
    request.model_spec.version.value = version
  if label:
    request.model_spec.version_label = label
  request.inputs[features.PIXELS_INPUT].CopyFrom(
      tf.make_tensor_proto(np.asarray(images, np.float32)))
  return request


@pytest.mark.parametrize('version, label, expected_version', [
    (None, None, 2), (1, None, 1), (2, None, 2), (None, 'stable', 1), (None, 'canary', 2)])
def test_predict_equals_in_process(predictions, reference, mnist_test, version, label,
                                   expected_version):
  images = mnist_test.images[:20]
  response = predictions.Predict(predict_request(images, version, label), timeout=30)
  expected = reference_predict(reference, expected_version, images)
  assert response.model_spec.name == 'mnist'
  assert response.model_spec.version.value == expected_version
  assert response.model_spec.signature_name == features.SERVING_DEFAULT
  for key in (features.CLASSES_OUTPUT, features.PROBABILITIES_OUTPUT):
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs[key]), expected[key])


def test_predict_output_filter(predictions, mnist_test):
  request = predict_request(mnist_test.images[:2])
  request.output_filter.append(features.CLASSES_OUTPUT)
  response = predictions.Predict(request, timeout=30)
  assert list(response.outputs) == [features.CLASSES_OUTPUT]


def test_classify_equals_in_process(predictions, reference, mnist_test):
  images = mnist_test.images[:6]
  request = classification_pb2.ClassificationRequest()
  request.model_spec.name = 'mnist'
  request.model_spec.signature_name = features.SERVING_TF_EXAMPLE
  request.model_spec.version.value = 1
  for image in images:
    example = request.input.example_list.examples.add()
    example.features.feature[features.IMAGE_KEY].int64_list.value.extend(
        image.reshape(-1).tolist())
  response = predictions.Classify(request, timeout=30)
  expected = reference_predict(reference, 1, images)[features.PROBABILITIES_OUTPUT]
  assert len(response.result.classifications) == 6
  for classifications, probs in zip(response.result.classifications, expected):
    assert [c.label for c in classifications.classes] == [str(i) for i in range(10)]
    np.testing.assert_array_equal(np.array([c.score for c in classifications.classes],
                                           np.float32), probs)


def test_get_model_metadata(predictions):
  request = get_model_metadata_pb2.GetModelMetadataRequest()
  request.model_spec.name = 'mnist'
  request.metadata_field.append('signature_def')
  response = predictions.GetModelMetadata(request, timeout=30)
  assert response.model_spec.version.value == 2
  defs = get_model_metadata_pb2.SignatureDefMap()
  assert response.metadata['signature_def'].Unpack(defs)
  image = defs.signature_def[features.SERVING_DEFAULT].inputs[features.PIXELS_INPUT]
  assert image.dtype == tf.float32.as_datatype_enum
  assert [d.size for d in image.tensor_shape.dim] == [-1, 28, 28]
  assert (defs.signature_def[features.SERVING_TF_EXAMPLE].method_name
          == features.CLASSIFY_METHOD_NAME)


def test_get_model_status(models):
  request = get_model_status_pb2.GetModelStatusRequest()
  request.model_spec.name = 'mnist'
  response = models.GetModelStatus(request, timeout=30)
  available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
  assert [(s.version, s.state, s.status.error_code) for s in response.model_version_status] == [
      (2, available, 0), (1, available, 0)]
  request.model_spec.version_label = 'stable'
  response = models.GetModelStatus(request, timeout=30)
  assert [s.version for s in response.model_version_status] == [1]


def _error(call):
  with pytest.raises(grpc.RpcError) as info:
    call()
  return info.value.code(), info.value.details()


def test_errors_have_tf_serving_codes(predictions, models, mnist_test):
  def predict(**kwargs):
    return lambda: predictions.Predict(predict_request(mnist_test.images[:1], **kwargs),
                                       timeout=30)
  assert _error(predict(version=9)) == (grpc.StatusCode.NOT_FOUND,
                                        'Servable not found for request: Specific(mnist, 9)')
  code, details = _error(predict(label='nope'))
  assert code == grpc.StatusCode.INVALID_ARGUMENT and 'Unrecognized servable version label' in details
  code, details = _error(predict(signature='nope'))
  assert code == grpc.StatusCode.INVALID_ARGUMENT and 'not found in signature def' in details

  request = predict_request(mnist_test.images[:1])
  request.model_spec.name = 'other'
  assert _error(lambda: predictions.Predict(request, timeout=30))[0] == grpc.StatusCode.NOT_FOUND

  request = predict_request(mnist_test.images[:1])
  request.inputs[features.PIXELS_INPUT].CopyFrom(tf.make_tensor_proto(np.zeros((1, 28, 28))))
  code, details = _error(lambda: predictions.Predict(request, timeout=30))
  assert code == grpc.StatusCode.INVALID_ARGUMENT and 'DT_FLOAT' in details

  request = predict_request(np.zeros((1, 27, 28)))
  code, details = _error(lambda: predictions.Predict(request, timeout=30))
  assert code == grpc.StatusCode.INVALID_ARGUMENT and 'shape [1,27,28]' in details

  request = predict_request(mnist_test.images[:1])
  request.inputs['extra'].CopyFrom(tf.make_tensor_proto(np.zeros(1)))
  code, details = _error(lambda: predictions.Predict(request, timeout=30))
  assert code == grpc.StatusCode.INVALID_ARGUMENT and 'Sent extra: {extra}' in details

  request = predict_request(np.zeros((MAX_BATCH + 1, 28, 28)))
  code, details = _error(lambda: predictions.Predict(request, timeout=30))
  assert code == grpc.StatusCode.INVALID_ARGUMENT and 'maximum batch size' in details

  request = get_model_metadata_pb2.GetModelMetadataRequest()
  request.model_spec.name = 'mnist'
  code, _ = _error(lambda: predictions.GetModelMetadata(request, timeout=30))
  assert code == grpc.StatusCode.INVALID_ARGUMENT

  status_request = get_model_status_pb2.GetModelStatusRequest()
  status_request.model_spec.name = 'other'
  assert _error(lambda: models.GetModelStatus(status_request, timeout=30))[0] == (
      grpc.StatusCode.NOT_FOUND)


def test_message_over_the_limit_is_resource_exhausted(predictions):
  request = predict_request(np.zeros((1000, 28, 28)))  # 3 MB > the 2 MB limit
  assert _error(lambda: predictions.Predict(request, timeout=30))[0] == (
      grpc.StatusCode.RESOURCE_EXHAUSTED)
