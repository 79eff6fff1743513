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

The blessing names the served version the candidate was compared with. If another version
has been served since (a concurrent run, a hand push, a cached verdict), the candidate was
never compared with it and is not pushed. Each pushed version carries its evaluation
record (`trainer.serving_layout.EVALUATION_RECORD`): metrics, baseline, spans, run and code.
"""

from __future__ import annotations

import datetime
import filecmp
import json
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
from tfx.dsl.components.base import base_component, executor_spec
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import io_utils, json_utils, proto_utils

from components.runtime_trainer import TRAINING_PROPERTY
from components.served_baseline import BASELINE_VERSION_KEY, served_version
from trainer.serving_layout import (EVALUATION_RECORD, PUSHER_FILES, STAGING_PREFIX,
                                    latest_version, next_version)

RECORD_KEY = 'record'  # JSON the pipeline fixes for every push: pipeline, code, training

STALE_STAGING_SECONDS = 3600  # older staging folders are leftovers of killed pushes


def same_files(a: Path, b: Path) -> bool:
  """The same model: every file equal, except those the Pusher adds beside it."""
  def names(root: Path) -> List[Path]:
    return sorted(p.relative_to(root) for p in root.rglob('*')
                  if p.is_file() and str(p.relative_to(root)) not in PUSHER_FILES)
  files = names(a)
  return files == names(b) and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files)


def remove_stale_staging(base: Path, now: float) -> None:
  for path in base.glob(STAGING_PREFIX + '*'):
    if now - path.stat().st_mtime > STALE_STAGING_SECONDS:
      shutil.rmtree(path, ignore_errors=True)


def copy_model(source: str, staging: Path) -> None:
  """The copy step (a seam for tests): the whole SavedModel folder, as TFX copies it."""
  io_utils.copy_dir(source, str(staging))


def push_atomically(source: str, base: Path, now: float | None = None,
                    record: Dict[str, Any] | None = None) -> Path:
  """Copies the SavedModel at `source` to `<base>/<new version>` via a staging folder,
  with `record` (its `version` filled in) as the evaluation record beside it."""
  now = time.time() if now is None else now
  base.mkdir(parents=True, exist_ok=True)
  remove_stale_staging(base, now)
  staging = base / f'{STAGING_PREFIX}{uuid.uuid4().hex}'
  try:
    copy_model(source, staging)
    for _ in range(100):  # another pusher may take a number first; try the next
      target = base / str(next_version(base, now))
      if record is not None:
        (staging / EVALUATION_RECORD).parent.mkdir(parents=True, exist_ok=True)
        (staging / EVALUATION_RECORD).write_text(
            json.dumps({**record, 'version': int(target.name)}, indent=2, sort_keys=True))
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
  """TFX's Pusher executor: the push made atomic on local paths, refused when the served
  version is no longer the one the candidate was compared with, the record written."""

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    destination = pusher_pb2.PushDestination()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY],
                              destination)
    if destination.WhichOneof('destination') != 'filesystem':
      return super().Do(input_dict, output_dict, exec_properties)
    base = destination.filesystem.base_directory
    model_push = artifact_utils.get_single_instance(
        output_dict[standard_component_specs.PUSHED_MODEL_KEY])
    if not self.CheckBlessing(input_dict):
      self._MarkNotPushed(model_push)
      return None
    blessing = artifact_utils.get_single_instance(
        input_dict[standard_component_specs.MODEL_BLESSING_KEY])
    compared_with = blessing.get_string_custom_property(BASELINE_VERSION_KEY)
    served = served_version(base)
    record = evaluation_record(blessing, exec_properties.get(RECORD_KEY) or '{}',
                               self._context.pipeline_run_id if self._context else None)
    trained = trained_with(input_dict)
    if trained is not None:
      record['training'] = trained
    model_path = self.GetModelPath(input_dict)
    if '://' in base:
      # Object stores have no atomic folder rename: TFX's own push (saved_model.pb last),
      # then the record beside it.
      if str(served or '') != compared_with:
        return self._refuse(model_push, compared_with, served)
      super().Do(input_dict, output_dict, exec_properties)
      version = model_push.get_string_custom_property('pushed_version')
      if version:
        with fileio.open(f'{base.rstrip("/")}/{version}/{EVALUATION_RECORD}', 'w') as f:
          f.write(json.dumps({**record, 'version': int(version)}, indent=2, sort_keys=True))
      return None
    latest = latest_version(Path(base))
    if latest and '://' not in model_path and same_files(Path(model_path), latest):
      target = latest
      logging.info('Model already served as version %s; not pushed again.', target.name)
    elif str(served or '') != compared_with:
      return self._refuse(model_push, compared_with, served)
    else:
      target = push_atomically(model_path, Path(base), record=record)
      logging.info('Model written to serving path %s.', target)
    io_utils.copy_dir(model_path, model_push.uri)  # the archive copy TFX keeps
    self._MarkPushed(model_push, pushed_destination=str(target), pushed_version=target.name)
    return None

  def _refuse(self, model_push: types.Artifact, compared_with: str,
              served: int | None) -> None:
    logging.warning('Not pushed: the Evaluator compared the candidate with served version '
                    '%s, but %s is served now; the next run compares with it.',
                    compared_with or '(none)', served or '(none)')
    self._MarkNotPushed(model_push)


def trained_with(input_dict: Dict[str, List[types.Artifact]]) -> Dict[str, Any] | None:
  """The training config the model artifact says it was trained with (epochs and
  learning rate may be set per run on Kubeflow, unlike the rest of the record)."""
  models = input_dict.get(standard_component_specs.MODEL_KEY) or []
  if len(models) != 1 or not models[0].has_custom_property(TRAINING_PROPERTY):
    return None
  return json.loads(models[0].get_string_custom_property(TRAINING_PROPERTY))


def evaluation_record(blessing: types.Artifact, fixed: str,
                      run_id: str | None) -> Dict[str, Any]:
  """What a served version was judged on: the blessing's numbers plus the pipeline's."""
  def number(name: str) -> float | None:
    return (blessing.get_float_custom_property(name)
            if blessing.has_custom_property(name) else None)
  return {
      **json.loads(fixed),
      'pushed_at': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'run_id': run_id,
      'spans': json.loads(blessing.get_string_custom_property('spans') or '[]'),
      'metrics': {
          'test_accuracy': number('candidate_accuracy'),
          'baseline_accuracy': number('baseline_accuracy'),
          'baseline_version': (int(blessing.get_string_custom_property(BASELINE_VERSION_KEY))
                               if blessing.get_string_custom_property(BASELINE_VERSION_KEY)
                               else None),
          'holdout_accuracy': json.loads(
              blessing.get_string_custom_property('holdout_accuracy') or '{}'),
      },
  }


class AtomicPusherSpec(standard_component_specs.PusherSpec):
  PARAMETERS = {**standard_component_specs.PusherSpec.PARAMETERS,
                RECORD_KEY: ExecutionParameter(type=str, optional=True)}


class AtomicPusher(Pusher):
  """TFX's Pusher component with the executor above (give it the id `Pusher`). `record`:
  what the pipeline knows of every push (name, code fingerprints, training config)."""

  SPEC_CLASS = AtomicPusherSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

  def __init__(self, model: types.BaseChannel, model_blessing: types.BaseChannel,
               push_destination: pusher_pb2.PushDestination,
               record: Dict[str, Any] | None = None):
    spec = AtomicPusherSpec(
        model=model, model_blessing=model_blessing, push_destination=push_destination,
        custom_config=json_utils.dumps({}), record=json.dumps(record or {}, sort_keys=True),
        pushed_model=types.Channel(type=standard_artifacts.PushedModel))
    base_component.BaseComponent.__init__(self, spec=spec)
