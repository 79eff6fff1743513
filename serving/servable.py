"""One loaded model version and the three ways to run it: predict, classify, regress.

Both front ends (REST and gRPC) hand this module numpy arrays and get numpy arrays back,
so input checking and TF Serving's signature rules live here once. A `Servable` is never
mutated after loading, which is what lets a hot swap replace it under in-flight requests.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from pathlib import Path
from typing import Awaitable, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2

from serving import metrics
from serving.batching import Batcher, BatchingParameters, rows_of
from serving.errors import ServingError, invalid
from serving.limits import Limits, check_examples, check_shape, dtype_name
from trainer.serving_layout import SAVED_MODEL_FILE
from trainer import features

log = logging.getLogger(__name__)

SERVE_TAG = tf.saved_model.SERVING
DEFAULT_SIGNATURE = features.SERVING_DEFAULT
CLASSIFY_METHOD = features.CLASSIFY_METHOD_NAME
REGRESS_METHOD = tf.saved_model.REGRESS_METHOD_NAME
CLASSIFY_CLASSES = features.CLASSIFY_CLASSES_OUTPUT
CLASSIFY_SCORES = features.CLASSIFY_SCORES_OUTPUT
REGRESS_OUTPUTS = tf.saved_model.REGRESS_OUTPUTS

_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  """dtype and shape of a signature input or output (None dims are free)."""
  dtype: tf.DType
  shape: Optional[Tuple[Optional[int], ...]]   # None: unknown rank

  @classmethod
  def from_proto(cls, info: meta_graph_pb2.TensorInfo) -> 'TensorInfo':
    shape = None
    if not info.tensor_shape.unknown_rank:
      shape = tuple(None if d.size < 0 else d.size for d in info.tensor_shape.dim)
    return cls(tf.dtypes.as_dtype(info.dtype), shape)

  @property
  def is_string(self) -> bool:
    return self.dtype == tf.string

  @functools.cached_property   # read for every gRPC request
  def datatype(self) -> int:
    """The DataType enum, as a TensorProto's `dtype` field holds it."""
    return self.dtype.as_datatype_enum

  @property
  def numpy_dtype(self) -> np.dtype:
    return np.dtype(object) if self.is_string else np.dtype(self.dtype.as_numpy_dtype)



@dataclasses.dataclass(frozen=True)
class Signature:
  name: str
  method_name: str
  inputs: Mapping[str, TensorInfo]
  outputs: Mapping[str, TensorInfo]
  fn: Callable[..., Mapping[str, tf.Tensor]]


def _dtype_name(dtype: np.dtype) -> str:
  if dtype.kind in 'OSU':
    return 'DT_STRING'
  return dtype_name(tf.dtypes.as_dtype(dtype).as_datatype_enum)


def _shape_text(shape: Sequence[int]) -> str:
  return '[' + ','.join(str(d) for d in shape) + ']'


def check_input_names(sig: Signature, names: Iterable[str]) -> None:
  """TF Serving's message when the request's input names differ from the signature's."""
  sent, want = set(names), sig.inputs.keys()
  if sent != want:
    raise invalid(
        f'input size does not match signature: {len(sent)}!={len(want)} '
        f'len({{{",".join(sorted(sent))}}}) != len({{{",".join(sorted(want))}}}). '
        f'Sent extra: {{{",".join(sorted(sent - want))}}}. '
        f'Missing but required: {{{",".join(sorted(want - sent))}}}.')


def _check_input(name: str, value: np.ndarray, info: TensorInfo, limits: Limits) -> None:
  expected_kind = 'OSU' if info.is_string else None
  if (expected_kind and value.dtype.kind not in expected_kind) or (
      not expected_kind and value.dtype != info.numpy_dtype):
    raise invalid(f'Input "{name}" expects {_dtype_name(info.numpy_dtype)} but '
                  f'{_dtype_name(value.dtype)} was provided')
  check_shape(name, value.shape, info.shape, limits)


def _check_all_values(inputs: Mapping[str, np.ndarray]) -> None:
  """One request's inputs, or a whole batch's rows at once."""
  for name, value in inputs.items():
    _check_values(name, value)


