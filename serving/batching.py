"""Server-side batching: TF Serving's `--enable_batching` and `--batching_parameters_file`.

Concurrent requests to one signature of one version join a queue of open batches; a batch
thread takes the oldest batch once it is full or `batch_timeout_micros` has passed since
its first request, runs the model once on all their rows, and hands each request its own
rows of the outputs. Under load, requests arriving while the threads are busy pile into
the next batch, so one model call serves many requests.

The parameters file is TF Serving's own text proto, `BatchingParameters` of
`tensorflow_serving/servables/tensorflow/session_bundle_config.proto`. tensorflow-serving-api
does not ship that proto, so its message is declared here with the same package, names,
numbers and types (checked against TF Serving 2.16.1), and protobuf's own text-format
parser reads the file: a file TF Serving accepts parses the same way here.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import os
import threading
import time
from pathlib import Path
from typing import Awaitable, Callable, Deque, Dict, List, Mapping, Optional, Tuple

import grpc
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf import wrappers_pb2

from serving.errors import ServingError, invalid

log = logging.getLogger(__name__)

Arrays = Dict[str, np.ndarray]

# (name, number, type) of BatchingParameters' fields; wrapper types tell "unset" from 0.
_FIELDS = (
    ('max_batch_size', 1, 'Int64Value'), ('batch_timeout_micros', 2, 'Int64Value'),
    ('max_enqueued_batches', 3, 'Int64Value'), ('num_batch_threads', 4, 'Int64Value'),
    ('thread_pool_name', 5, 'StringValue'), ('enable_large_batch_splitting', 8, 'BoolValue'),
    ('max_execution_batch_size', 9, 'Int64Value'))


def _proto_class() -> type:
  """The BatchingParameters message class, built from its field list."""
  pool = descriptor_pool.DescriptorPool()
  pool.Add(descriptor_pb2.FileDescriptorProto.FromString(wrappers_pb2.DESCRIPTOR.serialized_pb))
  file = descriptor_pb2.FileDescriptorProto(
      name='tensorflow_serving/servables/tensorflow/batching_parameters.proto',
      package='tensorflow.serving', syntax='proto3', dependency=[wrappers_pb2.DESCRIPTOR.name])
  message = file.message_type.add(name='BatchingParameters')
  field = descriptor_pb2.FieldDescriptorProto
  for name, number, wrapper in _FIELDS:
    message.field.add(name=name, number=number, label=field.LABEL_OPTIONAL,
                      type=field.TYPE_MESSAGE, type_name=f'.google.protobuf.{wrapper}')
  message.field.add(name='allowed_batch_sizes', number=6, label=field.LABEL_REPEATED,
                    type=field.TYPE_INT64)
  message.field.add(name='pad_variable_length_inputs', number=7, label=field.LABEL_OPTIONAL,
                    type=field.TYPE_BOOL)
  pool.Add(file)
  descriptor = pool.FindMessageTypeByName('tensorflow.serving.BatchingParameters')
  return message_factory.MessageFactory(pool).GetPrototype(descriptor)


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
  """Defaults are TensorFlow's SharedBatchScheduler's, which TF Serving keeps for unset fields."""
  max_batch_size: int = 1000
  batch_timeout_micros: int = 0
  max_enqueued_batches: int = 10
  num_batch_threads: int = os.cpu_count() or 1      # port::MaxParallelism()
  thread_pool_name: str = 'batch_threads'
  allowed_batch_sizes: Tuple[int, ...] = ()


def parse_parameters(text: str) -> BatchingParameters:
  """A `--batching_parameters_file`'s contents; raises ValueError on what TF Serving refuses
  or this server does not do (splitting large batches, padding variable-length inputs)."""
  proto = _proto_class()()
  try:
    text_format.Parse(text, proto)
  except text_format.ParseError as e:
    raise ValueError(f'batching parameters: {e}') from None
  if proto.enable_large_batch_splitting.value or proto.HasField('max_execution_batch_size'):
    raise ValueError('batching parameters: large batch splitting is not supported here')
  if proto.pad_variable_length_inputs:
    raise ValueError('batching parameters: pad_variable_length_inputs is not supported here')
  defaults = BatchingParameters()
  values = {name: getattr(proto, name).value if proto.HasField(name) else getattr(defaults, name)
            for name, _, _ in _FIELDS if hasattr(defaults, name)}
  params = BatchingParameters(**values, allowed_batch_sizes=tuple(proto.allowed_batch_sizes))
  for name in ('max_batch_size', 'num_batch_threads', 'max_enqueued_batches'):
    if getattr(params, name) < 1:
      raise ValueError(f'batching parameters: {name} must be positive')
  if params.batch_timeout_micros < 0:
    raise ValueError('batching parameters: batch_timeout_micros must not be negative')
  sizes = params.allowed_batch_sizes
  if sizes and (list(sizes) != sorted(set(sizes)) or sizes[-1] != params.max_batch_size):
    # TF Serving's rule (batching_session.h).
    raise ValueError('batching parameters: allowed_batch_sizes must increase and end with '
                     'max_batch_size')
  return params


def read_parameters(path: Optional[Path]) -> BatchingParameters:
  """TF Serving's defaults without a file (it only names the thread pool)."""
  if path is None:
    return BatchingParameters(thread_pool_name='model_server_batch_threads')
  return parse_parameters(Path(path).read_text())


