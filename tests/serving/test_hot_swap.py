"""Versions appearing while clients are predicting: swap without a failed request, skip
folders that are incomplete or broken, and keep serving the current version."""

from __future__ import annotations

import http.client
import json
import shutil
import threading
import time
from pathlib import Path
from typing import List, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving import process
from tests.serving.conftest import push, reference_predict
from tests.serving.helpers import call
from trainer import features


def rest_loop(port: int, images: np.ndarray, stop: threading.Event,
              answers: List[Tuple[float, int, object]]) -> None:
  """Predicts back to back on one keep-alive connection, recording every answer with the
  time its request was sent."""
  body = json.dumps({'inputs': images.tolist()}).encode()
  connection = http.client.HTTPConnection('127.0.0.1', port, timeout=30)
  while not stop.is_set():
    sent = time.monotonic()
    try:
      connection.request('POST', '/v1/models/mnist:predict', body=body,
                         headers={'Content-Type': 'application/json'})
      response = connection.getresponse()
      answers.append((sent, response.status, json.loads(response.read())))
    except Exception as e:  # pylint: disable=broad-except
      answers.append((sent, -1, repr(e)))
      connection.close()
      connection = http.client.HTTPConnection('127.0.0.1', port, timeout=30)
  connection.close()


def grpc_loop(target: str, images: np.ndarray, stop: threading.Event,
              answers: List[Tuple[str, int]]) -> None:
  request = predict_pb2.PredictRequest()
  request.model_spec.name = 'mnist'
  request.inputs[features.PIXELS_INPUT].CopyFrom(tf.make_tensor_proto(images.astype(np.float32)))
  with grpc.insecure_channel(target) as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    while not stop.is_set():
      try:
        answers.append(('ok', stub.Predict(request, timeout=30).model_spec.version.value))
      except grpc.RpcError as e:
        answers.append((e.code().name, -1))


def test_push_while_predicting_swaps_without_failures(model_v1, model_v2, reference, mnist_test,
                                                       tmp_path):
  images = mnist_test.images[:8]
  expected = {v: reference_predict(reference, v, images)[features.PROBABILITIES_OUTPUT]
              for v in (1, 2)}
  push(model_v1, tmp_path, 1)
  with process.start_server(tmp_path, args=['--poll-seconds', '0.2']) as server:
    assert process.served_versions(server.rest_url) == {1: 'AVAILABLE'}
    stop = threading.Event()
    rest_answers: List[Tuple[float, int, object]] = []
    grpc_answers: List[Tuple[str, int]] = []
    threads = [threading.Thread(target=rest_loop, args=(server.rest_port, images, stop, rest_answers)),
               threading.Thread(target=rest_loop, args=(server.rest_port, images, stop, rest_answers)),
               threading.Thread(target=grpc_loop, args=(server.grpc_target, images, stop, grpc_answers))]
    for thread in threads:
      thread.start()
    try:
      time.sleep(1.0)
      push(model_v2, tmp_path, 2)
      process.wait_for(lambda: process.served_versions(server.rest_url) == {2: 'AVAILABLE',
                                                                              1: 'END'},
                       timeout=60, what='version 2 to replace version 1')
      swapped_at = time.monotonic()   # requests sent from now on must meet version 2
      time.sleep(1.0)
    finally:
      stop.set()
      for thread in threads:
        thread.join(timeout=60)
    assert server.alive()

  failures = ([a for a in rest_answers if a[1] != 200] +
              [a for a in grpc_answers if a[0] != 'ok'])
  assert not failures, failures[:5]
  assert len(rest_answers) > 20 and len(grpc_answers) > 10
  # Every REST answer is exactly version 1's or version 2's; after the switch, only 2's.
  versions = []
  for sent, _, body in sorted(rest_answers, key=lambda a: a[0]):
    probs = np.array(body['outputs'][features.PROBABILITIES_OUTPUT], np.float32)
    matches = [v for v in (1, 2) if np.array_equal(probs, expected[v])]
    assert len(matches) == 1
    versions.append((sent, matches[0]))
  assert versions[0][1] == 1
  assert {v for sent, v in versions if sent >= swapped_at} == {2}
  # Over gRPC the response names its version: 1s, then 2s, never back.
  seen = [v for _, v in grpc_answers]
  assert seen[0] == 1 and seen[-1] == 2 and seen == sorted(seen)


def write_corrupt_version(serving_dir: Path, model: Path, version: int) -> Path:
  staging = serving_dir / 'mnist' / f'.tmp-{version}'
  shutil.copytree(model, staging)
  (staging / 'saved_model.pb').write_bytes(b'this is not a SavedModel')
  return staging.rename(serving_dir / 'mnist' / str(version))


def test_broken_or_incomplete_versions_are_skipped(model_v1, model_v2, reference, mnist_test,
                                                   tmp_path):
  images = mnist_test.images[:4]
  push(model_v1, tmp_path, 1)
  with process.start_server(tmp_path, args=['--poll-seconds', '0.2']) as server:
    # Incomplete: no saved_model.pb yet. Staging: not an integer name. Both ignored.
    shutil.copytree(model_v2 / 'variables', tmp_path / 'mnist' / '5' / 'variables')
    shutil.copytree(model_v2, tmp_path / 'mnist' / '.tmp-6')
    write_corrupt_version(tmp_path, model_v2, 3)
    process.wait_for(lambda: process.served_versions(server.rest_url).get(3) == 'END',
                     timeout=60, what='version 3 to fail loading')
    code, status = call(f'{server.rest_url}/v1/models/mnist')
    assert code == 200
    by_version = {s['version']: s for s in status['model_version_status']}
    assert set(by_version) == {'1', '3'}
    assert by_version['1']['state'] == 'AVAILABLE'
    assert by_version['3']['status']['error_code'] == 'UNKNOWN'
    assert by_version['3']['status']['error_message']
    assert 'Failed to load mnist version 3' in server.log_text()

    # Still serving version 1, and it answers exactly as before.
    code, body = call(f'{server.rest_url}/v1/models/mnist:predict', {'inputs': images.tolist()})
    assert code == 200
    np.testing.assert_array_equal(np.array(body['outputs']['probabilities'], np.float32),
                                  reference_predict(reference, 1, images)['probabilities'])

    # A fixed copy of version 3 (new files) is tried again and then served.
    broken = tmp_path / 'mnist' / '3'
    broken.rename(tmp_path / 'mnist' / '.broken-3')
    push(model_v2, tmp_path, 3)
    process.wait_for(lambda: process.served_versions(server.rest_url) == {3: 'AVAILABLE',
                                                                            1: 'END'},
                     timeout=60, what='the repaired version 3 to replace version 1')
    assert 'Traceback' not in server.log_text()
