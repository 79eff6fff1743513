"""Atomic push: a version appears in the serving directory complete or not at all.

The pipeline's Pusher executor runs on a model folder while a watcher thread lists the
serving directory as fast as it can, the way a model server polls it. Copies are slowed
down (each file written in two halves) so that the intermediate states last long enough
to be seen; TFX's stock Pusher executor, under the same watcher, is the control that
shows the watcher does see half-written versions when they exist.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from pathlib import Path
from typing import List, Set, Tuple

import pytest
from tfx.components.pusher import executor as stock_pusher
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from components import atomic_pusher
from trainer.serving_layout import EVALUATION_RECORD, PUSHER_FILES
from pipeline import preflight

Listing = Set[Tuple[str, int]]


def fake_model(folder: Path, files: int = 30) -> Listing:
  """A SavedModel-shaped folder (the Pusher does not parse it); returns its listing."""
  serving = folder / 'Format-Serving'
  (serving / 'variables').mkdir(parents=True)
  (serving / 'saved_model.pb').write_bytes(os.urandom(50_000))
  for i in range(files):
    (serving / 'variables' / f'variables.data-{i:05d}-of-{files:05d}').write_bytes(
        os.urandom(20_000))
  return listing(serving)


def listing(folder: Path) -> Listing:
  """The model's files and sizes (not the record the Pusher adds beside them)."""
  result = set()
  for root, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(root, name)
      if os.path.relpath(path, folder) in PUSHER_FILES:
        continue
      try:
        result.add((os.path.relpath(path, folder), os.stat(path).st_size))
      except FileNotFoundError:
        pass
  return result


def run_pusher(executor_class, model_dir: Path, base: Path, out: Path,
               compared_with: str | None = None) -> standard_artifacts.PushedModel:
  """A blessed model pushed to `base`; the blessing names the served version the Evaluator
  compared it with (default: the one served now, as after an evaluation just before)."""
  model = standard_artifacts.Model()
  model.uri = str(model_dir)
  blessing = standard_artifacts.ModelBlessing()
  blessing.set_int_custom_property('blessed', 1)
  if compared_with is None:
    served = atomic_pusher.latest_version(base) if base.exists() else None
    compared_with = served.name if served else ''
  blessing.set_string_custom_property('baseline_version', compared_with)
  blessing.set_float_custom_property('candidate_accuracy', 0.98)
  blessing.set_string_custom_property('spans', '[1, 2]')
  pushed = standard_artifacts.PushedModel()
  pushed.uri = str(out)
  destination = pusher_pb2.PushDestination(
      filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=str(base)))
  executor_class().Do({'model': [model], 'model_blessing': [blessing]},
                      {'pushed_model': [pushed]},
                      {'push_destination': proto_utils.proto_to_json(destination),
                       atomic_pusher.RECORD_KEY: '{"pipeline_name": "mnist"}'})
  return pushed


class Watcher(threading.Thread):
  """Lists every integer-named folder under `base` in a loop; keeps incomplete sightings."""

  def __init__(self, base: Path, expected: Listing):
    super().__init__(daemon=True)
    self.base, self.expected = base, expected
    self.stop = threading.Event()
    self.looks = 0
    self.incomplete: List[Tuple[str, int]] = []

  def run(self) -> None:
    while not self.stop.is_set():
      for entry in (os.scandir(self.base) if self.base.exists() else []):
        if entry.name.isdigit():
          self.looks += 1
          seen = listing(Path(entry.path))
          if seen != self.expected:
            self.incomplete.append((entry.name, len(seen)))