class _Task:
  """One request's rows. A blocking caller waits on `ready`, a lock the batch thread
  releases once `outputs` or `error` is set (the cheapest hand-off between two threads);
  a coroutine awaits `future`, settled on its event loop."""
  __slots__ = ('inputs', 'rows', 'ready', 'future', 'outputs', 'error')

  def __init__(self, inputs: Mapping[str, np.ndarray], rows: int,
               future: Optional['asyncio.Future[Arrays]'] = None):
    self.inputs = inputs
    self.rows = rows
    self.future = future
    self.ready: Optional[threading.Lock] = None
    if future is None:
      self.ready = threading.Lock()
      self.ready.acquire()
    self.outputs: Arrays = {}
    self.error: Optional[BaseException] = None


def _settle(tasks: List[_Task]) -> None:
  """On the event loop: one call settles every awaiting task of a batch."""
  for task in tasks:
    if task.future.done():   # the caller went away (cancelled RPC)
      continue
    if task.error is not None:
      task.future.set_exception(task.error)
    else:
      task.future.set_result(task.outputs)


def rows_of(inputs: Mapping[str, np.ndarray]) -> int:
  """A request's rows: its first input's leading dimension (a scalar is one row)."""
  first = next(iter(inputs.values()))
  return first.shape[0] if first.ndim else 1


def _merged(tasks: List[_Task]) -> Arrays:
  """The tasks' rows, one array per input."""
  if len(tasks) == 1:
    return dict(tasks[0].inputs)
  return {k: np.concatenate([t.inputs[k] for t in tasks]) for k in tasks[0].inputs}


class _Batch:
  __slots__ = ('tasks', 'rows', 'opened')

  def __init__(self) -> None:
    self.tasks: List[_Task] = []
    self.rows = 0
    self.opened = time.monotonic()


