"""Pipeline benchmark: accuracy, wall time, and where the time goes, side by side.

In one run, on the same data and machine:
  1. this pipeline, full size, from an empty output folder (`python -m pipeline run`);
  2. the same model, config and epochs as a bare `model.fit` on in-memory arrays;
  3. TFX's bundled MNIST example (unless --skip-baseline) on the same 70,000 images.
It prints per-component times read from each run's ML Metadata, the Trainer/bare-fit ratio
(target <= 1.15) and the non-training stages' ratio to TFX's example (target <= 0.5).

  python -m benchmarks.pipeline_bench [--preset quick] [--skip-baseline] [--skip-bare-fit]
                                      [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

from trainer import logs

if __name__ == '__main__':  # the program itself, before TensorFlow is imported below
  logs.quiet()

from pipeline import configs, summary  # pylint: disable=g-import-not-at-top

STAGES = ('ExampleGen', 'StatisticsGen', 'SchemaGen', 'ExampleValidator', 'Transform',
          'Trainer', 'Evaluator', 'Pusher')
NON_TRAINING = tuple(s for s in STAGES if s != 'Trainer')


def stage_of(component_id: str) -> str:
  for stage in STAGES:
    if stage in component_id:
      return stage
  return 'other'  # e.g. the resolver


def run_timed(cmd: List[str], log_file: Path) -> Tuple[float, str]:
  print('$', ' '.join(cmd), flush=True)
  start = time.perf_counter()
  with open(log_file, 'w') as log:
    result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=configs.REPO_ROOT)
  seconds = time.perf_counter() - start
  output = log_file.read_text()
  if result.returncode:
    sys.exit(f'{cmd} failed ({result.returncode}); see {log_file}:\n{output[-3000:]}')
  return seconds, output


def stage_times(metadata_path: Path) -> Tuple[Dict[str, float], summary.RunSummary]:
  run = summary.last_run(str(metadata_path))
  times: Dict[str, float] = {}
  for component in run.components:
    stage = stage_of(component.component_id)
    times[stage] = times.get(stage, 0.0) + component.seconds
  return times, run


def compare_with_baseline(ours: Dict[str, float], ours_wall: float, work: Path, label: str,
                          flags: List[str]) -> List[str]:
  """Runs TFX's example (data already written) and tabulates it next to ours."""
  folder = work / 'tfx_example'
  shutil.rmtree(folder / 'pipeline_root', ignore_errors=True)  # a fresh run, no cache
  shutil.rmtree(folder / 'serving', ignore_errors=True)
  (folder / 'metadata.db').unlink(missing_ok=True)
  base_wall, _ = run_timed([sys.executable, '-m', 'benchmarks.tfx_mnist_example',
                            '--work-dir', str(folder), *flags],
                           work / f'tfx_example{"_".join(flags)}.log')
  base, _ = stage_times(folder / 'metadata.db')
  base['start-up'] = base_wall - sum(base.values())
  rows = NON_TRAINING + ('start-up',)
  lines = [f'\nTFX example with {label}:',
           f'{"stage":<18} {"this (s)":>9} {"TFX example (s)":>16} {"ratio":>7}']
  for stage in rows + ('Trainer',):
    a, b = ours.get(stage, 0.0), base.get(stage, 0.0)
    lines.append(f'{stage:<18} {a:>9.1f} {b:>16.1f} {a / b if b else float("nan"):>7.2f}')
  ours_rest = sum(ours.get(s, 0.0) for s in rows)
  base_rest = sum(base.get(s, 0.0) for s in rows)
  lines.append(f'{"non-training":<18} {ours_rest:>9.1f} {base_rest:>16.1f} '
               f'{ours_rest / base_rest:>7.2f} (target <= 0.50)')
  lines.append(f'{"whole run":<18} {ours_wall:>9.1f} {base_wall:>16.1f}')
  return lines


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--work-dir', type=Path, default=configs.REPO_ROOT / 'outputs' / 'bench')
  parser.add_argument('--preset', default='default')
  parser.add_argument('--skip-baseline', action='store_true')
  parser.add_argument('--skip-bare-fit', action='store_true')
  args = parser.parse_args()
  work = args.work_dir.absolute()
  shutil.rmtree(work, ignore_errors=True)
  work.mkdir(parents=True)
  python = sys.executable

  ours_wall, _ = run_timed([python, '-m', 'pipeline', 'run', '--preset', args.preset,
                            '--output-dir', str(work / 'ours')], work / 'ours.log')
  ours, ours_run = stage_times(configs.load(environ={}, output_dir=work / 'ours').metadata_path)
  lines = [f'preset {args.preset}: test accuracy {ours_run.test_accuracy:.4f}, '
           f'blessed {ours_run.blessed}, whole run {ours_wall:.0f} s ({ours_wall / 60:.1f} min)']
  if not args.skip_bare_fit:
    _, bare_output = run_timed([python, '-m', 'benchmarks.bare_fit', '--preset', args.preset],
                               work / 'bare_fit.log')
    bare = float(re.search(r'bare_fit_seconds ([\d.]+)', bare_output).group(1))
    lines.append(f'Trainer component {ours["Trainer"]:.1f} s vs bare model.fit {bare:.1f} s: '
                 f'ratio {ours["Trainer"] / bare:.3f} (target <= 1.15)')
  ours['start-up'] = ours_wall - sum(ours.values())
  if not args.skip_baseline:
    run_timed([python, '-m', 'benchmarks.tfx_mnist_example', '--prepare-only', '--work-dir',
               str(work / 'tfx_example')], work / 'tfx_example_prepare.log')  # not timed
    for label, flags in (("its own Beam settings", []),
                         ("our Beam settings", ['--our-beam-settings'])):
      lines += compare_with_baseline(ours, ours_wall, work, label, flags)
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
