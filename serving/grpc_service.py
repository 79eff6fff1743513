"""TF Serving's gRPC API (PredictionService, ModelService) with the official protos.

The servicers subclass the generated bases of `tensorflow-serving-api`, so the official
stubs (`prediction_service_pb2_grpc.PredictionServiceStub`, ...) work unchanged.
Errors abort with the same canonical codes TF Serving uses.
"""

from __future__ import annotations

import functools
import logging
import time
from concurrent import futures
from typing import Any, Callable, Optional, Tuple

import grpc
from google.protobuf import any_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, model_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc, regression_pb2)

from serving import metrics
from serving.errors import ServingError, invalid
from serving.models import ModelManager
from serving.servable import Servable
from serving.tensors import examples, predict_inputs, to_tensor_proto

log = logging.getLogger(__name__)

SIGNATURE_DEF_FIELD = 'signature_def'
RECORDED_APIS = ('Predict', 'Classify', 'Regress')


def _spec(spec: model_pb2.ModelSpec) -> Tuple[str, Optional[int], Optional[str]]:
  version = spec.version.value if spec.HasField('version') else None
  return spec.name, version, spec.version_label or None


def _response_spec(servable: Servable, signature_name: str) -> model_pb2.ModelSpec:
  spec = model_pb2.ModelSpec(name=servable.name, signature_name=signature_name)
  spec.version.value = servable.version
  return spec


def _aborts_on_error(method: Callable[..., Any]) -> Callable[..., Any]:
  """Maps errors to their status; Predict, Classify and Regress are counted and timed in
  the metrics, as TF Serving does (API label = the method name, entrypoint GRPC)."""
  recorded = method.__name__ in RECORDED_APIS

  @functools.wraps(method)
  def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
    start = time.perf_counter()
    code, message = grpc.StatusCode.OK, ''
    try:
      return method(self, request, context)
    except ServingError as e:
      code, message = e.code, e.message
    except Exception as e:  # pylint: disable=broad-except
      log.exception('Internal error in %s', method.__name__)
      code, message = grpc.StatusCode.INTERNAL, f'{type(e).__name__}: {e}'
    finally:
      if recorded:
        metrics.record_request(request.model_spec.name, method.__name__, 'GRPC', code.name,
                               time.perf_counter() - start)
    context.abort(code, message)
  return wrapper


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):

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

  @_aborts_on_error
  def Predict(self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext
              ) -> predict_pb2.PredictResponse:
    servable, signature_name, spec = self._resolve_signature(request.model_spec)
    inputs = predict_inputs(servable.signature(signature_name), request.inputs, servable.limits)
    outputs = servable.predict(signature_name, inputs, request.output_filter)
    response = predict_pb2.PredictResponse(model_spec=spec)
    for key, value in outputs.items():
      response.outputs[key].CopyFrom(to_tensor_proto(value))
    return response

  @_aborts_on_error
  def Classify(self, request: classification_pb2.ClassificationRequest,
               context: grpc.ServicerContext) -> classification_pb2.ClassificationResponse:
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

  @_aborts_on_error
  def Regress(self, request: regression_pb2.RegressionRequest,
              context: grpc.ServicerContext) -> regression_pb2.RegressionResponse:
    servable, signature_name, spec = self._resolve_signature(request.model_spec)
    values = servable.regress(signature_name, examples(request.input, servable.limits))
    response = regression_pb2.RegressionResponse(model_spec=spec)
    for value in values.tolist():
      response.result.regressions.add(value=value)
    return response

  @_aborts_on_error
  def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                       context: grpc.ServicerContext
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


class ModelService(model_service_pb2_grpc.ModelServiceServicer):

  def __init__(self, manager: ModelManager):
    self.manager = manager

  @_aborts_on_error
  def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest,
                     context: grpc.ServicerContext
                     ) -> get_model_status_pb2.GetModelStatusResponse:
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in self.manager.status(*_spec(request.model_spec)):
      entry = response.model_version_status.add(
          version=status.version,
          state=get_model_status_pb2.ModelVersionStatus.State.Value(status.state))
      entry.status.error_code = status.error_code.value[0]
      entry.status.error_message = status.error_message
    return response


def start_server(manager: ModelManager, host: str, port: int, max_message_bytes: int,
                 threads: int = 8) -> Tuple[grpc.Server, int]:
  """Starts both services; returns the server and the port actually bound."""
  server = grpc.server(
      futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix='grpc'),
      options=[('grpc.max_receive_message_length', max_message_bytes),
               ('grpc.max_send_message_length', -1),
               ('grpc.so_reuseport', 0)])
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
      PredictionService(manager), server)
  model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager), server)
  address = f'[{host}]:{port}' if ':' in host else f'{host}:{port}'
  bound = server.add_insecure_port(address)
  if not bound:
    raise OSError(f'gRPC could not bind {address}')
  server.start()
  return server, bound