def _check_values(name: str, value: np.ndarray) -> None:
  """Floats must be finite; pixels must be 0-255."""
  if not value.size or (value.dtype.kind != 'f' and name != features.PIXELS_INPUT):
    return
  low, high = value.min(), value.max()   # NaN propagates: the two also tell finiteness
  if value.dtype.kind == 'f' and not (np.isfinite(low) and np.isfinite(high)):
    raise invalid(f'Input "{name}" holds NaN or infinite values')
  if name == features.PIXELS_INPUT and (low < 0 or high > features.PIXEL_MAX):
    # Stricter than TF Serving, which passes any float: a pixel outside 0-255 is a client
    # bug (wrong scaling, say) that the model's clipping would otherwise hide.
    raise invalid(f'Input "{name}" expects pixel values 0-{features.PIXEL_MAX}, found '
                  f'{low:g} to {high:g}')


def _wanted_outputs(sig: Signature, output_filter: Iterable[str]) -> List[str]:
  wanted = list(output_filter) or list(sig.outputs)
  unknown = [k for k in wanted if k not in sig.outputs]
  if unknown:
    raise invalid(f'output tensor alias not found in signature: {unknown[0]} Outputs '
                  f'expected to be in the set {{{",".join(sorted(sig.outputs))}}}.')
  return wanted


def _op_error_text(message: str) -> str:
  """The cause of a TensorFlow op error, without the eager runtime's node-trace lines."""
  noise = ('Graph execution error', 'Detected at node', '<stack traces unavailable>')
  lines = [line.strip() for line in message.splitlines()
           if line.strip() and not line.strip().startswith(noise) and '[[{{node' not in line]
  return ' '.join(lines) or message


def batchable(sig: Signature) -> bool:
  """Rows of separate requests can share one call: every input and output has a free
  leading (batch) dimension and fixed others."""
  infos = list(sig.inputs.values()) + list(sig.outputs.values())
  return all(info.shape and info.shape[0] is None and None not in info.shape[1:]
             for info in infos)


def predicted_classes(outputs: Mapping[str, np.ndarray]) -> Optional[np.ndarray]:
  """One class per row, from whichever outputs the signature has (for the class metrics)."""
  classes = outputs.get(features.CLASSES_OUTPUT)
  if classes is not None and classes.ndim == 1:
    return classes
  scores = outputs.get(CLASSIFY_SCORES, outputs.get(features.PROBABILITIES_OUTPUT))
  if scores is None or scores.ndim != 2:
    return None
  best = scores.argmax(axis=1)
  if classes is not None and classes.shape == scores.shape:
    return classes[np.arange(len(best)), best]
  return best