@pytest.fixture
def slow_copies(monkeypatch):
  """Every file copy writes half, pauses, then writes the rest."""
  def copy(src: str, dst: str, overwrite: bool = False) -> None:
    data = Path(src).read_bytes()
    with open(dst, 'wb') as f:
      f.write(data[:len(data) // 2])
      f.flush()
      time.sleep(0.003)
      f.write(data[len(data) // 2:])
  monkeypatch.setattr(fileio, 'copy', copy)


def watch_push(executor_class, tmp_path: Path, name: str) -> Watcher:
  expected = fake_model(tmp_path / f'{name}-model')
  base = tmp_path / f'{name}-serving' / 'mnist'
  watcher = Watcher(base, expected)
  watcher.start()
  try:
    run_pusher(executor_class, tmp_path / f'{name}-model', base, tmp_path / f'{name}-out')
    time.sleep(0.05)
  finally:
    watcher.stop.set()
    watcher.join()
  assert [listing(p) for p in base.iterdir() if p.name.isdigit()] == [expected]
  return watcher


def test_a_polling_reader_never_sees_a_partial_version(tmp_path, slow_copies, capsys):
  atomic = watch_push(atomic_pusher.Executor, tmp_path, 'atomic')
  assert atomic.looks > 0 and atomic.incomplete == []
  assert not [p for p in (tmp_path / 'atomic-serving' / 'mnist').iterdir()
              if p.name.startswith('.')]  # staging folder gone
  # The control: TFX's own executor exposes the copy in progress to the same watcher.
  stock = watch_push(stock_pusher.Executor, tmp_path, 'stock')
  with capsys.disabled():
    print(f'\n  push: atomic {len(atomic.incomplete)} incomplete of {atomic.looks} sightings; '
          f'TFX stock {len(stock.incomplete)} of {stock.looks}')
  assert len(stock.incomplete) > 10, stock.incomplete[:5]


def test_a_push_that_fails_half_way_leaves_nothing(tmp_path, monkeypatch):
  fake_model(tmp_path / 'model')
  copies = []
  real_copy = fileio.copy
  def copy_until_disk_full(src: str, dst: str, overwrite: bool = False) -> None:
    copies.append(dst)
    if len(copies) == 10:
      raise OSError(errno.ENOSPC, 'No space left on device', dst)
    real_copy(src, dst, overwrite)
  monkeypatch.setattr(fileio, 'copy', copy_until_disk_full)

  base = tmp_path / 'serving' / 'mnist'
  with pytest.raises(OSError) as failure:
    run_pusher(atomic_pusher.Executor, tmp_path / 'model', base, tmp_path / 'out')
  assert list(base.iterdir()) == []  # no version, no staging folder
  assert 'no space left' in preflight.explain(failure.value)

  copies.clear()  # the control: TFX's executor leaves a broken version behind
  stock_base = tmp_path / 'stock' / 'mnist'
  with pytest.raises(OSError):
    run_pusher(stock_pusher.Executor, tmp_path / 'model', stock_base, tmp_path / 'out2')
  [left] = list(stock_base.iterdir())
  assert left.name.isdigit() and not (left / 'saved_model.pb').exists()


def test_versions_only_go_up(tmp_path):
  fake_model(tmp_path / 'model')
  source = str(tmp_path / 'model' / 'Format-Serving')
  base = tmp_path / 'serving'
  now = 1_700_000_000.5
  first = atomic_pusher.push_atomically(source, base, now)
  second = atomic_pusher.push_atomically(source, base, now)  # the same second
  assert (first.name, second.name) == ('1700000000', '1700000001')
  (base / '9999999999').mkdir()  # pushed by hand, or by a clock that ran fast
  assert atomic_pusher.push_atomically(source, base, now).name == '10000000000'


def test_staging_left_by_a_killed_push_is_cleaned_up_later(tmp_path):
  fake_model(tmp_path / 'model')
  base = tmp_path / 'serving'
  stale, fresh = base / '.push-killed', base / '.push-in-progress'
  stale.mkdir(parents=True)
  fresh.mkdir()
  now = time.time()
  os.utime(stale, (now - 2 * atomic_pusher.STALE_STAGING_SECONDS,) * 2)
  atomic_pusher.push_atomically(str(tmp_path / 'model' / 'Format-Serving'), base, now)
  assert not stale.exists() and fresh.exists()


def test_the_model_already_served_is_not_pushed_again(tmp_path):
  fake_model(tmp_path / 'model')
  base = tmp_path / 'serving' / 'mnist'
  run_pusher(atomic_pusher.Executor, tmp_path / 'model', base, tmp_path / 'out1')
  [first] = list(base.iterdir())
  run_pusher(atomic_pusher.Executor, tmp_path / 'model', base, tmp_path / 'out2')
  assert list(base.iterdir()) == [first]

  variables = tmp_path / 'model' / 'Format-Serving' / 'variables'
  next(variables.iterdir()).write_bytes(os.urandom(20_000))  # a different model
  run_pusher(atomic_pusher.Executor, tmp_path / 'model', base, tmp_path / 'out3')
  assert len(list(base.iterdir())) == 2 and atomic_pusher.latest_version(base) != first


def test_each_push_carries_its_evaluation_record(tmp_path):
  fake_model(tmp_path / 'model')
  base = tmp_path / 'serving' / 'mnist'
  run_pusher(atomic_pusher.Executor, tmp_path / 'model', base, tmp_path / 'out')
  [version] = list(base.iterdir())
  record = json.loads((version / EVALUATION_RECORD).read_text())
  assert record['version'] == int(version.name) and record['pipeline_name'] == 'mnist'
  assert record['spans'] == [1, 2] and record['metrics']['test_accuracy'] == 0.98
  assert record['metrics']['baseline_version'] is None  # nothing was served before


def test_a_candidate_compared_with_another_served_version_is_not_pushed(tmp_path):
  """Another version was pushed after the Evaluator compared this candidate with the one
  served then: its verdict says nothing about the new one."""
  fake_model(tmp_path / 'model')
  base = tmp_path / 'serving' / 'mnist'
  run_pusher(atomic_pusher.Executor, tmp_path / 'model', base, tmp_path / 'out1')
  [served] = list(base.iterdir())
  fake_model(tmp_path / 'other')
  pushed = run_pusher(atomic_pusher.Executor, tmp_path / 'other', base, tmp_path / 'out2',
                      compared_with='')  # evaluated when nothing was served yet
  assert list(base.iterdir()) == [served]
  assert pushed.get_int_custom_property('pushed') == 0
