"""Transform's cache key follows the preprocessing code and the feature contract; the
Trainer's follows the training code and the hyperparameter definitions."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline import fingerprint
from pipeline.pipeline import PREPROCESSING_MODULE, RUN_MODULE


def _copy_trainer(tmp_path: Path) -> Path:
  shutil.copytree(fingerprint.REPO_ROOT / 'trainer', tmp_path / 'trainer',
                  ignore=shutil.ignore_patterns('__pycache__'))
  return tmp_path


def _keys(root: Path):
  return (fingerprint.code_fingerprint(PREPROCESSING_MODULE, root),
          fingerprint.code_fingerprint(RUN_MODULE, root))


def _append(path: Path, text: str = '\n# edited\n') -> None:
  path.write_text(path.read_text() + text)


def test_closures_hold_what_each_component_runs():
  assert fingerprint.closure(PREPROCESSING_MODULE) == {'trainer.preprocessing',
                                                       'trainer.features'}
  training = fingerprint.closure(RUN_MODULE)
  assert {'trainer.run', 'trainer.model', 'trainer.schedules', 'trainer.data',
          'trainer.export', 'trainer.hparams', 'trainer.features'} <= training
  assert 'trainer.preprocessing' not in training


@pytest.mark.parametrize('edited', ['schedules.py', 'hparams.py', 'model.py'])
def test_training_code_and_hyperparameter_definitions_change_the_trainer_key_only(
    tmp_path, edited):
  root = _copy_trainer(tmp_path)
  transform, trainer = _keys(root)
  _append(root / 'trainer' / edited)
  new_transform, new_trainer = _keys(root)
  assert new_transform == transform and new_trainer != trainer


def test_preprocessing_and_the_feature_contract_change_the_transform_key(tmp_path):
  root = _copy_trainer(tmp_path)
  transform, _ = _keys(root)
  _append(root / 'trainer' / 'preprocessing.py')
  edited = _keys(root)[0]
  assert edited != transform
  _append(root / 'trainer' / 'features.py')
  assert _keys(root)[0] != edited