class Servable:
  """A loaded SavedModel version: its SignatureDefs (for metadata) and callable signatures."""

  def __init__(self, name: str, version: int, path: Path, meta_graph: meta_graph_pb2.MetaGraphDef,
               signatures: Mapping[str, Signature], limits: Limits, keepalive: object = None,
               batching: Optional[BatchingParameters] = None):
    self.name = name
    self.version = version
    self.path = path
    self.signatures = dict(signatures)
    self.limits = limits
    self.signature_def_map = get_model_metadata_pb2.SignatureDefMap()
    for key, sig_def in meta_graph.signature_def.items():
      self.signature_def_map.signature_def[key].CopyFrom(sig_def)
    self._keepalive = keepalive  # the loaded object owns the variables the functions use
    # A batch thread checks the values and records the predictions once per batch.
    self._batchers = {key: Batcher(f'{name}-{version}-{key}', functools.partial(self._call, sig),
                                   batching, _check_all_values, self._record)
                      for key, sig in self.signatures.items() if batching and batchable(sig)}

  @classmethod
  def load(cls, name: str, version: int, path: Path, limits: Limits,
           batching: Optional[BatchingParameters] = None) -> 'Servable':
    """Loads and warms up one version; raises on anything incomplete or unreadable."""
    start = time.monotonic()
    try:
      saved_model = saved_model_pb2.SavedModel.FromString(
          (Path(path) / SAVED_MODEL_FILE).read_bytes())
      meta_graphs = [m for m in saved_model.meta_graphs if SERVE_TAG in m.meta_info_def.tags]
      if not meta_graphs:
        raise ValueError(f'{path}: no MetaGraph tagged {SERVE_TAG!r}')
      meta_graph = meta_graphs[0]
      loaded = tf.saved_model.load(str(path), tags=[SERVE_TAG])
    except Exception:
      metrics.record_load(str(path), False, time.monotonic() - start)
      raise
    metrics.record_load(str(path), True, time.monotonic() - start)
    signatures = {}
    for key, fn in loaded.signatures.items():
      sig_def = meta_graph.signature_def[key]
      signatures[key] = Signature(
          key, sig_def.method_name,
          {k: TensorInfo.from_proto(v) for k, v in sig_def.inputs.items()},
          {k: TensorInfo.from_proto(v) for k, v in sig_def.outputs.items()}, fn)
    servable = cls(name, version, Path(path), meta_graph, signatures, limits, loaded, batching)
    servable.warm_up()
    log.info('Loaded %s version %d from %s in %.1fs (signatures: %s%s)', name, version, path,
             time.monotonic() - start, ', '.join(sorted(signatures)),
             f'; batching {", ".join(sorted(servable._batchers))}' if servable._batchers else '')
    return servable

  def warm_up(self) -> None:
    """Runs each numeric signature once, so the first real request pays no graph set-up."""
    for sig in self.signatures.values():
      if any(info.is_string or info.shape is None for info in sig.inputs.values()):
        continue
      dummy = {k: np.zeros([1 if d is None else d for d in info.shape], info.numpy_dtype)
               for k, info in sig.inputs.items()}
      try:
        sig.fn(**{k: tf.constant(v) for k, v in dummy.items()})
      except Exception as e:  # pylint: disable=broad-except
        log.warning('Warm-up of %s version %d signature %s failed: %s', self.name,
                    self.version, sig.name, e)

  def close(self) -> None:
    """Unloading: the batch threads finish what is queued and exit."""
    for batcher in self._batchers.values():
      batcher.close()

  def signature(self, name: str) -> Signature:
    key = name or DEFAULT_SIGNATURE
    if key not in self.signatures:
      raise invalid(f'Serving signature name: "{key}" not found in signature def')
    return self.signatures[key]

  def _call(self, sig: Signature, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """One call into the model."""
    rows = next(iter(inputs.values())).shape[:1]
    metrics.record_model_call(self.name, self.version, sig.name, rows[0] if rows else 1)
    try:
      outputs = sig.fn(**{k: tf.constant(v) for k, v in inputs.items()})
    except tf.errors.OpError as e:
      raise ServingError(_GRPC_CODES.get(e.error_code, grpc.StatusCode.INTERNAL),
                         _op_error_text(e.message)) from None
    return {k: v.numpy() for k, v in outputs.items()}

  def _run(self, sig: Signature, inputs: Mapping[str, np.ndarray], record: bool
           ) -> Dict[str, np.ndarray]:
    """One request's outputs, once its values passed. With batching, through the
    signature's batch queue, which checks values and records predictions per batch;
    warm-up replays (`record=False`: no prediction metrics) never queue, as no client
    waits on them."""
    batcher = self._batchers.get(sig.name) if record else None
    if batcher is not None:
      return batcher.run(inputs)
    _check_all_values(inputs)
    outputs = self._call(sig, inputs)
    if record:
      self._record(outputs, rows_of(inputs))
    return outputs

  def _record(self, outputs: Mapping[str, np.ndarray], rows: int) -> None:
    metrics.record_predictions(self.name, self.version, rows, predicted_classes(outputs))

  def _checked(self, signature_name: str, inputs: Mapping[str, np.ndarray],
               output_filter: Iterable[str]) -> Tuple[Signature, List[str]]:
    """The signature and the outputs wanted, once the inputs fit the signature."""
    sig = self.signature(signature_name)
    check_input_names(sig, inputs)
    for key, value in inputs.items():
      _check_input(key, value, sig.inputs[key], self.limits)
    return sig, _wanted_outputs(sig, output_filter)

  def predict(self, signature_name: str, inputs: Mapping[str, np.ndarray],
              output_filter: Iterable[str] = (), record: bool = True) -> Dict[str, np.ndarray]:
    """`record=False` (warm-up replays) leaves the prediction metrics and the batch queue
    alone."""
    sig, wanted = self._checked(signature_name, inputs, output_filter)
    outputs = self._run(sig, inputs, record)
    return {k: outputs[k] for k in wanted}

  def batches(self, signature_name: str) -> bool:
    """Whether requests to this signature go through a batch queue."""
    return (signature_name or DEFAULT_SIGNATURE) in self._batchers

  async def predict_batched(self, sig: Signature, inputs: Mapping[str, np.ndarray],
                            output_filter: Iterable[str],
                            alone: Callable[[Callable[[], Dict[str, np.ndarray]]],
                                            Awaitable[Dict[str, np.ndarray]]]
                            ) -> Dict[str, np.ndarray]:
    """`predict` for an event loop, on a batching signature, for inputs decoded from
    TensorProtos whose names, dtypes and shapes were checked against `sig`: the request
    waits for its batch without holding a thread; `alone` runs a call that cannot join one."""
    wanted = _wanted_outputs(sig, output_filter)
    outputs = await self._batchers[sig.name].run_async(inputs, alone)
    return {k: outputs[k] for k in wanted}

  def _run_examples(self, signature_name: str, method: str, kind: str,
                    serialized: List[bytes], record: bool
                    ) -> Tuple[Signature, Dict[str, np.ndarray]]:
    sig = self.signature(signature_name)
    if sig.method_name != method:
      others = sorted(k for k, s in self.signatures.items() if s.method_name == method)
      hint = f' (signatures of this model with that method: {", ".join(others)})' if others else ''
      raise invalid(f'Expected {kind} signature method_name to be {method}. Was: '
                    f'{sig.method_name}{hint}')
    if len(sig.inputs) != 1 or not next(iter(sig.inputs.values())).is_string:
      raise invalid('Expected one input Tensor of serialized tf.Examples.')
    if not serialized:
      raise invalid('Invalid argument: Input is empty.')
    check_examples(len(serialized), sum(len(e) for e in serialized), 0, self.limits)
    examples = np.array(serialized, dtype=object)
    return sig, self._run(sig, {next(iter(sig.inputs)): examples}, record)

  def classify(self, signature_name: str, serialized: List[bytes], record: bool = True
               ) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """Returns (classes [n, k] bytes or None, scores [n, k] float or None)."""
    sig, out = self._run_examples(signature_name, CLASSIFY_METHOD, 'classification',
                                  serialized, record)
    if CLASSIFY_CLASSES not in sig.outputs and CLASSIFY_SCORES not in sig.outputs:
      raise invalid(f'Expected classification signature outputs to contain '
                    f'{CLASSIFY_CLASSES} or {CLASSIFY_SCORES}.')
    classes, scores = out.get(CLASSIFY_CLASSES), out.get(CLASSIFY_SCORES)
    for value in (classes, scores):
      if value is not None and (value.ndim != 2 or value.shape[0] != len(serialized)):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f'Expected classification output of shape [batch, classes], '
                           f'got {_shape_text(value.shape)}')
    return classes, scores

  def regress(self, signature_name: str, serialized: List[bytes], record: bool = True
              ) -> np.ndarray:
    """Returns one float per example."""
    sig, out = self._run_examples(signature_name, REGRESS_METHOD, 'regression', serialized,
                                  record)
    if REGRESS_OUTPUTS not in sig.outputs:
      raise invalid(f'No output tensor named "{REGRESS_OUTPUTS}" in the regression signature')
    values = out[REGRESS_OUTPUTS]
    if values.shape not in ((len(serialized),), (len(serialized), 1)):
      raise invalid(f'Expected regression output of shape [batch] or [batch, 1], got '
                    f'{_shape_text(values.shape)}')
    return values.reshape(-1)
