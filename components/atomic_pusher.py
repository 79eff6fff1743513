"""A Pusher whose versions appear in the serving directory complete or not at all.

TFX's Pusher copies file by file straight into `<base>/<version>/` (saved_model.pb last),
so a model server polling the directory can meet a version whose variables are still
being written, and a push that dies half-way (disk full, killed) leaves a broken version
behind for good. This executor copies into a hidden staging folder beside the versions
(`.push-*`, which TF Serving and `serving/` ignore: only integer names are versions),
then renames it into place: one atomic step on a local filesystem. A failed copy
removes its staging folder and the run fails; the serving directory is as it was.

Versions are the Unix time, as TFX's, but always above the highest version already
there: a model server serves the largest number, so a clock set back (or a version
pushed by hand) must not hide a new model, and two pushes in one second both land.

A model byte-for-byte identical to the latest version is not pushed again (TFX's Pusher
would add a duplicate version, e.g. when a re-run is cached up to the Trainer and the
Evaluator blesses the same model against itself); the push records that version.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List

from absl import logging
from tfx import types
from tfx.components.pusher import executor as pusher_executor
from tfx.components.pusher.component import Pusher
from tfx.dsl.components.base import executor_spec
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

from serving.layout import STAGING_PREFIX, latest_version, next_version

STALE_STAGING_SECONDS = 3600  # older staging folders are leftovers of killed pushes


def same_files(a: Path, b: Path) -> bool:
  def names(root: Path) -> List[Path]:
    return sorted(p.relative_to(root) for p in root.rglob('*') if p.is_file())
  files = names(a)
  return files == names(b) and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files)


def remove_stale_staging(base: Path, now: float) -> None:
  for path in base.glob(STAGING_PREFIX + '*'):
    if now - path.stat().st_mtime > STALE_STAGING_SECONDS:
      shutil.rmtree(path, ignore_errors=True)


def copy_model(source: str, staging: Path) -> None:
  """The copy step (a seam for tests): the whole SavedModel folder, as TFX copies it."""
  io_utils.copy_dir(source, str(staging))


def push_atomically(source: str, base: Path, now: float | None = None) -> Path:
  """Copies the SavedModel at `source` to `<base>/<new version>` via a staging folder."""
  now = time.time() if now is None else now
  base.mkdir(parents=True, exist_ok=True)
  remove_stale_staging(base, now)
  staging = base / f'{STAGING_PREFIX}{uuid.uuid4().hex}'
  try:
    copy_model(source, staging)
    for _ in range(100):  # another pusher may take a number first; try the next
      target = base / str(next_version(base, now))
      try:
        os.rename(staging, target)  # fails if target exists and is not empty
      except OSError:
        if target.exists():
          continue
        raise
      return target
    raise RuntimeError(f'could not find a free version number under {base}')
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise


class Executor(pusher_executor.Executor):
  """TFX's Pusher executor, with the filesystem push made atomic on local paths."""

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    destination = pusher_pb2.PushDestination()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY],
                              destination)
    base = destination.filesystem.base_directory
    if destination.WhichOneof('destination') != 'filesystem' or '://' in base:
      # Object stores have no atomic folder rename: TFX's own push (saved_model.pb last).
      return super().Do(input_dict, output_dict, exec_properties)
    model_push = artifact_utils.get_single_instance(
        output_dict[standard_component_specs.PUSHED_MODEL_KEY])
    if not self.CheckBlessing(input_dict):
      self._MarkNotPushed(model_push)
      return None
    model_path = self.GetModelPath(input_dict)
    latest = latest_version(Path(base))
    if latest and '://' not in model_path and same_files(Path(model_path), latest):
      target = latest
      logging.info('Model already served as version %s; not pushed again.', target.name)
    else:
      target = push_atomically(model_path, Path(base))
      logging.info('Model written to serving path %s.', target)
    io_utils.copy_dir(model_path, model_push.uri)  # the archive copy TFX keeps
    self._MarkPushed(model_push, pushed_destination=str(target), pushed_version=target.name)
    return None


class AtomicPusher(Pusher):
  """TFX's Pusher component with the executor above (give it the id `Pusher`)."""

  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)
