"""scripts/setup.sh picks a uv that runs, not merely one on PATH."""

import os
import shutil
import subprocess
from pathlib import Path

from pipeline import configs


def _executable(path: Path, body: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text('#!/usr/bin/env bash\n' + body)
  path.chmod(0o755)


def test_a_broken_uv_shim_on_path_is_passed_over(tmp_path):
  """pyenv puts a `uv` shim on PATH as soon as any pyenv version has uv; it fails when
  the active version has none. That shim once broke `make test` on a fresh clone."""
  project = tmp_path / 'project'
  (project / 'scripts').mkdir(parents=True)
  shutil.copy(configs.REPO_ROOT / 'scripts' / 'setup.sh', project / 'scripts')
  shutil.copy(configs.REPO_ROOT / 'requirements.lock', project)  # the GPU lock reads it
  _executable(tmp_path / 'shims' / 'uv', 'echo "pyenv: uv: command not found" >&2; exit 127\n')
  calls = tmp_path / 'calls'
  _executable(project / '.cache' / 'tools' / 'bin' / 'uv', f'echo "$@" >> {calls}\n')

  env = {**os.environ, 'PATH': f'{tmp_path / "shims"}:{os.environ["PATH"]}'}
  result = subprocess.run(['bash', 'scripts/setup.sh', '--lock'], cwd=project, env=env,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  version, main_lock, gpu_lock = calls.read_text().splitlines()
  assert version == '--version'
  assert main_lock == ('pip compile pyproject.toml --extra test --python-version 3.10 '
                       '--python-platform x86_64-unknown-linux-gnu --generate-hashes '
                       '-o requirements.lock')
  assert gpu_lock.startswith('pip compile kubeflow/requirements-gpu.in -c requirements.lock')
  assert gpu_lock.endswith('-o kubeflow/requirements-gpu.lock')
