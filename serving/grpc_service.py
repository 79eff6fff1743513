"""TF Serving's gRPC API (PredictionService, ModelService) with the official protos.

The servicers subclass the generated bases of `tensorflow-serving-api`, so the official
stubs (`prediction_service_pb2_grpc.PredictionServiceStub`, ...) work unchanged.
Errors abort with the same canonical codes TF Serving uses.

Two servers, one set of handlers. Without batching, gRPC's threaded server: a request
holds one thread from decode to answer, the cheapest path when every request runs its own
model call. With batching, gRPC's asyncio server on its own thread and event loop: a small
Predict is decoded on the loop and waits for its batch as a future, so no thread is parked
per waiting request and one wake-up of the loop answers a whole batch; everything else
runs in a thread pool. docs/benchmarks.md has the measurements behind the split.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from concurrent import futures
from typing import Any, Awaitable, Callable, Coroutine, Dict, Optional, Tuple, TypeVar

import grpc
from google.protobuf import any_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, model_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc, regression_pb2)

from serving import metrics
from serving.errors import ServingError, invalid
from serving.models import ModelManager
from serving.servable import Servable
from serving.tensors import checked_size, decoded, examples, predict_inputs, to_tensor_proto

log = logging.getLogger(__name__)

SIGNATURE_DEF_FIELD = 'signature_def'
RECORDED_APIS = ('Predict', 'Classify', 'Regress')
# A batched Predict whose inputs take up to this size once decoded is decoded and encoded
# on the event loop (a batch-1 image: ~3 KB); bigger ones go whole to a worker thread, so
# the loop never stalls.
INLINE_MAX_BYTES = 64 * 1024
T = TypeVar('T')


def _spec(spec: model_pb2.ModelSpec) -> Tuple[str, Optional[int], Optional[str]]:
  version = spec.version.value if spec.HasField('version') else None
  return spec.name, version, spec.version_label or None


def _response_spec(servable: Servable, signature_name: str) -> model_pb2.ModelSpec:
  """The spec a response carries (responses copy it: the cached message is never changed)."""
  return _spec_message(servable.name, servable.version, signature_name)


@functools.lru_cache(maxsize=256)
def _spec_message(name: str, version: int, signature_name: str) -> model_pb2.ModelSpec:
  spec = model_pb2.ModelSpec(name=name, signature_name=signature_name)
  spec.version.value = version
  return spec


def _status(error: Exception, method: str) -> Tuple[grpc.StatusCode, str]:
  """The status a failed call answers with (called inside its `except`)."""
  if isinstance(error, ServingError):
    return error.code, error.message
  log.exception('Internal error in %s', method)
  return grpc.StatusCode.INTERNAL, f'{type(error).__name__}: {error}'


def _record(method: str, request: Any, code: grpc.StatusCode, start: float) -> None:
  """Predict, Classify and Regress are counted and timed in the metrics, as TF Serving
  does (API label = the method name, entrypoint GRPC)."""
  if method in RECORDED_APIS:
    metrics.record_request(request.model_spec.name, method, 'GRPC', code.name,
                           time.perf_counter() - start)


def _aborts_on_error(method: Callable[..., Any]) -> Callable[..., Any]:
  """Maps errors to their status and records the call (threaded server)."""
  @functools.wraps(method)
  def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
    start, code, message = time.perf_counter(), grpc.StatusCode.OK, ''
    try:
      return method(self, request, context)
    except Exception as e:  # pylint: disable=broad-except
      code, message = _status(e, method.__name__)
    finally:
      _record(method.__name__, request, code, start)
    context.abort(code, message)
  return wrapper


def _aborts_on_error_async(method: Callable[..., Awaitable[Any]]
                           ) -> Callable[..., Awaitable[Any]]:
  """`_aborts_on_error` for the asyncio server's coroutines."""
  @functools.wraps(method)
  async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
    start, code, message = time.perf_counter(), grpc.StatusCode.OK, ''
    try:
      return await method(self, request, context)
    except asyncio.CancelledError:   # the client went away
      code = grpc.StatusCode.CANCELLED
      raise
    except Exception as e:  # pylint: disable=broad-except
      code, message = _status(e, method.__name__)
    finally:
      _record(method.__name__, request, code, start)
    await context.abort(code, message)
  return wrapper


