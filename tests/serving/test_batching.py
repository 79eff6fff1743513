"""Server-side batching: TF Serving's parameter file, and concurrent requests merged into
fewer model calls with the same answers."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Dict, List

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from serving import batching, process
from serving.errors import ServingError, invalid
from tests.serving import metrics_helpers as m
from tests.serving.conftest import MODEL_NAME, reference_predict
from tests.serving.helpers import call
from tests.serving.test_grpc import predict_request
from trainer import features

# TF Serving's documented example file (g3doc/serving_config.md), as its server reads it.
TF_SERVING_EXAMPLE = '''
max_batch_size { value: 128 }
batch_timeout_micros { value: 0 }
max_enqueued_batches { value: 1000000 }
num_batch_threads { value: 8 }
'''
MAX_BATCH = 32
PARAMETERS = f'''
max_batch_size {{ value: {MAX_BATCH} }}
batch_timeout_micros {{ value: 2000 }}
num_batch_threads {{ value: 1 }}
thread_pool_name {{ value: "test_batch_threads" }}
'''
CLIENTS = 16
REQUESTS_PER_CLIENT = 6


def test_parses_tf_serving_parameter_files():
  params = batching.parse_parameters(TF_SERVING_EXAMPLE)
  assert (params.max_batch_size, params.batch_timeout_micros, params.max_enqueued_batches,
          params.num_batch_threads) == (128, 0, 1000000, 8)
  defaults = batching.parse_parameters('')
  assert (defaults.max_batch_size, defaults.batch_timeout_micros,
          defaults.max_enqueued_batches) == (1000, 0, 10)   # SharedBatchScheduler's
  sized = batching.parse_parameters(
      'max_batch_size { value: 8 } allowed_batch_sizes: 2 allowed_batch_sizes: 8')
  assert sized.allowed_batch_sizes == (2, 8)


@pytest.mark.parametrize('text, message', [
    ('max_batch_size: 5', 'max_batch_size'),                       # not a wrapper message
    ('max_batch_sise { value: 5 }', 'max_batch_sise'),
    ('max_batch_size { value: 8 } allowed_batch_sizes: 4', 'end with max_batch_size'),
    ('num_batch_threads { value: 0 }', 'must be positive'),
    ('enable_large_batch_splitting { value: true }', 'not supported'),
])
def test_refuses_bad_parameter_files(text, message):
  with pytest.raises(ValueError, match=message):
    batching.parse_parameters(text)


def test_batcher_merges_concurrent_tasks_and_splits_outputs():
  calls: List[int] = []
  def run(inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    calls.append(len(inputs['x']))
    time.sleep(0.02)
    return {'double': inputs['x'] * 2, 'sum': inputs['x'].sum(axis=1)}
  batcher = batching.Batcher('t', run, batching.BatchingParameters(
      max_batch_size=8, batch_timeout_micros=5000, num_batch_threads=1,
      allowed_batch_sizes=(4, 8)))
  results: Dict[int, Dict[str, np.ndarray]] = {}
  def client(i: int) -> None:
    results[i] = batcher.run({'x': np.full((1 + i % 2, 3), i, np.int64)})
  threads = [threading.Thread(target=client, args=(i,)) for i in range(24)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join(timeout=30)
  batcher.close()
  assert len(results) == 24
  for i, out in results.items():
    np.testing.assert_array_equal(out['double'], np.full((1 + i % 2, 3), 2 * i))
    np.testing.assert_array_equal(out['sum'], np.full(1 + i % 2, 3 * i))
  assert len(calls) < 24 and set(calls) <= {4, 8}       # merged, padded to allowed sizes
  with pytest.raises(ServingError, match='Task size 9 is larger than maximum input batch size 8'):
    batcher.run({'x': np.zeros((9, 3), np.int64)})


def test_full_batch_runs_at_once_and_a_lone_task_after_the_timeout():
  """TF's scheduler: a batch is run as soon as it is full, whatever the timeout; one that
  does not fill waits batch_timeout_micros from its first task."""
  calls: List[int] = []
  def run(inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    calls.append(len(inputs['x']))
    return {'y': inputs['x']}
  slow = batching.Batcher('full', run, batching.BatchingParameters(
      max_batch_size=4, batch_timeout_micros=60_000_000, num_batch_threads=1))
  start = time.monotonic()
  threads = [threading.Thread(target=slow.run, args=({'x': np.full((1, 2), i)},), daemon=True)
             for i in range(4)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join(timeout=30)
  assert time.monotonic() - start < 20 and calls == [4]     # not the 60 s timeout
  slow.close()
  short = batching.Batcher('lone', run, batching.BatchingParameters(
      max_batch_size=4, batch_timeout_micros=300_000, num_batch_threads=1))
  start = time.monotonic()
  np.testing.assert_array_equal(short.run({'x': np.ones((1, 2))})['y'], np.ones((1, 2)))
  assert time.monotonic() - start >= 0.29 and calls == [4, 1]
  short.close()


def test_idle_thread_takes_the_batch_behind_a_running_one():
  """With two batch threads, a full batch queued while the first thread runs another goes
  to the second thread at once (it is not left until the first is done)."""
  release = threading.Event()
  started: List[int] = []
  def run(inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    started.append(int(inputs['x'][0, 0]))
    if inputs['x'][0, 0] == 0:
      release.wait(timeout=60)                    # the first batch holds its thread
    return {'y': inputs['x']}
  batcher = batching.Batcher('two', run, batching.BatchingParameters(
      max_batch_size=2, batch_timeout_micros=60_000_000, num_batch_threads=2))
  first = [threading.Thread(target=batcher.run, args=({'x': np.zeros((1, 2))},), daemon=True)
           for _ in range(2)]
  for thread in first:
    thread.start()
  process.wait_for(lambda: started == [0], timeout=20, what='the first batch to start')
  second = [threading.Thread(target=batcher.run, args=({'x': np.ones((1, 2))},), daemon=True)
            for _ in range(2)]
  for thread in second:
    thread.start()
  for thread in second:
    thread.join(timeout=20)
  try:
    assert not any(t.is_alive() for t in second) and started == [0, 1]
  finally:
    release.set()
    for thread in first:
      thread.join(timeout=20)
    batcher.close()


def test_closed_batcher_runs_requests_alone_and_its_threads_exit():
  """A version being unloaded: requests that already hold it still get answers."""
  def run(inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    return {'y': inputs['x'] + 1}
  batcher = batching.Batcher('closing', run, batching.BatchingParameters(
      num_batch_threads=2, thread_pool_name='closing_pool'))
  np.testing.assert_array_equal(batcher.run({'x': np.arange(3)})['y'], [1, 2, 3])
  batcher.close()
  np.testing.assert_array_equal(batcher.run({'x': np.arange(2)})['y'], [1, 2])
  process.wait_for(lambda: not [t for t in threading.enumerate()
                                if t.name.startswith('closing_pool-closing')],
                   timeout=10, what='the batch threads to exit')


async def _in_thread(call):
  """What the gRPC front end passes as `alone`: the call in a worker thread."""
  return await asyncio.get_running_loop().run_in_executor(None, call)


def test_coroutines_share_a_batch_and_one_loop_wake_up_answers_it():
  """The gRPC front end's path: requests wait for their batch as futures on the event loop
  (no thread each), and the batch thread settles all of a batch's futures with one call."""
  calls: List[int] = []
  def run(inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    calls.append(len(inputs['x']))
    return {'y': inputs['x'] * 10}
  batcher = batching.Batcher('async', run, batching.BatchingParameters(
      max_batch_size=4, batch_timeout_micros=60_000_000, num_batch_threads=1))

  async def main() -> tuple:
    loop = asyncio.get_running_loop()
    wake_ups = []
    schedule = loop.call_soon_threadsafe
    def counting(*args):
      wake_ups.append(args[0])
      return schedule(*args)
    loop.call_soon_threadsafe = counting
    threads_before = threading.active_count()
    results = await asyncio.gather(*(batcher.run_async({'x': np.full((1, 2), i)}, _in_thread)
                                     for i in range(8)))
    return results, wake_ups, threading.active_count() - threads_before

  results, wake_ups, new_threads = asyncio.run(main())
  batcher.close()
  assert calls == [4, 4]                             # full batches, not the 60 s timeout
  assert len(wake_ups) == 2 and new_threads == 0     # one wake-up per batch, no thread each
  for i, out in enumerate(results):
    np.testing.assert_array_equal(out['y'], np.full((1, 2), 10 * i))


def test_coroutine_batch_errors_reach_every_waiter_and_a_cancelled_one_is_skipped():
  release = threading.Event()
  def run(inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    release.wait(timeout=60)
    if (inputs['x'] < 0).any():
      raise ValueError('negative input')
    return {'y': inputs['x']}
  batcher = batching.Batcher('async-errors', run, batching.BatchingParameters(
      max_batch_size=2, batch_timeout_micros=60_000_000, num_batch_threads=1))

  async def main() -> tuple:
    # A waiter that gives up (a cancelled RPC) while its batch runs: the other one in the
    # same batch still gets its answer, and settling skips the cancelled future.
    gone = asyncio.ensure_future(batcher.run_async({'x': np.zeros((1, 1))}, _in_thread))
    kept = asyncio.ensure_future(batcher.run_async({'x': np.ones((1, 1))}, _in_thread))
    await asyncio.sleep(0.2)
    gone.cancel()
    release.set()
    answered = await kept
    failing = await asyncio.gather(
        *(batcher.run_async({'x': np.full((1, 1), -1)}, _in_thread) for _ in range(2)),
        return_exceptions=True)
    return gone.cancelled(), answered, failing

  handler_errors = []
  def main_with_handler() -> tuple:
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda _, context: handler_errors.append(context))
    try:
      return loop.run_until_complete(main())
    finally:
      loop.close()

  cancelled, answered, failing = main_with_handler()
  batcher.close()
  assert cancelled and not handler_errors
  np.testing.assert_array_equal(answered['y'], np.ones((1, 1)))
  assert [type(e) for e in failing] == [ValueError, ValueError]


def test_values_are_checked_and_answers_recorded_once_per_batch_and_only_a_bad_request_fails():
  """A batch's values are checked at once; only when that fails is each request checked
  alone, so a bad request fails by itself. `done` sees a batch's answered rows once,
  without the padding; a request run alone is checked and recorded the same way."""
  checks: List[int] = []
  calls: List[int] = []
  done: List[tuple] = []
  def check(inputs: Dict[str, np.ndarray]) -> None:
    checks.append(len(inputs['x']))
    if (inputs['x'] < 0).any():
      raise invalid('negative input')
  def run(inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    calls.append(len(inputs['x']))
    return {'y': inputs['x'] + 1}
  batcher = batching.Batcher('checked', run, batching.BatchingParameters(
      max_batch_size=4, batch_timeout_micros=60_000_000, num_batch_threads=1,
      allowed_batch_sizes=(4,)), check, lambda outputs, rows: done.append(
          (outputs['y'][:, 0].tolist(), rows)))

  async def main(values: List[int]) -> list:
    return await asyncio.gather(
        *(batcher.run_async({'x': np.full((1, 1), v)}, _in_thread) for v in values),
        return_exceptions=True)

  clean = asyncio.run(main([1, 2, 3, 4]))
  assert [r['y'].item() for r in clean] == [2, 3, 4, 5]
  assert checks == [4] and calls == [4] and done == [([2, 3, 4, 5], 4)]
  checks.clear(), calls.clear(), done.clear()

  mixed = asyncio.run(main([1, -1, 2, 3]))
  assert isinstance(mixed[1], ServingError) and mixed[1].message == 'negative input'
  assert [mixed[i]['y'].item() for i in (0, 2, 3)] == [2, 3, 4]
  assert checks == [4, 1, 1, 1, 1]                   # the batch, then each request alone
  assert calls == [4] and done == [([2, 3, 4], 3)]    # 3 rows padded to 4; 3 recorded
  checks.clear(), calls.clear(), done.clear()

  batcher.close()
  with pytest.raises(ServingError, match='negative input'):
    batcher.run({'x': np.full((2, 1), -1)})
  np.testing.assert_array_equal(batcher.run({'x': np.full((2, 1), 7)})['y'], [[8], [8]])
  assert checks == [2, 2] and calls == [2] and done == [([8, 8], 2)]


def test_closed_batcher_runs_a_coroutine_request_alone_in_a_thread():
  def run(inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    return {'y': inputs['x'] + 1, 'thread': np.array(threading.get_ident())}
  batcher = batching.Batcher('async-closed', run, batching.BatchingParameters(
      num_batch_threads=1))
  batcher.close()

  async def main() -> Dict[str, np.ndarray]:
    return await batcher.run_async({'x': np.arange(2)}, _in_thread)
  out = asyncio.run(main())
  np.testing.assert_array_equal(out['y'], [1, 2])
  assert int(out['thread']) != threading.get_ident()    # not on the event loop's thread


@pytest.fixture(scope='module')
def batching_server(serving_dir, tmp_path_factory):
  params = tmp_path_factory.mktemp('batching') / 'batching.config'
  params.write_text(PARAMETERS)
  with process.start_server(serving_dir, MODEL_NAME, args=[
      '--enable_batching', '--batching_parameters_file', str(params)]) as running:
    yield running
    assert 'Traceback' not in running.log_text(), running.log_text()[-3000:]


def _calls(samples: m.Samples, signature: str) -> float:
  return m.total(samples, 'serving_model_calls_total', signature=signature, version='2')


def test_concurrent_requests_share_model_calls_with_unbatched_answers(batching_server, reference,
                                                                      mnist_test):
  before = m.scrape(batching_server.rest_url)
  answers: Dict[tuple, np.ndarray] = {}
  errors: List[str] = []
  lock = threading.Lock()

  def grpc_client(i: int) -> None:
    with grpc.insecure_channel(batching_server.grpc_target) as channel:
      stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
      for r in range(REQUESTS_PER_CLIENT):
        index = (i * REQUESTS_PER_CLIENT + r) % len(mnist_test.images)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = 'mnist'
        request.inputs[features.PIXELS_INPUT].CopyFrom(tf.make_tensor_proto(
            mnist_test.images[index:index + 1].astype(np.float32)))
        try:
          response = stub.Predict(request, timeout=60)
        except grpc.RpcError as e:
          with lock:
            errors.append(f'gRPC {e.code()}: {e.details()}')
          continue
        with lock:
          answers[('grpc', i, r)] = (index, tf.make_ndarray(
              response.outputs[features.PROBABILITIES_OUTPUT])[0])

  def rest_client(i: int) -> None:
    for r in range(REQUESTS_PER_CLIENT):
      index = (i * REQUESTS_PER_CLIENT + r) % len(mnist_test.images)
      status, body = call(f'{batching_server.rest_url}/v1/models/mnist:predict',
                          {'instances': mnist_test.images[index:index + 1].tolist()})
      with lock:
        if status != 200:
          errors.append(f'REST {status}: {body}')
        else:
          answers[('rest', i, r)] = (index, np.array(
              body['predictions'][0][features.PROBABILITIES_OUTPUT], np.float32))

  threads = [threading.Thread(target=grpc_client if i % 2 else rest_client, args=(i,))
             for i in range(CLIENTS)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join(timeout=120)
  after = m.scrape(batching_server.rest_url)

  assert not errors, errors[:5]
  requests = CLIENTS * REQUESTS_PER_CLIENT
  assert len(answers) == requests
  expected = reference_predict(reference, 2, mnist_test.images)[features.PROBABILITIES_OUTPUT]
  for index, probabilities in answers.values():
    # The same numbers as the image run alone; float32 sums may round differently in a batch.
    np.testing.assert_allclose(probabilities, expected[index], rtol=0, atol=1e-6)
    assert probabilities.argmax() == expected[index].argmax()
  model_calls = _calls(after, features.SERVING_DEFAULT) - _calls(before, features.SERVING_DEFAULT)
  assert model_calls < requests, f'{model_calls} model calls for {requests} requests'
  rows = (m.total(after, 'serving_batch_size_sum', signature=features.SERVING_DEFAULT)
          - m.total(before, 'serving_batch_size_sum', signature=features.SERVING_DEFAULT))
  assert rows == requests
  # Prediction metrics are recorded once per batch: every answered image, once.
  assert (m.total(after, 'serving_predictions_total', version='2')
          - m.total(before, 'serving_predictions_total', version='2')) == requests
  assert (m.total(after, 'serving_predicted_class_total', version='2')
          - m.total(before, 'serving_predicted_class_total', version='2')) == requests


def test_request_over_max_batch_size_is_refused_like_tf_serving(batching_server, mnist_test):
  status, body = call(f'{batching_server.rest_url}/v1/models/mnist:predict',
                      {'instances': [mnist_test.images[0].tolist()] * (MAX_BATCH + 1)})
  assert status == 400
  assert body['error'] == (f'Task size {MAX_BATCH + 1} is larger than maximum input batch '
                           f'size {MAX_BATCH}')


def _grpc_predict(target: str, images: np.ndarray, timeout: float = 60
                  ) -> predict_pb2.PredictResponse:
  with grpc.insecure_channel(target) as channel:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
        predict_request(images), timeout=timeout)


def test_grpc_front_end_with_batching_answers_every_method_and_error(batching_server, reference,
                                                                    mnist_test):
  """With batching, gRPC runs on the asyncio server: small Predicts wait on the event loop,
  big ones and the other methods go to threads; answers and errors are TF Serving's."""
  big = mnist_test.images[:MAX_BATCH]     # 32 float images: ~100 KB, over the inline size
  response = _grpc_predict(batching_server.grpc_target, big)
  expected = reference_predict(reference, 2, big)[features.PROBABILITIES_OUTPUT]
  np.testing.assert_allclose(tf.make_ndarray(
      response.outputs[features.PROBABILITIES_OUTPUT]), expected, rtol=0, atol=1e-6)
  assert response.model_spec.version.value == 2

  with pytest.raises(grpc.RpcError) as too_many:
    _grpc_predict(batching_server.grpc_target, mnist_test.images[:MAX_BATCH + 1])
  assert too_many.value.code() == grpc.StatusCode.INVALID_ARGUMENT
  assert too_many.value.details() == (f'Task size {MAX_BATCH + 1} is larger than maximum '
                                      f'input batch size {MAX_BATCH}')
  broken = mnist_test.images[:1].astype(np.float32)
  broken[0, 0, 0] = np.nan
  with pytest.raises(grpc.RpcError) as nan:
    _grpc_predict(batching_server.grpc_target, broken)
  assert nan.value.code() == grpc.StatusCode.INVALID_ARGUMENT
  assert 'NaN or infinite' in nan.value.details()
  # Sent together, a bad image and good ones: the batch thread checks values, and only
  # the bad request fails.
  with grpc.insecure_channel(batching_server.grpc_target) as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    calls = [stub.Predict.future(predict_request(images), timeout=60)
             for images in (mnist_test.images[:1], broken, mnist_test.images[1:2],
                            mnist_test.images[2:3] + 300.0)]
    outcomes = [call.exception() or call.result() for call in calls]
  assert [o.code() for o in outcomes[1::2]] == [grpc.StatusCode.INVALID_ARGUMENT] * 2
  assert 'pixel values 0-255' in outcomes[3].details()
  for outcome, index in zip(outcomes[0::2], (0, 1)):
    np.testing.assert_allclose(tf.make_ndarray(outcome.outputs[features.PROBABILITIES_OUTPUT]),
                               expected[index:index + 1], rtol=0, atol=1e-6)

  with grpc.insecure_channel(batching_server.grpc_target) as channel:
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec={'name': 'mnist'}), timeout=30)
    metadata = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(
        get_model_metadata_pb2.GetModelMetadataRequest(model_spec={'name': 'mnist'},
                                                       metadata_field=['signature_def']),
        timeout=30)
  assert [(s.version, s.state) for s in status.model_version_status if s.version == 2] == [
      (2, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]
  assert metadata.model_spec.version.value == 2 and 'signature_def' in metadata.metadata

  # A client that gives up while its request waits changes nothing for the next one.
  with pytest.raises(grpc.RpcError) as gave_up:
    _grpc_predict(batching_server.grpc_target, mnist_test.images[:1], timeout=0.0005)
  assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
  response = _grpc_predict(batching_server.grpc_target, mnist_test.images[:1])
  np.testing.assert_allclose(tf.make_ndarray(response.outputs[features.PROBABILITIES_OUTPUT]),
                             expected[:1], rtol=0, atol=1e-6)
