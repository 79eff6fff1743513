"""Beam flags, and the project's code for Beam workers that run elsewhere.

DirectRunner workers run in this environment, which has TFX and the project installed.
Workers of other runners (Dataflow; Flink or Spark through Beam's portable runner) have
only their container and what the job ships to them, and TFX ships only its own package
(an sdist of its install) when no dependency flag is given. The project's code runs on
those workers too: the ExampleGen's Beam transforms are functions of
`components.mnist_example_gen.executor`, pickled by reference, and Transform's pipeline
names `trainer.preprocessing`. Two ways to ship it (docs/kubeflow.md, "Beam on a
distributed runner"):

* a container that has the project, the pipeline image (kubeflow/Dockerfile has Beam's
  worker boot as entrypoint): `worker_image_flags`, the Kubeflow default;
* a wheel of the project as `--extra_packages`: Beam's worker boot installs it, then its
  requirements (TFX, TensorFlow, ...) from PyPI; the local runner's default.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from pipeline.configs import NO_EXTRA_PACKAGES, REPO_ROOT, PipelineParams
from pipeline.fingerprint import PROJECT_PACKAGES

# Beam options through which dependencies reach remote workers (TFX's dependency_utils
# checks the same five before packaging itself).
DEPENDENCY_OPTIONS = ('extra_packages', 'setup_file', 'requirements_file',
                      'sdk_container_image', 'worker_harness_container_image')
# Runners whose workers run in this process or its children, in this environment.
LOCAL_RUNNERS = ('DirectRunner', 'SwitchingDirectRunner', 'BundleBasedDirectRunner')
DATAFLOW_RUNNERS = ('DataflowRunner', 'TestDataflowRunner')
WHEEL_CACHE = Path.home() / '.cache' / 'mnist-tfx' / 'wheels'
# What the wheel is built from (pyproject.toml's packages, their data, the readme).
WHEEL_SOURCES = ('pyproject.toml', 'README.md', *PROJECT_PACKAGES)


def _options(args: Sequence[str]) -> dict:
  from apache_beam.options import pipeline_options  # pylint: disable=import-outside-toplevel
  return pipeline_options.PipelineOptions(list(args)).get_all_options()


def runner_name(args: Sequence[str]) -> str:
  """The runner the flags name ('DirectRunner' when none), without a module path."""
  return (_options(args)['runner'] or 'DirectRunner').rsplit('.', 1)[-1]


def is_remote(args: Sequence[str]) -> bool:
  """Whether the flags run workers outside this environment (Dataflow, Portable, ...)."""
  return runner_name(args) not in LOCAL_RUNNERS


def ships_dependencies(args: Sequence[str]) -> bool:
  """Whether a dependency flag is set, as TFX decides it (an empty `--extra_packages=`
  counts: it tells TFX not to package itself, for DirectRunner workers)."""
  options = _options(args)
  return any(options.get(name) for name in DEPENDENCY_OPTIONS)


def code_key(root: Path = REPO_ROOT) -> str:
  """Hash of every file the wheel is built from: a new key for any edit."""
  digest = hashlib.sha256()
  for name in WHEEL_SOURCES:
    path = root / name
    files = sorted(p for p in path.rglob('*') if p.is_file()) if path.is_dir() else (
        [path] if path.is_file() else [])
    for file in files:
      if '__pycache__' not in file.parts and file.suffix != '.pyc':
        digest.update(str(file.relative_to(root)).encode() + b'\0' + file.read_bytes())
  return digest.hexdigest()[:16]


def build_wheel(out_dir: Path, root: Path = REPO_ROOT) -> Path:
  """Builds the project's wheel into `out_dir` from a copy of its sources (a build in
  the tree would leave build/ and *.egg-info there), with this environment's setuptools:
  no download."""
  out_dir.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(prefix='mnist-tfx-wheel-') as scratch:
    source = Path(scratch) / 'src'
    for name in WHEEL_SOURCES:
      if (root / name).is_dir():
        shutil.copytree(root / name, source / name,
                        ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
      else:
        source.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, source / name)
    built = Path(scratch) / 'dist'
    result = subprocess.run(
        [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
         '--no-index', '--quiet', '--wheel-dir', str(built), str(source)],
        capture_output=True, text=True, check=False)
    if result.returncode:
      raise RuntimeError(f'building the project wheel failed:\n{result.stderr[-2000:]}')
    (wheel,) = built.glob('*.whl')
    target = out_dir / wheel.name
    shutil.move(str(wheel), target)
  return target


def project_wheel(cache_dir: Path = WHEEL_CACHE, root: Path = REPO_ROOT) -> Path:
  """The wheel of the code as it is now: built once per code key into `cache_dir`."""
  folder = cache_dir / code_key(root)
  cached = sorted(folder.glob('*.whl')) if folder.is_dir() else []
  return cached[0] if cached else build_wheel(folder, root)


def worker_image_flags(args: Sequence[str], image: str) -> List[str]:
  """Flags that make remote workers run `image`. Dataflow reads `--sdk_container_image`
  (so does TFX, which then does not package itself); the portable runners' (Flink, Spark)
  DOCKER environment, their default, reads `--environment_config` instead, set here unless
  the flags name an image or another environment (e.g. EXTERNAL worker-pool sidecars)."""
  flags = [f'--sdk_container_image={image}']
  options = _options(args)
  if runner_name(args) not in DATAFLOW_RUNNERS:
    docker = (options['environment_type'] or 'DOCKER').upper() == 'DOCKER'
    named = options['environment_config'] or any(
        option.startswith('docker_container_image=')
        for option in options['environment_options'] or [])
    if docker and not named:
      flags.append(f'--environment_config={image}')
  return flags


def with_project_code(args: Sequence[str],
                      wheel: Optional[Callable[[], Path]] = None) -> List[str]:
  """`args`, plus the project's wheel as `--extra_packages` when they name a remote
  runner and no dependency flag (the user's own flag wins: an image with the project,
  or packages of their own). The wheel's requirements bring TFX, so TFX's own packaging,
  which the flag turns off, is not needed."""
  args = list(args)
  if is_remote(args) and not ships_dependencies(args):
    args.append(f'--extra_packages={(wheel or project_wheel)()}')
  return args


def local_beam_args(params: PipelineParams, user_args: Sequence[str] = (),
                    wheel: Optional[Callable[[], Path]] = None) -> List[str]:
  """The local runner's Beam flags: the DirectRunner settings of `params` under the
  user's flags, or, for a remote runner, the user's flags and the project's code."""
  args = list(user_args)
  if is_remote(args):
    return with_project_code(args, wheel)
  given = {arg.split('=', 1)[0] for arg in args}
  defaults = [arg for arg in params.beam_pipeline_args()
              if arg.split('=', 1)[0] not in given and arg != NO_EXTRA_PACKAGES]
  extra = [] if ships_dependencies(args) else [NO_EXTRA_PACKAGES]
  return defaults + args + extra


def wheel_main(out_dir: Optional[str] = None) -> Path:
  """`python -m pipeline wheel`: the wheel into `out_dir` (default dist/)."""
  return build_wheel(Path(out_dir or os.path.join(REPO_ROOT, 'dist')))
