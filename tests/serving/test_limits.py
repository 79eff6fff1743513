"""Declared sizes are checked before anything is allocated; defaults take what TF Serving takes."""

from __future__ import annotations

import json
import threading
import time
from typing import List, Tuple

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_service_pb2_grpc

from serving import codec, limits
from tests.serving.conftest import MNIST_DIR, memory_kb, reference_predict
from tests.serving.helpers import bad_request_message, call
from trainer import features, idx

IMAGE_SHAPE = (None, features.IMAGE_HEIGHT, features.IMAGE_WIDTH)


def tensor(dtype: int, shape, **values) -> tensor_pb2.TensorProto:
  dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape]
  return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims),
                                **values)


# --- the checks on their own ------------------------------------------------------------------

def test_a_56_byte_request_declaring_1e8_strings_is_refused_unread():
  request = predict_pb2.PredictRequest()
  request.model_spec.name = 'mnist'
  request.inputs[features.EXAMPLES_INPUT].CopyFrom(
      tensor(types_pb2.DT_STRING, [10 ** 8], string_val=[b'x']))
  assert request.ByteSize() <= 56
  message = bad_request_message(lambda: limits.check_tensor_proto(
      features.EXAMPLES_INPUT, request.inputs[features.EXAMPLES_INPUT], types_pb2.DT_STRING,
      (None,), limits.Limits()))
  assert 'shape [100000000]' in message and 'bytes once decoded' in message, message


@pytest.mark.parametrize('proto, text', [
    (tensor(types_pb2.DT_FLOAT, [10 ** 9], float_val=[1.0]), 'has shape [1000000000] but the '
     'signature expects [-1,28,28]'),
    (tensor(types_pb2.DT_FLOAT, [10 ** 6, 28, 28], float_val=[1.0]), 'bytes once decoded'),
    (tensor(types_pb2.DT_FLOAT, [2, 28, 28], tensor_content=b'\0' * 12), 'bytes of tensor_content'),
    (tensor(types_pb2.DT_FLOAT, [1, 28, 28], float_val=[0.0] * 785), 'carries 785 values'),
    (tensor(types_pb2.DT_FLOAT, [-1, 28, 28]), 'negative dimension'),
    (tensor(types_pb2.DT_DOUBLE, [1, 28, 28]), 'expects DT_FLOAT but DT_DOUBLE'),
])
def test_tensor_protos_are_checked_from_their_header(proto, text):
  message = bad_request_message(lambda: limits.check_tensor_proto('image', proto, types_pb2.DT_FLOAT,
                                                      IMAGE_SHAPE, limits.Limits()))
  assert text in message, message


def test_a_fitting_tensor_proto_passes_and_reports_its_size():
  proto = tf.make_tensor_proto(np.zeros((3, 28, 28), np.float32))
  assert limits.check_tensor_proto('image', proto, types_pb2.DT_FLOAT, IMAGE_SHAPE,
                                   limits.Limits()) == 3 * 28 * 28 * 4
  message = bad_request_message(lambda: limits.check_tensor_proto(
      'image', proto, types_pb2.DT_FLOAT, IMAGE_SHAPE, limits.Limits(max_batch_size=2)))
  assert 'maximum batch size of 2' in message
  assert limits.DT_STRING == types_pb2.DT_STRING   # kept as a number: no TensorFlow import


def test_json_nesting_declares_a_shape_checked_before_the_array_is_built():
  specs = {'image': (4, IMAGE_SHAPE)}
  deep: list = [0]
  for _ in range(500):
    deep = [deep]
  message = bad_request_message(lambda: codec.predict_inputs(
      {'instances': deep}, {'image': np.dtype(np.float32)},
      lambda values: limits.check_json_inputs(values, specs, limits.Limits())))
  assert 'but the signature expects [-1,28,28]' in message
  small = limits.Limits(max_input_bytes=10 * 28 * 28 * 4)
  image = [[0] * 28] * 28
  message = bad_request_message(lambda: limits.check_json_inputs({'image': [image] * 11}, specs, small))
  assert 'shape [11,28,28]' in message and 'bytes once decoded' in message


def test_a_context_merged_into_many_examples_counts_once_per_example():
  doc = {'context': {'pad': 'x' * 100_000}, 'examples': [{}] * 1000}
  message = bad_request_message(lambda: codec.examples(doc, limits.Limits(max_input_bytes=10 ** 7)))
  assert '1000 examples' in message and 'bytes once decoded' in message


# --- against a running server -----------------------------------------------------------------

ATTACKERS = 8
ROUNDS = 8          # 64 malicious requests in all


def _grpc_attacks() -> List[Tuple[str, object, str]]:
  """(method, request, text the refusal must contain)."""
  strings = predict_pb2.PredictRequest()
  strings.model_spec.name = 'mnist'
  strings.model_spec.signature_name = features.SERVING_TF_EXAMPLE
  strings.inputs[features.EXAMPLES_INPUT].CopyFrom(
      tensor(types_pb2.DT_STRING, [10 ** 8], string_val=[b'x']))
  flat = predict_pb2.PredictRequest()
  flat.model_spec.name = 'mnist'
  flat.inputs[features.PIXELS_INPUT].CopyFrom(tensor(types_pb2.DT_FLOAT, [10 ** 9],
                                                     float_val=[1.0]))
  filled = predict_pb2.PredictRequest()
  filled.model_spec.name = 'mnist'
  filled.inputs[features.PIXELS_INPUT].CopyFrom(tensor(types_pb2.DT_FLOAT, [10 ** 6, 28, 28],
                                                       float_val=[1.0]))
  context = classification_pb2.ClassificationRequest()
  context.model_spec.name = 'mnist'
  context.model_spec.signature_name = features.SERVING_TF_EXAMPLE
  with_context = context.input.example_list_with_context
  with_context.context.features.feature['pad'].bytes_list.value.append(b'x' * 1_000_000)
  for _ in range(100_000):
    with_context.examples.add()
  return [('Predict', strings, 'bytes once decoded'),
          ('Predict', flat, 'signature expects [-1,28,28]'),
          ('Predict', filled, 'bytes once decoded'),
          ('Classify', context, '100000 examples')]


