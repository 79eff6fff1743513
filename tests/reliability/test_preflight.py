"""Disk and input errors fail early with a clear message: `python -m pipeline run` stops
in its first second, before TensorFlow is imported, naming the path, what is wrong and
the flag to change. Permissions are real file modes; when the tests run as root, the
child process runs without root's permission override (CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH), so file modes bind it as they bind any user."""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict

import pytest

from pipeline import preflight
from pipeline import configs
from tests.conftest import write_idx_folder

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2
# Runs the command's main() and reports whether TensorFlow got imported on the way.
CHILD = ('import sys; from pipeline import __main__ as m; rc = m.main(["run"]); '
         'print("tensorflow imported:", "tensorflow" in sys.modules); sys.exit(rc)')


def _as_a_plain_user() -> None:
  if os.geteuid() == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
      if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), 'prctl(PR_CAPBSET_DROP)')


def run_command(env: Dict[str, str]) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-c', CHILD], cwd=configs.REPO_ROOT,
                        env={**os.environ, **env}, capture_output=True, text=True,
                        timeout=120, preexec_fn=_as_a_plain_user)


def _chmod(path: Path, mode: int) -> Callable[[], None]:
  old = stat.S_IMODE(path.stat().st_mode)
  path.chmod(mode)
  return lambda: path.chmod(old)


def _missing(data: Path, out: Path):
  return {'MNIST_DATA_DIR': str(data / 'nowhere')}, None


def _a_file(data: Path, out: Path):
  return {'MNIST_DATA_DIR': str(next(data.iterdir()))}, None


def _file_missing(data: Path, out: Path):
  (data / 't10k-labels-idx1-ubyte.gz').unlink()
  return {}, None


def _unreadable_folder(data: Path, out: Path):
  return {}, _chmod(data, 0o000)


def _unreadable_file(data: Path, out: Path):
  return {}, _chmod(data / 'train-images-idx3-ubyte.gz', 0o000)


def _read_only_output(data: Path, out: Path):
  return {}, _chmod(out, 0o555)


def _read_only_serving(data: Path, out: Path):
  serving = out.parent / 'serving'
  serving.mkdir()
  return {'MNIST_SERVING_DIR': str(serving)}, _chmod(serving, 0o555)


def _no_space(data: Path, out: Path):
  return {'MNIST_MIN_FREE_MB': str(10 ** 9)}, None  # more than any disk here has


def _no_schema(data: Path, out: Path):
  return {'MNIST_SCHEMA_PATH': str(out / 'schema.pbtxt')}, None


CASES = [
    ('data folder missing', _missing, 'nowhere does not exist (--data-dir'),
    ('data path is a file', _a_file, 'is not a folder'),
    ('data file missing', _file_missing, 'expected t10k-labels-idx1-ubyte or t10k-labels'),
    ('data folder unreadable', _unreadable_folder, 'cannot list it (Permission denied)'),
    ('data file unreadable', _unreadable_file,
     'train-images-idx3-ubyte.gz: cannot read it (Permission denied)'),
    ('output folder read-only', _read_only_output,
     'out: cannot write there (Permission denied); fix its permissions or choose another '
     'folder (--output-dir, --serving-dir)'),
    ('serving folder read-only', _read_only_serving,
     'serving: cannot write there (Permission denied); fix its permissions or choose '
     'another folder (--serving-dir)'),
    ('no disk space', _no_space, 'MB free on its filesystem, the run needs at least '
     '1000000000 MB (free space, or lower --min-free-mb'),
    ('schema missing', _no_schema, 'schema.pbtxt not found (--schema-path)'),
]


@pytest.mark.parametrize('make, message', [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_run_stops_at_once_and_says_why(tmp_path, make, message):
  data = write_idx_folder(tmp_path / 'data', num_train=20, num_test=5)
  out = tmp_path / 'out'
  out.mkdir()
  env, restore = make(data, out)
  try:
    result = run_command({'MNIST_DATA_DIR': str(data), 'MNIST_OUTPUT_DIR': str(out),
                          'MNIST_EVAL_SIZE': '5', **env})
  finally:
    if restore:
      restore()
  assert result.returncode == 2, (result.stdout, result.stderr)
  assert 'Pipeline FAILED: cannot start the run:' in result.stderr
  assert message in result.stderr, result.stderr
  assert len([l for l in result.stderr.splitlines() if l.startswith('  - ')]) == 1, result.stderr
  assert 'Traceback' not in result.stderr
  assert 'tensorflow imported: False' in result.stdout


def test_a_good_setup_passes_the_same_checks(tmp_path):
  data = write_idx_folder(tmp_path / 'data', num_train=20, num_test=5)
  preflight.check(configs.load(environ={}, data_dir=data, output_dir=tmp_path / 'out',
                               eval_size=5, min_free_mb=1))
  assert not list((tmp_path / 'out' / 'serving' / 'mnist').iterdir())  # probes cleaned up


def test_disk_errors_during_a_run_get_a_plain_explanation():
  def chained(error: BaseException) -> BaseException:
    try:
      try:
        raise error
      except BaseException as cause:
        raise RuntimeError('Beam stage failed') from cause
    except RuntimeError as outer:
      return outer
  full = chained(OSError(errno.ENOSPC, 'No space left on device'))
  assert 'no space left on the device' in preflight.explain(full)
  tf_style = chained(RuntimeError('write failed: No space left on device [Op:WriteFile]'))
  assert 'no space left on the device' in preflight.explain(tf_style)
  denied = chained(PermissionError(errno.EACCES, 'Permission denied', '/out/x'))
  assert 'permission denied on /out/x' in preflight.explain(denied)
  assert preflight.explain(chained(ValueError('bad value'))) is None
