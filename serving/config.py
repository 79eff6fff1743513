"""Server settings and TF Serving's model config file (version policy and labels).

The model config file is TF Serving's own text-proto `ModelServerConfig`, so one file
drives both this server and the official `tensorflow/serving` image. Only the entry for
the served model matters here, and only its `model_version_policy` and `version_labels`:
the location always comes from `--model-dir`, because the file's `base_path` is usually a
container path such as `/models/mnist`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Dict, FrozenSet, Iterable, Optional

from google.protobuf import text_format

from serving.limits import DEFAULT_MAX_INPUT_BYTES, Limits

log = logging.getLogger(__name__)

# TF Serving caps neither (gRPC messages up to 2 GiB, REST bodies unbounded, no batch size
# without batching). Ours are bounded by memory instead of a count: 32 MiB holds ~7,000
# images as JSON floats, and the decoded-size limit (serving.limits) bounds what any
# request can make the server allocate. 0 for the batch size means no cap.
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_BATCH_SIZE = 0


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
  """Which of the versions on disk to serve: TF Serving's latest / all / specific."""
  kind: str = 'latest'                    # 'latest' | 'all' | 'specific'
  num_versions: int = 1                   # for 'latest'
  versions: FrozenSet[int] = frozenset()  # for 'specific'

  def select(self, available: Iterable[int]) -> FrozenSet[int]:
    available = sorted(set(available), reverse=True)
    if self.kind == 'all':
      return frozenset(available)
    if self.kind == 'specific':
      return frozenset(v for v in available if v in self.versions)
    return frozenset(available[:max(self.num_versions, 1)])


@dataclasses.dataclass(frozen=True)
class ModelPolicy:
  """What the model config file says about the served model."""
  versions: VersionPolicy = VersionPolicy()
  labels: Dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ServerConfig:
  model_dir: Path                          # the serving dir: <model_dir>/<model_name>/<version>/
  model_name: str = 'mnist'
  host: str = '127.0.0.1'
  rest_port: int = 8501                    # 0 picks a free port (see ready_file)
  grpc_port: int = 8500
  model_config_file: Optional[Path] = None
  poll_seconds: float = 1.0                # TF Serving's file_system_poll_wait_seconds
  max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
  max_batch_size: int = DEFAULT_MAX_BATCH_SIZE   # 0: no cap
  max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES  # decoded size of one request's inputs
  inference_threads: int = 4
  ready_file: Optional[Path] = None        # written with the bound ports once serving
  enable_batching: bool = False            # TF Serving's --enable_batching
  batching_parameters_file: Optional[Path] = None   # its --batching_parameters_file
  data_dir: Optional[Path] = None          # the page's corrections go to <data_dir>/incoming/

  @property
  def base_path(self) -> Path:
    return Path(self.model_dir) / self.model_name

  @property
  def limits(self) -> Limits:
    return Limits(self.max_batch_size, self.max_input_bytes)


def parse_model_config(text: str, model_name: str) -> ModelPolicy:
  """Reads the served model's entry from a ModelServerConfig text proto."""
  # Imported here: tensorflow_serving's protos pull in TensorFlow's.
  from tensorflow_serving.config import model_server_config_pb2  # pylint: disable=import-outside-toplevel
  config = model_server_config_pb2.ModelServerConfig()
  text_format.Parse(text, config)
  entries = list(config.model_config_list.config)
  matching = [c for c in entries if c.name == model_name]
  if not matching:
    raise ValueError(f'no config entry named {model_name!r} '
                     f'(found: {", ".join(c.name for c in entries) or "none"})')
  entry = matching[0]
  policy = entry.model_version_policy
  kind = policy.WhichOneof('policy_choice') or 'latest'
  versions = VersionPolicy(
      kind=kind,
      num_versions=policy.latest.num_versions or 1,
      versions=frozenset(policy.specific.versions))
  if kind == 'specific' and not versions.versions:
    raise ValueError(f'{model_name}: a specific version policy needs at least one version')
  return ModelPolicy(versions, dict(entry.version_labels))


class ModelConfigWatcher:
  """Re-reads the config file when it changes; a bad edit keeps the last good policy."""

  def __init__(self, path: Optional[Path], model_name: str):
    self._path = Path(path) if path else None
    self._model_name = model_name
    self._mtime: Optional[int] = None
    self._policy = ModelPolicy()
    if self._path:
      self._policy = parse_model_config(self._path.read_text(), model_name)  # fail fast
      self._mtime = self._path.stat().st_mtime_ns

  def current(self) -> ModelPolicy:
    if not self._path:
      return self._policy
    try:
      mtime = self._path.stat().st_mtime_ns
      if mtime != self._mtime:
        self._mtime = mtime
        self._policy = parse_model_config(self._path.read_text(), self._model_name)
        log.info('Model config reloaded from %s: %s', self._path, self._policy)
    except (OSError, ValueError, text_format.ParseError) as e:
      log.error('Model config %s not reloaded, keeping the previous one: %s', self._path, e)
    return self._policy