class Batcher:
  """The queue of one signature of one servable, and the threads that run its batches."""

  def __init__(self, name: str, run: Callable[[Arrays], Arrays], params: BatchingParameters,
               check: Optional[Callable[[Arrays], None]] = None,
               done: Optional[Callable[[Arrays, int], None]] = None):
    """`check` raises on inputs the model must not see; `done` gets the outputs of the
    rows answered and their count (padding left out). Both run once per batch, on all its
    rows, where each request would cost calls of its own; `check` runs on each request
    alone only when the batch fails it."""
    self._run = run
    self._check = check
    self._done = done
    self._params = params
    self._timeout = params.batch_timeout_micros / 1e6
    self._cond = threading.Condition()
    self._batches: Deque[_Batch] = collections.deque()
    self._closed = False
    self._threads = [threading.Thread(target=self._loop, daemon=True,
                                      name=f'{params.thread_pool_name}-{name}-{i}')
                     for i in range(params.num_batch_threads)]
    for thread in self._threads:
      thread.start()

  def run(self, inputs: Mapping[str, np.ndarray]) -> Arrays:
    """Runs `inputs` as part of a batch; blocks until its outputs are ready."""
    task = self._enqueue(inputs, None)
    if task is None:
      return self._alone(inputs)
    task.ready.acquire()
    if task.error is not None:
      raise task.error
    return task.outputs

  async def run_async(self, inputs: Mapping[str, np.ndarray],
                      alone: Callable[[Callable[[], Arrays]], Awaitable[Arrays]]
                      ) -> Arrays:
    """`run` for a coroutine: no thread waits while the batch fills; the batch thread
    settles all of a batch's futures with one call into the loop. A request that cannot
    join a batch runs through `alone` (e.g. a thread pool), never on the loop."""
    future = asyncio.get_running_loop().create_future()
    task = self._enqueue(inputs, future)
    if task is None:
      return await alone(lambda: self._alone(inputs))
    return await future

  def _alone(self, inputs: Mapping[str, np.ndarray]) -> Arrays:
    if self._check is not None:
      self._check(inputs)
    outputs = self._run(dict(inputs))
    if self._done is not None:
      self._done(outputs, rows_of(inputs))
    return outputs

  def _enqueue(self, inputs: Mapping[str, np.ndarray],
               future: Optional['asyncio.Future[Arrays]']) -> Optional[_Task]:
    """The request's task, queued; None if it must run alone (no common batch dimension:
    the model will say why; or the version is being unloaded)."""
    rows = {v.shape[0] if v.ndim else -1 for v in inputs.values()}
    if len(rows) != 1 or -1 in rows:
      return None
    task = _Task(inputs, rows.pop(), future)
    if task.rows > self._params.max_batch_size:
      raise invalid(f'Task size {task.rows} is larger than maximum input batch size '
                    f'{self._params.max_batch_size}')
    with self._cond:
      if self._closed:
        return None
      if not self._batches or self._batches[-1].rows + task.rows > self._params.max_batch_size:
        if len(self._batches) >= self._params.max_enqueued_batches:
          raise ServingError(grpc.StatusCode.UNAVAILABLE,
                             'The batch scheduling queue to which this task was submitted is '
                             'full')
        self._batches.append(_Batch())
      batch = self._batches[-1]
      batch.tasks.append(task)
      batch.rows += task.rows
      # Wake a batch thread only when there is news for it, as TF's queue does: a new
      # batch (its timeout starts now, or it closed the one before) or a full one.
      # Other tasks just join: an idle thread's timed wait already ends at the timeout,
      # and a busy one looks again when it is done.
      if len(batch.tasks) == 1 or batch.rows >= self._params.max_batch_size:
        self._cond.notify()
    return task

  def close(self) -> None:
    """Queued batches still run; later requests run alone; the threads then exit."""
    with self._cond:
      self._closed = True
      self._cond.notify_all()

  def _next_batch(self) -> Optional[_Batch]:
    """The oldest batch once it is full, closed by a newer one, or past its timeout."""
    with self._cond:
      while True:
        if self._batches:
          oldest = self._batches[0]
          wait = oldest.opened + self._timeout - time.monotonic()
          if (wait <= 0 or len(self._batches) > 1 or self._closed
              or oldest.rows >= self._params.max_batch_size):
            if len(self._batches) > 1:
              self._cond.notify()   # an idle thread takes up the batch behind this one
            return self._batches.popleft()
          self._cond.wait(wait)
        elif self._closed:
          return None
        else:
          self._cond.wait()

  def _loop(self) -> None:
    while (batch := self._next_batch()) is not None:
      self._process(batch.tasks, batch.rows)

  def _padded_rows(self, rows: int) -> int:
    return next((size for size in self._params.allowed_batch_sizes if size >= rows), rows)

  def _passing(self, tasks: List[_Task]) -> List[_Task]:
    """The tasks whose inputs pass `check`, each checked alone; the others get its error."""
    passing = []
    for task in tasks:
      try:
        self._check(task.inputs)
        passing.append(task)
      except ServingError as e:
        task.error = e
    return passing

  def _process(self, tasks: List[_Task], rows: int) -> None:
    running = tasks
    try:
      merged = _merged(tasks)
      if self._check is not None:
        try:
          self._check(merged)
        except ServingError:
          running = self._passing(tasks)
          if not running:
            return
          merged, rows = _merged(running), sum(task.rows for task in running)
      padding = self._padded_rows(rows) - rows
      if padding:   # TF Serving pads with copies of the first row
        merged = {k: np.concatenate([v, np.repeat(v[:1], padding, axis=0)])
                  for k, v in merged.items()}
      outputs = self._run(merged)
      start = 0
      for task in running:
        task.outputs = {k: v[start:start + task.rows] for k, v in outputs.items()}
        start += task.rows
      if self._done is not None:
        self._done({k: v[:rows] for k, v in outputs.items()} if padding else outputs, rows)
    except BaseException as e:  # pylint: disable=broad-except  (handed to every waiting request)
      for task in running:
        task.error = e
    finally:
      waiting: Dict[asyncio.AbstractEventLoop, List[_Task]] = {}
      for task in tasks:
        if task.future is None:
          task.ready.release()
        else:
          waiting.setdefault(task.future.get_loop(), []).append(task)
      for loop, settled in waiting.items():
        try:
          loop.call_soon_threadsafe(_settle, settled)
        except RuntimeError:   # that loop is closed: nobody waits any more
          pass
