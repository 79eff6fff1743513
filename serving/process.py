"""Start `python -m serving` as a real process on free loopback ports (tests, benchmarks).

The server binds port 0 and reports the ports it got in a ready file, so there is no
race between picking a free port and binding it. The log goes to a file, never a pipe
that could fill up and block the server.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional, Sequence

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
  """Linux: the server gets SIGTERM if the test or benchmark process dies first."""
  try:
    import ctypes  # pylint: disable=import-outside-toplevel
    ctypes.CDLL('libc.so.6', use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
  except (OSError, AttributeError):
    pass


@dataclasses.dataclass
class ServerProcess:
  process: subprocess.Popen
  host: str
  rest_port: int
  grpc_port: int
  log_path: Path

  @property
  def rest_url(self) -> str:
    return f'http://{self.host}:{self.rest_port}'

  @property
  def grpc_target(self) -> str:
    return f'{self.host}:{self.grpc_port}'

  def log_text(self) -> str:
    return self.log_path.read_text(errors='replace') if self.log_path.exists() else ''

  def alive(self) -> bool:
    return self.process.poll() is None

  def stop(self, timeout: float = 20) -> int:
    """SIGTERM (graceful), then SIGKILL if it does not exit in time."""
    if self.process.poll() is None:
      self.process.send_signal(signal.SIGTERM)
      try:
        self.process.wait(timeout)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait()
    return self.process.returncode

  def __enter__(self) -> 'ServerProcess':
    return self

  def __exit__(self, *_: object) -> None:
    self.stop()


def start_server(model_dir: Path, model_name: str = 'mnist', *, args: Sequence[str] = (),
                 host: str = '127.0.0.1', timeout: float = 120,
                 log_path: Optional[Path] = None,
                 project_root: Path = PROJECT_ROOT) -> ServerProcess:
  """Launches the server and waits until it listens (initial versions already loaded).
  `project_root`: the checkout whose `serving` runs (benchmarks compare two)."""
  work = Path(tempfile.mkdtemp(prefix='serving-'))
  ready = work / 'ready.json'
  log_path = log_path or work / 'server.log'
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(project_root), env.get('PYTHONPATH')]))
  command = [sys.executable, '-m', 'serving', '--model-dir', str(model_dir),
             '--model-name', model_name, '--host', host, '--rest-port', '0',
             '--grpc-port', '0', '--ready-file', str(ready), *args]
  with open(log_path, 'wb') as log:
    process = subprocess.Popen(
        command, cwd=project_root, env=env, stdout=log, stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent if sys.platform.startswith('linux') else None)
  deadline = time.monotonic() + timeout
  while not ready.exists():
    if process.poll() is not None or time.monotonic() > deadline:
      if process.poll() is None:
        process.kill()
        process.wait()
      tail = log_path.read_text(errors='replace')[-3000:]
      raise RuntimeError(f'server did not start (exit code {process.returncode}):\n{tail}')
    time.sleep(0.05)
  ports = json.loads(ready.read_text())
  return ServerProcess(process, host, ports['rest_port'], ports['grpc_port'], log_path)


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.1,
             what: str = 'condition') -> None:
  """Polls until condition() is true; raises TimeoutError naming what it waited for."""
  deadline = time.monotonic() + timeout
  while not condition():
    if time.monotonic() > deadline:
      raise TimeoutError(f'timed out after {timeout}s waiting for {what}')
    time.sleep(interval)


def served_versions(rest_url: str, model_name: str = 'mnist') -> dict:
  """{version: state} from the status endpoint ({} while the model has no versions)."""
  try:
    with urllib.request.urlopen(f'{rest_url}/v1/models/{model_name}', timeout=5) as response:
      body = json.loads(response.read())
  except urllib.error.HTTPError:
    return {}
  return {int(s['version']): s['state'] for s in body['model_version_status']}
