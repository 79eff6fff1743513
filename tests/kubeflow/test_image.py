"""The image: the GPU variant's CUDA wheels hash-pinned, exactly the ones TensorFlow asks
for; and everything the compiled spec runs or reads is in it."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from typing import Dict, List, Set

from pipeline import fingerprint
from pipeline.configs import REPO_ROOT
from tests.kubeflow import image

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


# ---------------------------------------------------------------------------
# What the compiled spec names is in the image (tests/kubeflow/image.py reads what
# kubeflow/Dockerfile's COPY lines and its .dockerignore put there).

DOTTED = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$')


def named_code(spec: Dict) -> Dict[str, str]:
  """{dotted name: where the spec names it}: the command's module, every
  --executor_class_path, and parameters naming project code (run_fn, preprocessing_fn)."""
  names: Dict[str, str] = {}
  for label, executor in spec['deploymentSpec']['executors'].items():
    container = executor['container']
    command = container['command']
    names[command[command.index('-m') + 1]] = f'{label} command'
    args = container['args']
    names[args[args.index('--executor_class_path') + 1]] = f'{label} --executor_class_path'
  for task, body in spec['root']['dag']['tasks'].items():
    for name, value in body.get('inputs', {}).get('parameters', {}).items():
      constant = value.get('runtimeValue', {}).get('constant')
      if (isinstance(constant, str) and DOTTED.match(constant) and
          constant.split('.')[0] in fingerprint.PROJECT_PACKAGES):
        names[constant] = f'{task} parameter {name}'
  return names


def named_files(spec: Dict) -> Dict[str, str]:
  """Relative paths of this checkout's files that parameters name (read from WORKDIR)."""
  found: Dict[str, str] = {}
  for task, body in spec['root']['dag']['tasks'].items():
    for name, value in body.get('inputs', {}).get('parameters', {}).items():
      constant = value.get('runtimeValue', {}).get('constant')
      if (isinstance(constant, str) and '/' in constant and '\n' not in constant and
          not constant.startswith('/') and (REPO_ROOT / constant).is_file()):
        found[constant] = f'{task} parameter {name}'
  return found


def module_of(dotted: str) -> str:
  """The module part of `package.module[.attribute]`."""
  parent = dotted.rpartition('.')[0]
  if fingerprint.module_path(dotted):   # a project module
    return dotted
  if fingerprint.module_path(parent):   # an attribute of one
    return parent
  return parent if parent and importlib.util.find_spec(parent) else dotted


def missing_from_image(spec: Dict, in_image: Set[str]) -> List[str]:
  """What a task would fail to import or read in the image, with who names it."""
  problems = []
  locked = (REPO_ROOT / 'requirements.lock').read_text().lower()
  distributions = importlib.metadata.packages_distributions()
  for dotted, where in sorted(named_code(spec).items()):
    module = module_of(dotted)
    top = module.split('.')[0]
    if top in fingerprint.PROJECT_PACKAGES:
      for needed in sorted(fingerprint.closure(module)):
        path = fingerprint.module_path(needed)
        if str(path.relative_to(REPO_ROOT)) not in in_image:
          problems.append(f'{where}: {dotted} needs {needed} ({path.relative_to(REPO_ROOT)})')
    elif not any(f'\n{d.lower()}==' in locked for d in distributions.get(top, [])):
      problems.append(f'{where}: {dotted}: {top} is not installed from requirements.lock')
  for path, where in sorted(named_files(spec).items()):
    if path not in in_image:
      problems.append(f'{where}: {path} is not in the image')
  return problems


def test_everything_the_spec_names_is_in_the_image(compiled):
  names = named_code(compiled.spec)
  assert 'kubeflow.entrypoint' in names and 'trainer.run.run_fn' in names
  assert 'trainer.preprocessing.preprocessing_fn' in names
  assert sum(1 for where in names.values() if 'executor_class_path' in where) == len(
      compiled.spec['deploymentSpec']['executors'])
  assert 'pipeline/schema/schema.pbtxt' in named_files(compiled.spec)
  assert missing_from_image(compiled.spec, image.files()) == []
  from tfx.utils import import_utils  # pylint: disable=import-outside-toplevel
  for dotted, where in names.items():  # and each names something that exists
    if dotted != module_of(dotted):
      assert import_utils.import_class_by_path(dotted), where


def test_the_image_check_sees_a_missing_copy_line_or_an_ignored_file(compiled):
  dockerfile = image.DOCKERFILE.read_text()
  without = dockerfile.replace('COPY components ./components\n', '')
  assert without != dockerfile
  problems = missing_from_image(compiled.spec, image.files(without))
  assert any('components.atomic_pusher.Executor' in p for p in problems)
  patterns = image.dockerignore_patterns() + ['pipeline/schema']
  assert any('schema.pbtxt' in p for p in
             missing_from_image(compiled.spec, image.files(patterns=patterns)))
  assert image.ignored('trainer/__pycache__/run.cpython-310.pyc', image.dockerignore_patterns())
  assert image.ignored('outputs/x', image.dockerignore_patterns())
