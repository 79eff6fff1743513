"""Shared, expensive state of the reliability tests, built once per session.

`scenario`: the real pipeline on a small MNIST slice, killed by SIGKILL while the Trainer
trains (through `python -m pipeline run`, as a user would start it) and then started
again in-process (`local_runner.run`, what that command calls). The resumed run pushes a
model: the gate and the server tests use it and its ML Metadata.

`server`: the project's model server as a real process, on a copy of that serving dir.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List

import pytest
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from pipeline import configs, summary
from serving import process

SLICE = {'MNIST_PRESET': 'quick', 'MNIST_LIMIT_TRAIN': '1200', 'MNIST_EVAL_SIZE': '200',
         'MNIST_LIMIT_TEST': '300', 'MNIST_EPOCHS': '2', 'MNIST_BATCH_SIZE': '64', 'MNIST_ARCHITECTURE': 'mlp',
         'MNIST_BEAM_WORKERS': '1', 'MNIST_ACCURACY_THRESHOLD': '0.5',
         'MNIST_MIN_FREE_MB': '50'}
KILL_AT = 'Epoch 1/'  # Keras prints it when the Trainer's first epoch starts
RUN_TIMEOUT = 900
MODEL_NAME = 'mnist'


@dataclasses.dataclass
class Scenario:
  config: configs.LocalConfig
  killed_output: str       # what `python -m pipeline run` printed before the kill
  killed_after: float      # seconds from start to kill


def store(config: configs.LocalConfig) -> metadata_store.MetadataStore:
  connection = metadata_store_pb2.ConnectionConfig()
  connection.sqlite.filename_uri = str(config.metadata_path)
  return metadata_store.MetadataStore(connection)


def run_contexts(config: configs.LocalConfig) -> List[metadata_store_pb2.Context]:
  """Pipeline runs, oldest first."""
  return sorted(store(config).get_contexts_by_type(summary.PIPELINE_RUN_CONTEXT),
                key=lambda c: c.create_time_since_epoch)


def executions_of(config: configs.LocalConfig, run: metadata_store_pb2.Context
                  ) -> Dict[str, metadata_store_pb2.Execution]:
  """component id -> its execution in one run."""
  mlmd = store(config)
  result = {}
  for execution in mlmd.get_executions_by_context(run.id):
    for context in mlmd.get_contexts_by_execution(execution.id):
      if context.type == summary.NODE_CONTEXT:
        result[context.name.split('.', 1)[-1]] = execution
  return result


def artifacts_of(config: configs.LocalConfig, execution_id: int, kind: int
                 ) -> List[metadata_store_pb2.Artifact]:
  """Input (Event.INPUT) or output (Event.OUTPUT) artifacts of an execution."""
  mlmd = store(config)
  ids = [e.artifact_id for e in mlmd.get_events_by_execution_ids([execution_id])
         if e.type == kind]
  return mlmd.get_artifacts_by_id(ids) if ids else []


def _read_lines(stream, lines: 'queue.Queue[str]') -> None:
  for line in stream:
    lines.put(line)
  lines.put('')


def start_and_kill(env: Dict[str, str], marker: str) -> tuple[str, float]:
  """Runs `python -m pipeline run` and SIGKILLs its whole process group once `marker`
  appears in its output: no clean-up code of the run gets a chance to run."""
  start = time.monotonic()
  proc = subprocess.Popen([sys.executable, '-m', 'pipeline', 'run'], cwd=configs.REPO_ROOT,
                          env={**env, 'PYTHONUNBUFFERED': '1'}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
  lines: 'queue.Queue[str]' = queue.Queue()
  threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
  output: List[str] = []
  try:
    while True:
      line = lines.get(timeout=max(1.0, RUN_TIMEOUT - (time.monotonic() - start)))
      output.append(line)
      if marker in line or not line:
        break
  finally:
    os.killpg(proc.pid, signal.SIGKILL)  # the group this test started, by its id
    proc.wait()
  text = ''.join(output)
  assert marker in text, f'the run ended before {marker!r}:\n{text[-4000:]}'
  return text, time.monotonic() - start


@pytest.fixture(scope='session')
def scenario(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Scenario:
  out = tmp_path_factory.mktemp('reliability')
  env = {**os.environ, **SLICE, 'MNIST_DATA_DIR': str(mnist_dir), 'MNIST_OUTPUT_DIR': str(out)}
  killed_output, killed_after = start_and_kill(env, KILL_AT)
  config = configs.load(environ=env)
  from pipeline import local_runner  # pylint: disable=import-outside-toplevel  (TFX)
  local_runner.run(config)
  return Scenario(config, killed_output, killed_after)


def versions(model_dir: Path) -> List[int]:
  return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())


@pytest.fixture(scope='session')
def server(scenario: Scenario, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[process.ServerProcess]:
  """The project's server on a copy of the pushed model, polling every 0.2 s; small
  limits so that the bad-request tests can cross them cheaply."""
  serving_dir = tmp_path_factory.mktemp('served')
  shutil.copytree(scenario.config.model_serving_dir, serving_dir / MODEL_NAME)
  with process.start_server(serving_dir, MODEL_NAME,
                            args=['--poll-seconds', '0.2', '--max-batch-size', '100',
                                  '--max-body-bytes', str(1024 * 1024)]) as running:
    running.serving_dir = serving_dir  # type: ignore[attr-defined]
    yield running
    assert running.alive(), 'the server died:\n' + running.log_text()[-3000:]
