"""Prometheus metrics, served at TF Serving's path on the REST port.

TF Serving's own names and labels where it has them (checked against tensorflow/serving
2.16.1: servables/tensorflow/util.cc, saved_model_warmup_util.cc, TensorFlow's
cc/saved_model/loader.cc, and util/prometheus_exporter.cc, which turns `/a/b` into `:a:b`),
so dashboards built for the official server read this one; ours, prefixed `serving_`,
beside them. TF Serving's latencies are in microseconds, with its buckets (10 x 1.8^i).

TF Serving writes its counters without the `_total` suffix that prometheus_client gives
every Counter, so those few are collected here and exposed untyped under their exact names.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import Metric

PATH = '/monitoring/prometheus/metrics'       # TF Serving's PrometheusExporter::kPrometheusPath
CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8'   # what generate_latest writes
LATENCY_BUCKETS_US = tuple(10 * 1.8 ** i for i in range(33))   # Buckets::Exponential(10, 1.8, 33)
BATCH_BUCKETS = tuple(2 ** i for i in range(15))

prometheus_client.disable_created_metrics()   # no `_created` series: TF Serving has none
REGISTRY = CollectorRegistry()


class _ExactCounters:
  """Counters exposed under their exact names (no `_total`), as TF Serving writes them."""

  def __init__(self) -> None:
    self._lock = threading.Lock()
    self._families: Dict[str, Tuple[str, Tuple[str, ...]]] = {}
    self._values: Dict[str, Dict[Tuple[str, ...], float]] = {}

  def define(self, name: str, documentation: str, labels: Sequence[str]) -> str:
    self._families[name] = (documentation, tuple(labels))
    self._values[name] = {}
    return name

  def inc(self, name: str, labels: Sequence[str], amount: float = 1.0) -> None:
    key = tuple(labels)
    with self._lock:
      self._values[name][key] = self._values[name].get(key, 0.0) + amount

  def collect(self) -> Iterator[Metric]:
    with self._lock:
      snapshot = {name: dict(values) for name, values in self._values.items()}
    for name, (documentation, label_names) in self._families.items():
      family = Metric(name, documentation, 'unknown')
      for key, value in snapshot[name].items():
        family.add_sample(name, dict(zip(label_names, key)), value)
      yield family


_EXACT = _ExactCounters()
REGISTRY.register(_EXACT)

# --- TF Serving's ---------------------------------------------------------------------------
REQUEST_COUNT = _EXACT.define(':tensorflow:serving:request_count',
                              'The total number of requests.', ('model_name', 'status'))
LOAD_ATTEMPT_COUNT = _EXACT.define(
    ':tensorflow:cc:saved_model:load_attempt_count',
    'The number of times a SavedModel was successfully loaded.', ('model_path', 'status'))
LOAD_LATENCY = _EXACT.define(
    ':tensorflow:cc:saved_model:load_latency',
    'Latency in microseconds for SavedModels that were successfully loaded.', ('model_path',))
REQUEST_LATENCY = Histogram(
    ':tensorflow:serving:request_latency',
    'Distribution of wall time (in microseconds) for Tensorflow Serving request.',
    ('model_name', 'API', 'entrypoint'), buckets=LATENCY_BUCKETS_US, registry=REGISTRY)
WARMUP_LATENCY = Histogram(
    ':tensorflow:serving:model_warmup_latency',
    'Distribution of wall time (in microseconds) for warming up the model.',
    ('model_path', 'status'), buckets=LATENCY_BUCKETS_US, registry=REGISTRY)

# --- ours -------------------------------------------------------------------------------------
PREDICTIONS = Counter('serving_predictions', 'Images (or examples) answered, by served version.',
                      ('model_name', 'version'), registry=REGISTRY)
PREDICTED_CLASS = Counter('serving_predicted_class',
                          'Answers by predicted class: their mix moving is a drift signal.',
                          ('model_name', 'version', 'class'), registry=REGISTRY)
CORRECTIONS = Counter('serving_corrections_received',
                      'Corrections of a prediction sent back by users.', ('model_name',),
                      registry=REGISTRY)
WARMUP_REQUESTS = Counter('serving_warmup_requests',
                          'Requests replayed from assets.extra/tf_serving_warmup_requests.',
                          ('model_name', 'version'), registry=REGISTRY)
MODEL_CALLS = Counter('serving_model_calls', 'Calls into the model (one per batch).',
                      ('model_name', 'version', 'signature'), registry=REGISTRY)
BATCH_SIZE = Histogram('serving_batch_size', 'Rows per model call.', ('model_name', 'signature'),
                       buckets=BATCH_BUCKETS, registry=REGISTRY)


_CHILDREN: Dict[Tuple[int, Tuple[str, ...]], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
  """`metric.labels(*labels)`, remembered: prometheus_client checks the labels and takes a
  lock on each call, and these are called for every request. No series is ever removed."""
  key = (id(metric), labels)
  child = _CHILDREN.get(key)
  if child is None:
    child = _CHILDREN[key] = metric.labels(*labels)
  return child


def record_request(model_name: str, api: str, entrypoint: str, status: str,
                   seconds: float) -> None:
  """One Predict/Classify/Regress request: counted by status; timed when OK, as TF Serving."""
  _EXACT.inc(REQUEST_COUNT, (model_name, status))
  if status == 'OK':
    _child(REQUEST_LATENCY, model_name, api, entrypoint).observe(seconds * 1e6)


def record_load(model_path: str, ok: bool, seconds: float) -> None:
  _EXACT.inc(LOAD_ATTEMPT_COUNT, (model_path, 'success' if ok else 'fail'))
  if ok:
    _EXACT.inc(LOAD_LATENCY, (model_path,), seconds * 1e6)


def record_warmup(model_name: str, version: int, model_path: str, status: str, requests: int,
                  seconds: float) -> None:
  WARMUP_LATENCY.labels(model_path, status).observe(seconds * 1e6)
  WARMUP_REQUESTS.labels(model_name, str(version)).inc(requests)


def record_predictions(model_name: str, version: int, rows: int,
                       classes: Optional[np.ndarray]) -> None:
  """`rows` answers; `classes` (ints, or a classify signature's labels) one per row, if any."""
  _child(PREDICTIONS, model_name, str(version)).inc(rows)
  if classes is None:
    return
  for value, count in collections.Counter(classes.tolist()).items():
    label = value.decode(errors='replace') if isinstance(value, bytes) else str(value)
    _child(PREDICTED_CLASS, model_name, str(version), label).inc(count)


def record_model_call(model_name: str, version: int, signature: str, rows: int) -> None:
  _child(MODEL_CALLS, model_name, str(version), signature).inc()
  _child(BATCH_SIZE, model_name, signature).observe(rows)


def count_correction(model_name: str = 'mnist', count: int = 1) -> None:
  """For the feedback endpoint: a user said a prediction was wrong."""
  CORRECTIONS.labels(model_name).inc(count)


def exposition() -> bytes:
  """The Prometheus text format of every metric above."""
  return prometheus_client.generate_latest(REGISTRY)
