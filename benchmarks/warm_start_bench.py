"""Warm-start benchmark: the scheduled run after a little new data, cold vs warm, side by side.

In one run, on the same data and machine:
  1. a cold run of the default preset on the base data (the training file's first 55,000
     images) pushes the served model: its wall time is the cold run's;
  2. one new span of 5,000 images (the training file's last 5,000, never seen) is sealed;
  3. a warm scheduled run (`--warm-start true`) fine-tunes the served model on base + span,
     and the gate compares it with the served model.
Prints both wall times, their ratio (target <= 0.25) and both test accuracies (target: the
warm model no worse than the served one, i.e. blessed and pushed). With --cold-too, a third
run trains the same base + span from scratch, for the accuracy a cold run would reach.

  python -m benchmarks.warm_start_bench [--preset default] [--cold-too] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import List, Tuple

from trainer import logs

if __name__ == '__main__':  # the program itself, before TensorFlow is imported below
  logs.quiet()

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks.pipeline_bench import run_timed
from components import spans
from pipeline import configs, summary
from trainer import idx
# pylint: enable=g-import-not-at-top,wrong-import-position

BASE_IMAGES = 55000  # the rest of the 60,000 training images arrive as the new span


def make_data(work: Path) -> Tuple[Path, Path]:
  """A writable data folder on the shared base files, and the new span's source folder."""
  data = work / 'data'
  data.mkdir(parents=True)
  for path in configs.SHARED_DATA_DIR.glob('*-ubyte.gz'):
    (data / path.name).symlink_to(path)
  train = idx.load_source(configs.SHARED_DATA_DIR, 'train')
  source = work / 'new-span'
  source.mkdir()
  idx.write_idx(source / 'train-images-idx3-ubyte.gz', train.images[BASE_IMAGES:])
  idx.write_idx(source / 'train-labels-idx1-ubyte.gz', train.labels[BASE_IMAGES:])
  return data, source


def run(work: Path, name: str, data: Path, output: Path, flags: List[str]
        ) -> Tuple[float, summary.RunSummary]:
  seconds, _ = run_timed([sys.executable, '-m', 'pipeline', 'run', '--data-dir', str(data),
                          '--output-dir', str(output), '--limit-train', str(BASE_IMAGES),
                          *flags], work / f'{name}.log')
  config = configs.load(environ={}, output_dir=output)
  return seconds, summary.last_run(str(config.metadata_path))


def main() -> None:
  logs.show_progress()  # TensorFlow's deprecation warnings stay out of the report
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--work-dir', type=Path,
                      default=configs.REPO_ROOT / 'outputs' / 'bench-warm')
  parser.add_argument('--preset', default='default')
  parser.add_argument('--cold-too', action='store_true')
  args = parser.parse_args()
  work = args.work_dir.absolute()
  shutil.rmtree(work, ignore_errors=True)
  work.mkdir(parents=True)
  data, source = make_data(work)
  preset = ['--preset', args.preset]

  cold_s, served = run(work, 'cold', data, work / 'out', preset)
  span = spans.seal_folder(data, source)
  if args.cold_too:  # the same base + span from scratch, in its own output folder
    cold_span_s, cold_span = run(work, 'cold-with-span', data, work / 'out-cold', preset)
  warm_s, warm = run(work, 'warm', data, work / 'out', [*preset, '--warm-start', 'true'])
  lines = [
      f'{"run":<34} {"wall (s)":>9} {"test accuracy":>14} {"blessed":>8} {"pushed":>7}',
      f'{"cold, base (served)":<34} {cold_s:>9.1f} {served.test_accuracy:>14.4f} '
      f'{str(served.blessed):>8} {str(bool(served.pushed_to)):>7}',
      f'{f"warm, base + span {span}":<34} {warm_s:>9.1f} {warm.test_accuracy:>14.4f} '
      f'{str(warm.blessed):>8} {str(bool(warm.pushed_to)):>7}',
  ]
  if args.cold_too:
    lines.append(f'{f"cold, base + span {span}":<34} {cold_span_s:>9.1f} '
                 f'{cold_span.test_accuracy:>14.4f} {str(cold_span.blessed):>8} '
                 f'{str(bool(cold_span.pushed_to)):>7}')
  lines += [f'warm / cold wall time: {warm_s / cold_s:.3f} (target <= 0.25)',
            f'warm - served test accuracy: {warm.test_accuracy - served.test_accuracy:+.4f} '
            f'(target >= 0; baseline version {warm.baseline_version})']
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
