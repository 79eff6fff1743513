"""docs/kubeflow.md's path from `make image` to a nightly schedule, run as written.

The shell block after the marker comment is read from the doc and run command by
command: `make image` as `make -n` (no Docker engine here: the printed `docker build`
must be the one kubeflow/Dockerfile expects), `docker push` checked against the images
built, `export` into the environment, and every `.venv/bin/python -m kubeflow ...` through
the CLI's own main() against the loopback KFP API. So the doc cannot drift from the CLI.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from typing import List

from kubeflow import runner
from kubeflow.__main__ import main
from pipeline import component_ids as ids
from pipeline import configs

DOC = configs.REPO_ROOT / 'docs' / 'kubeflow.md'
MARKER = '<!-- the nightly path: tests/kubeflow/test_docs_path.py runs this block -->'
PYTHON = ['.venv/bin/python', '-m', 'kubeflow']


def doc_commands() -> List[List[str]]:
  """The block's commands as argv lists: continuation lines joined, comments dropped."""
  text = DOC.read_text()
  assert MARKER in text, f'{DOC}: the marker {MARKER!r} is missing'
  block = text.split(MARKER, 1)[1].lstrip()
  assert block.startswith('```bash\n'), f'{DOC}: expected a ```bash block after the marker'
  body = block[len('```bash\n'):].split('\n```', 1)[0]
  return [argv for argv in (shlex.split(line, comments=True)
                            for line in body.replace('\\\n', ' ').splitlines()) if argv]


def dockerfile_variants() -> List[str]:
  """The VARIANT values kubeflow/Dockerfile builds: its `FROM ... AS base-<variant>`."""
  text = (configs.REPO_ROOT / 'kubeflow' / 'Dockerfile').read_text()
  assert 'FROM base-${VARIANT}' in text
  return re.findall(r'^FROM \S+ AS base-(\w+)$', text, re.MULTILINE)


def test_the_docs_path_runs_from_image_to_nightly_schedule(fake_kfp, monkeypatch, tmp_path,
                                                             capsys):
  monkeypatch.setenv('MNIST_KFP_SPEC_PATH', str(tmp_path / 'mnist.yaml'))
  fake_kfp.progress['run-1'] = ['SUCCEEDED']  # the run `wait` follows
  built, pushed, ran = [], [], []
  for argv in doc_commands():
    line = shlex.join(argv)
    if argv[:2] == ['make', 'image']:
      # As a user's shell runs it: not as a sub-make of `make test` (whose MAKEFLAGS and
      # MAKELEVEL make the inner make print "Entering directory" lines).
      env = {k: v for k, v in os.environ.items()
             if k not in ('MAKEFLAGS', 'MAKELEVEL', 'MFLAGS', 'MAKEOVERRIDES')}
      printed = subprocess.run(['make', '-n', *argv[1:]], cwd=configs.REPO_ROOT, check=True,
                               env=env, capture_output=True,
                               text=True).stdout.replace('\\\n', ' ')
      build = shlex.split(printed)
      assert build[:4] == ['docker', 'build', '-f', 'kubeflow/Dockerfile'], printed
      image = build[build.index('-t') + 1]
      variant = build[build.index('--build-arg') + 1].split('=', 1)
      assert variant[0] == 'VARIANT' and variant[1] in dockerfile_variants(), printed
      assert variant[1] == ('gpu' if 'GPU=1' in argv else 'cpu'), line
      assert build[-1] == '.', printed
      built.append(image)
    elif argv[:2] == ['docker', 'push']:
      assert argv[2] in built, f'{line}: pushes an image the block did not build'
      pushed.append(argv[2])
    elif argv[0] == 'export':
      name, value = argv[1].split('=', 1)
      if name == 'KFP_HOST':  # the port-forward's URL stands for the loopback API here
        assert value.startswith('http://localhost:'), line
        value = fake_kfp.host
      monkeypatch.setenv(name, value)
    elif argv[:3] == PYTHON:
      code = main(argv[3:])
      out, err = capsys.readouterr()
      assert code == 0, f'{line}\n{out}{err}'
      ran.append(argv[3])
    else:
      raise AssertionError(f'{DOC}: a command the test cannot run: {line}')

  assert sorted(pushed) == sorted(built) and len(built) == 2
  assert ran == ['compile', 'upload', 'submit', 'wait', 'schedule', 'list-schedules', 'runs']
  (version,) = fake_kfp.versions  # submit and schedule ran the uploaded version
  for request in fake_kfp.calls('POST', '/runs') + fake_kfp.calls('POST', '/recurringruns'):
    assert request.body['pipeline_version_reference']['pipeline_version_id'] == (
        version.pipeline_version_id)
    assert request.body['runtime_config']['pipeline_root'] == 'gs://bucket/pipelines'
  (nightly,) = fake_kfp.recurring_runs
  assert (nightly['display_name'], nightly['trigger']) == (
      'mnist nightly', {'cron_schedule': {'cron': '0 0 3 * * *'}})
  executors = version.pipeline_spec['platform_spec']['platforms']['kubernetes'][
      'deploymentSpec']['executors']
  assert executors[runner.executor_label(ids.TRAINER)]['activeDeadlineSeconds'] == '43200'
