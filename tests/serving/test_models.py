"""Version discovery, policy, labels, failed loads and swaps of ModelManager, with a fake
loader so each case runs in milliseconds (the real loading is covered by test_hot_swap)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import List

import grpc
import pytest

from serving.config import ModelConfigWatcher, ModelPolicy, VersionPolicy, parse_model_config
from serving.errors import ServingError
from trainer.serving_layout import discover
from serving.models import ModelManager
from tests.serving.conftest import CONFIG_FILE


class FakeServable:
  def __init__(self, name: str, version: int, path: Path):
    self.name, self.version, self.path = name, version, path
    self.closed = False

  def close(self) -> None:
    self.closed = True


class Loader:
  """Loads anything except folders holding a BROKEN marker file."""

  def __init__(self):
    self.calls: List[int] = []

  def __call__(self, name: str, version: int, path: Path) -> FakeServable:
    self.calls.append(version)
    if (path / 'BROKEN').exists():
      raise ValueError(f'cannot read {path}')
    return FakeServable(name, version, path)


def make_version(base: Path, version: str, complete: bool = True, broken: bool = False) -> Path:
  path = base / version
  (path / 'variables').mkdir(parents=True)
  (path / 'variables' / 'variables.index').write_bytes(b'x')
  if complete:
    (path / 'saved_model.pb').write_bytes(b'pb')
  if broken:
    (path / 'BROKEN').write_bytes(b'')
  return path


def manager_for(base: Path, policy: ModelPolicy = ModelPolicy()) -> ModelManager:
  return ModelManager('mnist', base, lambda: policy, Loader())


def states(manager: ModelManager) -> dict:
  return {s.version: s.state for s in manager.status('mnist')}


def test_discover_only_complete_integer_folders(tmp_path):
  make_version(tmp_path, '1')
  make_version(tmp_path, '2', complete=False)
  make_version(tmp_path, '.tmp-3')
  make_version(tmp_path, 'v4')
  make_version(tmp_path, '0005')
  (tmp_path / '6').write_text('a file, not a folder')
  assert sorted(discover(tmp_path)) == [1, 5]
  assert discover(tmp_path / 'missing') == {}


def test_latest_policy_serves_the_newest_only(tmp_path):
  make_version(tmp_path, '1')
  make_version(tmp_path, '2')
  manager = manager_for(tmp_path)
  manager.poll_once(startup=True)
  assert states(manager) == {2: 'AVAILABLE'}
  assert manager.resolve('mnist').version == 2
  assert manager._load.calls == [2]


def test_new_version_loads_once_its_files_stop_changing(tmp_path):
  make_version(tmp_path, '1')
  manager = manager_for(tmp_path)
  manager.poll_once(startup=True)
  old = manager.resolve('mnist')
  make_version(tmp_path, '2')
  manager.poll_once()            # first sighting: maybe still being copied
  assert manager.resolve('mnist').version == 1
  manager.poll_once()            # unchanged since: load, switch, retire 1
  assert manager.resolve('mnist').version == 2
  assert states(manager) == {2: 'AVAILABLE', 1: 'END'}
  assert old.version == 1        # a request holding version 1 still has it


def test_failed_load_keeps_current_version_and_is_not_retried_until_changed(tmp_path):
  make_version(tmp_path, '1')
  manager = manager_for(tmp_path)
  manager.poll_once(startup=True)
  broken = make_version(tmp_path, '2', broken=True)
  for _ in range(4):
    manager.poll_once()
  assert manager._load.calls == [1, 2]
  assert manager.resolve('mnist').version == 1
  status = {s.version: s for s in manager.status('mnist')}
  assert status[1].state == 'AVAILABLE'
  assert status[2].state == 'END' and status[2].error_code == grpc.StatusCode.UNKNOWN
  assert 'cannot read' in status[2].error_message
  (broken / 'BROKEN').unlink()   # repaired in place: the files changed, so try again
  manager.poll_once()
  manager.poll_once()
  assert manager.resolve('mnist').version == 2


def test_newest_broken_at_startup_falls_back_to_the_next(tmp_path):
  make_version(tmp_path, '1')
  make_version(tmp_path, '2', broken=True)
  manager = manager_for(tmp_path)
  manager.poll_once(startup=True)
  assert states(manager) == {2: 'END', 1: 'AVAILABLE'}
  assert manager.resolve('mnist').version == 1


def test_deleted_version_is_replaced_by_the_next_newest(tmp_path):
  make_version(tmp_path, '1')
  newest = make_version(tmp_path, '2')
  manager = manager_for(tmp_path)
  manager.poll_once(startup=True)
  retired = manager.resolve('mnist')
  shutil.rmtree(newest)
  manager.poll_once()
  manager.poll_once()
  assert manager.resolve('mnist').version == 1
  assert states(manager) == {2: 'END', 1: 'AVAILABLE'}
  assert retired.closed and not manager.resolve('mnist').closed   # its batch threads stop


def test_specific_policy_and_labels(tmp_path):
  for v in ('1', '2', '3'):
    make_version(tmp_path, v)
  policy = ModelPolicy(VersionPolicy('specific', versions=frozenset({1, 2})),
                       {'stable': 1, 'canary': 2, 'next': 3})
  manager = manager_for(tmp_path, policy)
  manager.poll_once(startup=True)
  assert states(manager) == {2: 'AVAILABLE', 1: 'AVAILABLE'}
  assert manager.resolve('mnist').version == 2
  assert manager.resolve('mnist', 1).version == 1
  assert manager.resolve('mnist', label='stable').version == 1
  assert manager.resolve('mnist', label='canary').version == 2
  with pytest.raises(ServingError) as unknown:
    manager.resolve('mnist', label='nope')
  assert unknown.value.code == grpc.StatusCode.INVALID_ARGUMENT and unknown.value.http_status == 400
  with pytest.raises(ServingError) as unloaded:
    manager.resolve('mnist', label='next')
  assert unloaded.value.http_status == 404
  with pytest.raises(ServingError) as both:
    manager.resolve('mnist', 1, 'stable')
  assert both.value.http_status == 400


def test_all_policy_and_unknown_model(tmp_path):
  for v in ('1', '2'):
    make_version(tmp_path, v)
  manager = manager_for(tmp_path, ModelPolicy(VersionPolicy('all')))
  manager.poll_once(startup=True)
  assert states(manager) == {2: 'AVAILABLE', 1: 'AVAILABLE'}
  for call in (lambda: manager.resolve('other'), lambda: manager.status('other'),
               lambda: manager.resolve('mnist', 9), lambda: manager.status('mnist', 9)):
    with pytest.raises(ServingError) as error:
      call()
    assert error.value.http_status == 404


def test_no_versions_yet(tmp_path):
  manager = manager_for(tmp_path / 'not-yet')
  manager.poll_once(startup=True)
  with pytest.raises(ServingError) as error:
    manager.resolve('mnist')
  assert 'Latest(mnist)' in error.value.message
  with pytest.raises(ServingError) as error:
    manager.status('mnist')
  assert error.value.http_status == 404


def test_shipped_config_file_parses():
  policy = parse_model_config(CONFIG_FILE.read_text(), 'mnist')
  assert policy.versions == VersionPolicy('specific', versions=frozenset({1, 2}))
  assert policy.labels == {'stable': 1, 'canary': 2}


def test_config_defaults_and_errors():
  latest = parse_model_config('model_config_list { config { name: "mnist" base_path: "/m" '
                              'model_version_policy { latest { num_versions: 2 } } } }', 'mnist')
  assert latest.versions.select([1, 2, 3]) == {2, 3}
  plain = parse_model_config('model_config_list { config { name: "mnist" } }', 'mnist')
  assert plain.versions.select([1, 2, 3]) == {3} and plain.labels == {}
  with pytest.raises(ValueError, match='no config entry named'):
    parse_model_config('model_config_list { config { name: "other" } }', 'mnist')


def test_config_watcher_moves_labels_and_survives_a_bad_edit(tmp_path):
  path = tmp_path / 'models.config'
  text = CONFIG_FILE.read_text()
  path.write_text(text)
  watcher = ModelConfigWatcher(path, 'mnist')
  assert watcher.current().labels == {'stable': 1, 'canary': 2}
  path.write_text(text.replace('key: "stable" value: 1', 'key: "stable" value: 2'))
  os.utime(path, ns=(1, 10 ** 18))      # a distinct mtime even on coarse clocks
  assert watcher.current().labels == {'stable': 2, 'canary': 2}
  path.write_text('this { is not a config')
  os.utime(path, ns=(1, 2 * 10 ** 18))
  assert watcher.current().labels == {'stable': 2, 'canary': 2}