def _predict_response(spec: model_pb2.ModelSpec, outputs: Dict[str, Any]
                      ) -> predict_pb2.PredictResponse:
  response = predict_pb2.PredictResponse(model_spec=spec)
  for key, value in outputs.items():
    to_tensor_proto(value, response.outputs[key])
  return response


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
  """The handlers of the threaded server; their bodies serve the asyncio one too."""

  def __init__(self, manager: ModelManager):
    self.manager = manager

  def _resolve(self, spec: model_pb2.ModelSpec) -> Servable:
    return self.manager.resolve(*_spec(spec))

  def _resolve_signature(self, spec: model_pb2.ModelSpec
                         ) -> Tuple[Servable, str, model_pb2.ModelSpec]:
    """The servable, the requested signature name, and the spec the response carries."""
    servable = self._resolve(spec)
    signature = servable.signature(spec.signature_name)  # raises if there is none
    return servable, spec.signature_name, _response_spec(servable, signature.name)

  def _predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
    servable, signature_name, spec = self._resolve_signature(request.model_spec)
    inputs = predict_inputs(servable.signature(signature_name), request.inputs, servable.limits)
    return _predict_response(spec, servable.predict(signature_name, inputs,
                                                    request.output_filter))

  def _classify(self, request: classification_pb2.ClassificationRequest
                ) -> classification_pb2.ClassificationResponse:
    servable, signature_name, spec = self._resolve_signature(request.model_spec)
    classes, scores = servable.classify(signature_name, examples(request.input, servable.limits))
    response = classification_pb2.ClassificationResponse(model_spec=spec)
    shape = (classes if classes is not None else scores).shape
    for i in range(shape[0]):
      result = response.result.classifications.add()
      for j in range(shape[1]):
        result.classes.add(label=classes[i, j].decode() if classes is not None else '',
                           score=float(scores[i, j]) if scores is not None else 0.0)
    return response

  def _regress(self, request: regression_pb2.RegressionRequest
               ) -> regression_pb2.RegressionResponse:
    servable, signature_name, spec = self._resolve_signature(request.model_spec)
    values = servable.regress(signature_name, examples(request.input, servable.limits))
    response = regression_pb2.RegressionResponse(model_spec=spec)
    for value in values.tolist():
      response.result.regressions.add(value=value)
    return response

  def _metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest
                ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    if not request.metadata_field:
      raise invalid('GetModelMetadataRequest must specify at least one metadata_field')
    for field in request.metadata_field:
      if field != SIGNATURE_DEF_FIELD:
        raise invalid(f'Metadata field {field} is not supported')
    servable = self._resolve(request.model_spec)
    response = get_model_metadata_pb2.GetModelMetadataResponse(
        model_spec=_response_spec(servable, ''))
    packed = any_pb2.Any()
    packed.Pack(servable.signature_def_map)
    response.metadata[SIGNATURE_DEF_FIELD].CopyFrom(packed)
    return response

  @_aborts_on_error
  def Predict(self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext
              ) -> predict_pb2.PredictResponse:
    return self._predict(request)

  @_aborts_on_error
  def Classify(self, request: classification_pb2.ClassificationRequest,
               context: grpc.ServicerContext) -> classification_pb2.ClassificationResponse:
    return self._classify(request)

  @_aborts_on_error
  def Regress(self, request: regression_pb2.RegressionRequest,
              context: grpc.ServicerContext) -> regression_pb2.RegressionResponse:
    return self._regress(request)

  @_aborts_on_error
  def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                       context: grpc.ServicerContext
                       ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    return self._metadata(request)


