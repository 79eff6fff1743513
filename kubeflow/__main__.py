"""`python -m kubeflow COMMAND`: the pipeline on Kubeflow Pipelines.

  compile          build the DAG with pipeline.create_pipeline and write the KFP v2 spec
  upload           register the compiled spec as a new version of the pipeline (named
                   after the git commit and the time; the pipeline is created if missing)
  submit           one run now
  schedule         a recurring run: --cron "0 3 * * *" (max concurrency 1, no catch-up);
                   scheduling again under the same name replaces it
  list-schedules   the recurring runs of the pipeline's experiment
  unschedule       delete a recurring run by name or id
  runs             the experiment's recent runs: state and duration
  wait [RUN_ID]    follow a run (default: the newest) until it ends; exit status 0 only
                   if it succeeded

`submit` and `schedule` run a pipeline version: `--pipeline-version ID|NAME|latest` picks
one already uploaded; without it they upload the compiled spec as a new version first.

Every command takes the pipeline's own flags (--epochs, --eval-size, ...; see
pipeline/configs.py) and the Kubeflow ones (--image, --pipeline-root, --data-uri,
--host, ...; see kubeflow/config.py), each also settable by environment variable.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
from typing import Optional, Sequence

from kubeflow import config as kfp_configs
from pipeline import configs
from trainer import logs


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m kubeflow', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest='command', required=True)

  def command(name: str, help_text: str) -> argparse.ArgumentParser:
    sub = commands.add_parser(name, help=help_text)
    configs.add_arguments(sub, configs.PipelineParams)  # portable ones: no local folders
    kfp_configs.add_arguments(sub)
    return sub

  compile_cmd = command('compile', 'write the KFP v2 pipeline spec (YAML)')
  compile_cmd.add_argument('--output', help='where to write it (default: --spec-path)')

  submit = command('submit', 'one run of the compiled spec now')
  submit.add_argument('--run-name', help='default: <pipeline> <UTC time>')

  schedule = command('schedule', 'a recurring run of the compiled spec')
  schedule.add_argument('--cron', required=True,
                        help='standard 5-field cron, e.g. "0 3 * * *" (03:00 daily, in the '
                             "scheduler's time zone, UTC by default), or 6 with seconds")
  schedule.add_argument('--name', help='the recurring run\'s name (default: <pipeline> '
                                       'schedule <cron>); one of that name is replaced')
  schedule.add_argument('--description', default='')
  schedule.add_argument('--max-concurrency', type=int, default=1,
                        help='runs of this schedule allowed at once (default 1)')
  schedule.add_argument('--catchup', action='store_true',
                        help='backfill intervals missed while paused (default: off)')

  for sub in (submit, schedule):
    sub.add_argument('--no-cache', action='store_true',
                     help='run every task, ignoring cached results of earlier runs')
    sub.add_argument('--param', action='append', default=[], metavar='NAME=VALUE',
                     help='a pipeline parameter of the compiled spec for this run (epochs, '
                          'learning_rate, accuracy_threshold, data_uri; default: the values '
                          'compiled in); repeatable')
  _add_version_arguments(command, submit, schedule)

  command('list-schedules', "list the recurring runs of the pipeline's experiment")
  unschedule = command('unschedule', 'delete a recurring run')
  unschedule.add_argument('name_or_id', help='its name or recurring run id')
  runs = command('runs', "the experiment's recent runs, newest first")
  runs.add_argument('--limit', type=int, default=10, help='how many (default 10)')
  wait = command('wait', 'follow a run until it ends; exit 0 only if it succeeded')
  wait.add_argument('run_id', nargs='?', default='',
                    help="the run id `submit` printed (default: the experiment's newest run)")
  wait.add_argument('--wait-timeout', type=float, default=6 * 3600,
                    help='seconds to wait before giving up, exit 1 (default 6 h)')
  wait.add_argument('--poll', type=float, default=15.0,
                    help='seconds between status checks (default 15)')
  return parser


def _add_version_arguments(command, submit: argparse.ArgumentParser,
                           schedule: argparse.ArgumentParser) -> None:
  """`upload`, and the pipeline version `submit` and `schedule` run."""
  upload = command('upload', 'register the compiled spec as a new pipeline version')
  upload.add_argument('--version-name', help='default: <git commit>[-dirty]-<UTC time>')
  upload.add_argument('--description', default='')
  for sub in (submit, schedule):
    sub.add_argument('--pipeline-version', metavar='ID|NAME|latest',
                     help='run this uploaded version of the pipeline (its id, its name, or '
                          '`latest` for the newest); default: upload the compiled spec as a '
                          'new version first')


def _pipeline_version(args: argparse.Namespace, pipeline_name: str,
                      kfp: kfp_configs.KubeflowConfig, spec: str,
                      caching: Optional[bool]):
  """The version a submit/schedule/upload runs or makes: the one named by
  --pipeline-version, else a new upload of the compiled spec (printed)."""
  from kubeflow import client  # pylint: disable=import-outside-toplevel
  wanted = getattr(args, 'pipeline_version', None)
  if wanted:
    if caching is not None:
      raise client.KubeflowError(
          '--no-cache with --pipeline-version: caching is part of an uploaded version\'s '
          'spec; drop --pipeline-version to upload the spec with caching off')
    return client.resolve_version(kfp, pipeline_name, wanted)
  given = getattr(args, 'version_name', None)
  revision = '' if given else client.git_revision(configs.REPO_ROOT)
  name = given or client.version_name(revision, datetime.datetime.now(datetime.timezone.utc))
  if caching is False and not given:
    name += '-no-cache'
  description = args.description if args.command == 'upload' else ''
  version, created = client.upload(kfp, spec, pipeline_name, name, description, caching,
                                   exact_name=bool(given))
  print(f'Uploaded version {version.format()}'
        + ('; created the pipeline' if created else ''))
  if not given and not revision:
    print('  (no git commit found: not a git checkout, or git is not installed; the version '
          'is named by its upload time only)')
  return version


def _seconds(seconds: int) -> str:
  return f'{seconds} s' if seconds else 'none'


def main(argv: Optional[Sequence[str]] = None) -> int:
  logs.quiet()  # before anything imports TensorFlow
  parser = _parser()
  args = parser.parse_args(argv)
  try:
    config = configs.load(args, config_class=configs.PipelineParams)
    kfp = kfp_configs.load(args)
  except ValueError as e:
    parser.error(str(e))

  from kubeflow import client  # pylint: disable=import-outside-toplevel
  from kubeflow import params as kfp_params  # pylint: disable=import-outside-toplevel
  logging.getLogger('urllib3').setLevel(logging.ERROR)  # its retry warnings; errors say it
  spec = kfp.spec_file(config.pipeline_name)
  experiment = kfp.experiment_name(config.pipeline_name)
  caching = False if getattr(args, 'no_cache', False) else None
  try:
    params = (kfp_params.parse_params(client.check_spec(spec), args.param)
              if getattr(args, 'param', None) else None)
    if args.command == 'compile':
      from kubeflow import runner  # pylint: disable=import-outside-toplevel
      path = runner.compile_pipeline(config, kfp, args.output or spec)
      gpus = (f'{kfp.gpu_count} x {kfp.gpu_resource}' if kfp.gpu_count else 'no GPU')
      print(f'Compiled {path} for KFP backend {kfp.kfp_backend}\n  image {kfp.image}; '
            f'Trainer {kfp.trainer_image} with {gpus}\n  pipeline root {kfp.pipeline_root}'
            f'\n  data {kfp.data_uri}\n  serving '
            f'{runner.model_serving_uri(config, kfp)}/<version>/')
      if kfp.task_retries or kfp.task_timeout or kfp.trainer_timeout:
        print(f'  retries {kfp.task_retries} per task; timeout {_seconds(kfp.task_timeout)} '
              f'per task, {_seconds(kfp.timeout_seconds(trainer=True))} for the Trainer')
    elif args.command == 'upload':
      _pipeline_version(args, config.pipeline_name, kfp, spec, None)
    elif args.command == 'submit':
      now = datetime.datetime.now(datetime.timezone.utc)
      name = args.run_name or f'{config.pipeline_name} {now:%Y-%m-%d %H:%M:%S} UTC'
      version = _pipeline_version(args, config.pipeline_name, kfp, spec, caching)
      run = client.submit(kfp, spec, experiment, name, enable_caching=caching, version=version,
                          params=params)
      print(f'Submitted run {run.run_id} ({name!r}) in experiment {experiment!r}')
    elif args.command == 'schedule':
      name = args.name or f'{config.pipeline_name} schedule {args.cron}'
      client.kfp_cron(args.cron)  # a malformed cron fails before anything is uploaded
      version = _pipeline_version(args, config.pipeline_name, kfp, spec, caching)
      recurring, replaced = client.schedule(
          kfp, spec, experiment, name, args.cron, max_concurrency=args.max_concurrency,
          catchup=args.catchup, enable_caching=caching, description=args.description,
          version=version, params=params)
      print(f'Scheduled {recurring.recurring_run_id} ({name!r}): cron '
            f'"{client.kfp_cron(args.cron)}", max concurrency {args.max_concurrency}, '
            f'catch-up {"on" if args.catchup else "off"}, experiment {experiment!r}'
            + (f'; replaced {", ".join(replaced)}' if replaced else ''))
    elif args.command == 'list-schedules':
      schedules = client.list_schedules(kfp, experiment)
      print('\n'.join(s.format() for s in schedules) if schedules
            else f'No recurring runs in experiment {experiment!r}')
    elif args.command == 'unschedule':
      removed = client.unschedule(kfp, experiment, args.name_or_id)
      print(f'Deleted recurring run {", ".join(removed)}')
    elif args.command == 'runs':
      recent = client.list_runs(kfp, experiment, args.limit)
      print('\n'.join(r.format() for r in recent) if recent
            else f'No runs in experiment {experiment!r}')
    elif args.command == 'wait':
      run_id = args.run_id or client.latest_run_id(kfp, experiment)
      run = client.wait(kfp, run_id, args.wait_timeout, args.poll,
                        report=lambda r: print(r.format(), flush=True))
      return 0 if run.state == 'SUCCEEDED' else 1
  except (client.KubeflowError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
