"""The GPU image's CUDA wheels: hash-pinned, and exactly the ones TensorFlow asks for."""

from __future__ import annotations

import importlib.metadata
import re
from typing import Dict, List

from pipeline.configs import REPO_ROOT

GPU_LOCK = REPO_ROOT / 'kubeflow' / 'requirements-gpu.lock'


def locked(path) -> Dict[str, List[str]]:
  """{name==version: [hashes]} of a pip requirements file with hashes."""
  result: Dict[str, List[str]] = {}
  current = ''
  for line in path.read_text().splitlines():
    requirement = re.match(r'^([A-Za-z0-9][A-Za-z0-9._-]*==\S+)', line)
    if requirement:
      current = requirement.group(1).lower()
      result[current] = []
    elif line.strip().startswith('--hash=sha256:'):
      result[current].append(line.strip().split(':', 1)[1].rstrip(' \\'))
  return result


def test_gpu_lock_pins_every_wheel_of_tensorflows_cuda_extra_with_hashes():
  requires = importlib.metadata.requires('tensorflow') or []
  cuda = {re.sub(r'\s+', '', r.split(';')[0]).lower() for r in requires
          if 'extra == "and-cuda"' in r.replace("'", '"')}
  assert len(cuda) >= 10  # cuBLAS, cuDNN, NCCL, ...
  pins = locked(GPU_LOCK)
  assert set(pins) == cuda
  assert all(len(h) == 64 for hashes in pins.values() for h in hashes)
  assert all(pins.values())


def test_gpu_lock_adds_nothing_the_main_lock_has():
  main = {name.split('==')[0] for name in locked(REPO_ROOT / 'requirements.lock')}
  assert not {name.split('==')[0] for name in locked(GPU_LOCK)} & main


def test_dockerfile_installs_the_gpu_lock_hash_checked():
  dockerfile = (REPO_ROOT / 'kubeflow' / 'Dockerfile').read_text()
  assert 'pip install --require-hashes --no-deps -r /tmp/requirements-gpu.lock' in dockerfile
  assert 'tensorflow[and-cuda]' not in dockerfile  # no unpinned resolution at build time