class BatchingPredictionService(PredictionService):
  """The asyncio server's handlers: a small Predict to a batching signature awaits its
  batch on the loop; the rest runs in `pool`, so the loop never waits for a model."""

  def __init__(self, manager: ModelManager, pool: futures.Executor):
    super().__init__(manager)
    self.pool = pool

  def _in_pool(self, call: Callable[[], T]) -> Awaitable[T]:
    return asyncio.get_running_loop().run_in_executor(self.pool, call)

  @_aborts_on_error_async
  async def Predict(self, request: predict_pb2.PredictRequest,
                    context: grpc.aio.ServicerContext) -> predict_pb2.PredictResponse:
    servable = self._resolve(request.model_spec)
    if not servable.batches(request.model_spec.signature_name):
      return await self._in_pool(functools.partial(self._predict, request))
    sig = servable.signature(request.model_spec.signature_name)
    if checked_size(sig, request.inputs, servable.limits) > INLINE_MAX_BYTES:
      return await self._in_pool(functools.partial(self._predict, request))
    inputs = decoded(request.inputs)
    outputs = await servable.predict_batched(sig, inputs, request.output_filter, self._in_pool)
    return _predict_response(_response_spec(servable, sig.name), outputs)

  @_aborts_on_error_async
  async def Classify(self, request: classification_pb2.ClassificationRequest,
                     context: grpc.aio.ServicerContext
                     ) -> classification_pb2.ClassificationResponse:
    return await self._in_pool(functools.partial(self._classify, request))

  @_aborts_on_error_async
  async def Regress(self, request: regression_pb2.RegressionRequest,
                    context: grpc.aio.ServicerContext) -> regression_pb2.RegressionResponse:
    return await self._in_pool(functools.partial(self._regress, request))

  @_aborts_on_error_async
  async def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                             context: grpc.aio.ServicerContext
                             ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    return self._metadata(request)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):

  def __init__(self, manager: ModelManager):
    self.manager = manager

  def _status(self, request: get_model_status_pb2.GetModelStatusRequest
              ) -> get_model_status_pb2.GetModelStatusResponse:
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in self.manager.status(*_spec(request.model_spec)):
      entry = response.model_version_status.add(
          version=status.version,
          state=get_model_status_pb2.ModelVersionStatus.State.Value(status.state))
      entry.status.error_code = status.error_code.value[0]
      entry.status.error_message = status.error_message
    return response

  @_aborts_on_error
  def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest,
                     context: grpc.ServicerContext
                     ) -> get_model_status_pb2.GetModelStatusResponse:
    return self._status(request)


class AsyncModelService(ModelService):

  @_aborts_on_error_async
  async def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest,
                           context: grpc.aio.ServicerContext
                           ) -> get_model_status_pb2.GetModelStatusResponse:
    return self._status(request)


def _options(max_message_bytes: int) -> list:
  return [('grpc.max_receive_message_length', max_message_bytes),
          ('grpc.max_send_message_length', -1), ('grpc.so_reuseport', 0)]


def _bind(server: Any, host: str, port: int) -> int:
  address = f'[{host}]:{port}' if ':' in host else f'{host}:{port}'
  bound = server.add_insecure_port(address)
  if not bound:
    raise OSError(f'gRPC could not bind {address}')
  return bound


class GrpcServer:
  """Both services: the threaded server, or with `batching` the asyncio one on its own
  thread and event loop."""

  def __init__(self, manager: ModelManager, host: str, port: int, max_message_bytes: int,
               threads: int = 8, batching: bool = False):
    self.pool = futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix='grpc')
    self._loop: Optional[asyncio.AbstractEventLoop] = None
    if not batching:
      self._server: Any = grpc.server(self.pool, options=_options(max_message_bytes))
      prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
          PredictionService(manager), self._server)
      model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager),
                                                                self._server)
      self.port = _bind(self._server, host, port)
      self._server.start()
      return
    self._loop = asyncio.new_event_loop()
    self._thread = threading.Thread(target=self._loop.run_forever, name='grpc-loop',
                                    daemon=True)
    self._thread.start()
    self._server = None
    try:
      self.port = self._on_loop(self._start_async(manager, host, port, max_message_bytes))
    except BaseException:
      self._close_loop()
      raise

  def _on_loop(self, coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

  async def _start_async(self, manager: ModelManager, host: str, port: int,
                         max_message_bytes: int) -> int:
    server = grpc.aio.server(options=_options(max_message_bytes))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        BatchingPredictionService(manager, self.pool), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(AsyncModelService(manager),
                                                              server)
    bound = _bind(server, host, port)
    await server.start()
    self._server = server
    return bound

  def stop(self, grace: float) -> None:
    """Blocks until in-flight calls finished (or `grace` seconds passed)."""
    if self._loop is None:
      self._server.stop(grace).wait()
    else:
      if self._server is not None:
        self._on_loop(self._server.stop(grace))
      self._close_loop()
    self.pool.shutdown(wait=True)

  def _close_loop(self) -> None:
    self._loop.call_soon_threadsafe(self._loop.stop)
    self._thread.join()
    self._loop.close()
