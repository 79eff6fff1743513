"""`python -m pipeline run [--data-dir ...] [--epochs ...]`: the project's own command.

Runs the whole DAG locally with progress per component, then prints a summary read back
from ML Metadata. `python -m pipeline summary` prints the last run's summary again,
`python -m pipeline history` one line per run (oldest first), and
`python -m pipeline lineage VERSION` what produced a served model version.
`python -m pipeline seal` seals the images waiting in `<data-dir>/incoming/` into the next
span (every run does it first, too); `--from FOLDER` seals a folder prepared by hand.
`python -m pipeline wheel [--out DIR]` builds the project's wheel, what `--beam-args`
with a runner whose workers run elsewhere ships to them (docs/kubeflow.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Optional

from pipeline import configs, preflight
from trainer import logs


def seal(config: configs.LocalConfig, source: Optional[str]) -> int:
  from components import spans  # pylint: disable=import-outside-toplevel
  try:
    sealed = (spans.seal_folder(config.data_dir, source) if source
              else spans.seal_incoming(config.data_dir))
  except (OSError, ValueError) as e:
    print(f'Seal FAILED: {e}', file=sys.stderr)
    return 1
  print(f'Sealed {source or "incoming/"} as span {sealed} of {config.data_dir}'
        if sealed is not None else f'Nothing to seal in {config.data_dir}/incoming')
  return 0


def main(argv=None) -> int:
  logs.quiet()  # before anything imports TensorFlow
  parser = argparse.ArgumentParser(prog='python -m pipeline', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest='command', required=True)
  configs.add_arguments(commands.add_parser('run', help='run the whole pipeline locally'))
  configs.add_arguments(commands.add_parser('summary', help="print the last run's summary"))
  seal_command = commands.add_parser('seal', help='seal incoming/ (or --from FOLDER) into '
                                                  'the next span of the data folder')
  configs.add_arguments(seal_command)
  seal_command.add_argument('--from', dest='source', metavar='FOLDER',
                            help='a folder of IDX files or label folders 0-9 to seal')
  configs.add_arguments(commands.add_parser('history', help='one line per run, oldest first'))
  lineage_parser = commands.add_parser('lineage', help='what produced a served version')
  lineage_parser.add_argument('version', type=int, help='a version folder of the model')
  configs.add_arguments(lineage_parser)
  wheel_parser = commands.add_parser('wheel', help="build the project's wheel for Beam "
                                                    'workers elsewhere (default into dist/)')
  wheel_parser.add_argument('--out', default=None, help='folder of the wheel (dist/)')
  args = parser.parse_args(argv)
  if args.command == 'wheel':
    from pipeline import beam_deps  # pylint: disable=import-outside-toplevel
    print(beam_deps.wheel_main(args.out))
    return 0
  try:
    config = configs.load(args)
  except ValueError as e:
    parser.error(str(e))

  if args.command == 'seal':
    return seal(config, args.source)
  if args.command == 'run':
    try:
      preflight.prepare(config)  # in a second, before TensorFlow is imported
    except (preflight.PreflightError, OSError, ValueError) as e:
      print(f'Pipeline FAILED: {e}', file=sys.stderr)
      return 2

  if args.command in ('history', 'lineage'):
    return report(args.command, config, args)

  from pipeline import local_runner, summary  # pylint: disable=g-import-not-at-top
  if args.command == 'run':
    logs.show_progress()
    print(f'Pipeline {config.pipeline_name}: data {config.data_dir}, '
          f'outputs {config.output_dir}, serving {config.locations().serving}', flush=True)
    start = time.time()
    failed = None
    try:
      local_runner.run(config)
    except Exception as e:  # pylint: disable=broad-except
      failed = e
    print(f'\nWall time {time.time() - start:.0f} s', flush=True)
  result = summary.last_run(str(config.metadata_path)) if config.metadata_path.exists() else None
  print(result.format() if result else f'No runs recorded in {config.metadata_path}')
  if args.command == 'run' and failed is not None:
    hint = preflight.explain(failed)
    print(f'\nPipeline FAILED: {type(failed).__name__}: {failed}' +
          (f'\n{hint}' if hint else ''), file=sys.stderr)
    return 1
  return 0


def report(command: str, config: configs.LocalConfig, args: argparse.Namespace) -> int:
  """`history` or `lineage`: read-only reports on ML Metadata and the serving folder."""
  from pipeline import history, lineage  # pylint: disable=g-import-not-at-top
  logs.show_progress()  # TensorFlow is imported now: filter its deprecation warnings
  if command == 'history':
    print(history.history(config.metadata_path))
    return 0
  try:
    print(lineage.lineage(config.model_serving_dir, config.model_name, args.version,
                          config.metadata_path, config.pipeline_name).format())
  except lineage.UnknownVersion as e:
    print(f'lineage: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