def _rest_attacks() -> List[Tuple[str, bytes, str]]:
  deep = '[' * 600 + '0' + ']' * 600
  return [(':classify', json.dumps({'signature_name': features.SERVING_TF_EXAMPLE,
                                    'context': {'pad': 'x' * 1_000_000},
                                    'examples': [{}] * 40_000}).encode(), '40000 examples'),
          (':predict', ('{"instances": %s}' % deep).encode(), 'signature expects')]


def test_parallel_malicious_requests_leave_memory_bounded_and_others_served(
    default_server, reference, mnist_test):
  """Each would allocate gigabytes if decoded; refused from the declared sizes instead."""
  pid = default_server.process.pid
  before = memory_kb(pid)
  grpc_attacks, rest_attacks = _grpc_attacks(), _rest_attacks()
  refusals: List[Tuple[str, str]] = []
  unexpected: List[str] = []
  served: List[int] = []
  lock = threading.Lock()
  done = threading.Event()

  def attacker(i: int) -> None:
    with grpc.insecure_channel(default_server.grpc_target,
                               options=[('grpc.max_send_message_length', -1)]) as channel:
      stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
      for r in range(ROUNDS):
        if (i + r) % 3 == 2:
          suffix, body, text = rest_attacks[(i + r) % len(rest_attacks)]
          status, answer = call(f'{default_server.rest_url}/v1/models/mnist{suffix}', raw=body)
          outcome = (str(status), answer.get('error', '') if isinstance(answer, dict) else answer)
          ok = status == 400
        else:
          method, request, text = grpc_attacks[(i + r) % len(grpc_attacks)]
          try:
            getattr(stub, method)(request, timeout=60)
            outcome, ok = ('OK', ''), False
          except grpc.RpcError as e:
            outcome = (e.code().name, e.details())
            ok = e.code() == grpc.StatusCode.INVALID_ARGUMENT
        with lock:
          if ok and text in outcome[1]:
            refusals.append(outcome)
          else:
            unexpected.append(f'{text!r} expected, got {outcome[0]}: {outcome[1][:300]}')

  def honest_client() -> None:
    images = mnist_test.images[:4]
    expected = reference_predict(reference, 2, images)[features.CLASSES_OUTPUT].tolist()
    deadline = time.monotonic() + 120
    while not done.is_set() and time.monotonic() < deadline:
      status, body = call(f'{default_server.rest_url}/v1/models/mnist:predict',
                          {'instances': images.tolist()})
      with lock:
        if status == 200 and [p['classes'] for p in body['predictions']] == expected:
          served.append(status)
        else:
          unexpected.append(f'honest client got {status}: {str(body)[:300]}')

  honest = threading.Thread(target=honest_client)
  honest.start()
  threads = [threading.Thread(target=attacker, args=(i,)) for i in range(ATTACKERS)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join(timeout=180)
  done.set()
  honest.join(timeout=60)
  after = memory_kb(pid)
  assert not unexpected, unexpected[:5]
  assert len(refusals) == ATTACKERS * ROUNDS
  assert served, 'the honest client got no answer while the attack ran'
  grown_mb = (after['VmHWM'] - before['VmHWM']) / 1024
  assert grown_mb < 200, f'peak RSS grew by {grown_mb:.0f} MB ({before} -> {after})'


@pytest.fixture(scope='module')
def thousand_images() -> np.ndarray:
  return idx.load_source(MNIST_DIR, 'test', 1000).images


def test_a_thousand_images_over_rest_with_defaults(default_server, reference, thousand_images):
  body = json.dumps({'instances': thousand_images.tolist()}).encode()
  assert len(body) > 2_500_000
  status, answer = call(f'{default_server.rest_url}/v1/models/mnist:predict', raw=body)
  assert status == 200, str(answer)[:300]
  expected = reference_predict(reference, 2, thousand_images)[features.CLASSES_OUTPUT]
  np.testing.assert_array_equal([p['classes'] for p in answer['predictions']], expected)


def test_a_thousand_images_over_grpc_with_defaults(default_server, reference, thousand_images):
  request = predict_pb2.PredictRequest()
  request.model_spec.name = 'mnist'
  request.inputs[features.PIXELS_INPUT].CopyFrom(
      tf.make_tensor_proto(thousand_images.astype(np.float32)))
  with grpc.insecure_channel(default_server.grpc_target) as channel:
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request,
                                                                                   timeout=60)
  expected = reference_predict(reference, 2, thousand_images)
  np.testing.assert_array_equal(tf.make_ndarray(response.outputs[features.CLASSES_OUTPUT]),
                                expected[features.CLASSES_OUTPUT])
