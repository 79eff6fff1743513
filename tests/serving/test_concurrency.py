"""Many clients at once, over both protocols: every answer correct, none failed."""

from __future__ import annotations

import threading
from typing import List, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.serving.conftest import reference_predict
from tests.serving.helpers import call
from trainer import features

CLIENTS = 16
REQUESTS_PER_CLIENT = 8


def test_sixteen_clients_mixed_protocols(server, reference, mnist_test):
  rng = np.random.default_rng(0)
  plans = [[(int(rng.integers(0, 190)), int(rng.integers(1, 9)), int(rng.integers(1, 3)))
            for _ in range(REQUESTS_PER_CLIENT)] for _ in range(CLIENTS)]
  results: List[Tuple[str, int, int, int, object]] = []
  errors: List[str] = []
  lock = threading.Lock()

  def rest_client(plan) -> None:
    for start, size, version in plan:
      images = mnist_test.images[start:start + size]
      status, body = call(f'{server.rest_url}/v1/models/mnist/versions/{version}:predict',
                          {'instances': images.tolist()})
      with lock:
        if status != 200:
          errors.append(f'REST {status}: {body}')
        else:
          results.append(('rest', start, size, version, body['predictions']))

  def grpc_client(plan) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
      stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
      for start, size, version in plan:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = 'mnist'
        request.model_spec.version.value = version
        request.inputs[features.PIXELS_INPUT].CopyFrom(tf.make_tensor_proto(
            mnist_test.images[start:start + size].astype(np.float32)))
        try:
          response = stub.Predict(request, timeout=60)
        except grpc.RpcError as e:
          with lock:
            errors.append(f'gRPC {e.code()}: {e.details()}')
          continue
        with lock:
          results.append(('grpc', start, size, version,
                          tf.make_ndarray(response.outputs[features.PROBABILITIES_OUTPUT])))

  threads = [threading.Thread(target=rest_client if i % 4 else grpc_client, args=(plan,))
             for i, plan in enumerate(plans)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join(timeout=120)
  assert not errors, errors[:5]
  assert len(results) == CLIENTS * REQUESTS_PER_CLIENT
  for protocol, start, size, version, answer in results:
    expected = reference_predict(reference, version, mnist_test.images[start:start + size])
    if protocol == 'rest':
      probs = np.array([row[features.PROBABILITIES_OUTPUT] for row in answer], np.float32)
      np.testing.assert_array_equal([row[features.CLASSES_OUTPUT] for row in answer],
                                    expected[features.CLASSES_OUTPUT])
    else:
      probs = answer
    np.testing.assert_allclose(probs, expected[features.PROBABILITIES_OUTPUT], rtol=0, atol=1e-6)
  status, body = call(f'{server.rest_url}/v1/models/mnist')
  assert status == 200 and len(body['model_version_status']) == 2
