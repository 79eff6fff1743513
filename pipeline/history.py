"""`python -m pipeline history`: one line per pipeline run, oldest first, from ML Metadata.

Each line comes from the same per-run reading as `python -m pipeline summary`
(`summary.read_run`), so both always agree on accuracy, blessing and push.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional, Sequence

from pipeline import summary

HEADER = ('started (UTC)', 'duration', 'run', 'spans', 'accuracy', 'pushed', 'result')
RIGHT_ALIGNED = frozenset({'duration', 'accuracy'})


def duration_text(seconds: Optional[float]) -> str:
  """`45s`, `12m03s`, `2h05m`; `-` when the run recorded no execution."""
  if seconds is None:
    return '-'
  whole = int(round(seconds))
  if whole < 60:
    return f'{whole}s'
  if whole < 3600:
    return f'{whole // 60}m{whole % 60:02d}s'
  return f'{whole // 3600}h{whole % 3600 // 60:02d}m'


def started_text(started: Optional[float]) -> str:
  return time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(started)) if started else '-'


def pushed_text(run: summary.RunSummary) -> str:
  """The version this run put in the serving folder, or why it added none."""
  version = run.pushed_version or run.pushed_to
  if not version:
    return 'not pushed'
  return f'already served as {version}' if run.already_served else version


def result_text(run: summary.RunSummary) -> str:
  """Blessed or why not, then the component that failed or never finished."""
  parts = []
  if run.blessed:
    parts.append('blessed')
  elif run.blessed is False:
    parts.append('not blessed' + (': ' + '; '.join(run.not_blessed_because)
                                  if run.not_blessed_because else ''))
  stopped = run.stopped_at()
  if stopped:
    state = run.state(stopped)
    parts.append(f'FAILED at {stopped}' if state == 'FAILED'
                 else f'unfinished at {stopped} ({state}, or killed)')
  return '; '.join(parts) or '-'


def row(run: summary.RunSummary) -> List[str]:
  duration = run.ended - run.started if run.started is not None else None
  accuracy = f'{run.test_accuracy:.4f}' if run.test_accuracy is not None else '-'
  return [started_text(run.started), duration_text(duration), run.run_id,
          summary.format_spans(run.spans, run.newest_span) or '?',
          accuracy, pushed_text(run), result_text(run)]


def format_history(runs: Sequence[summary.RunSummary]) -> str:
  """A table, one run per line, oldest first; the last column is not padded."""
  rows = [list(HEADER)] + [row(run) for run in runs]
  widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER) - 1)]
  lines = []
  for cells in rows:
    padded = [cell.rjust(width) if name in RIGHT_ALIGNED else cell.ljust(width)
              for name, cell, width in zip(HEADER, cells, widths)]
    lines.append('  '.join(padded + [cells[-1]]).rstrip())
  return '\n'.join(lines)


def history(metadata_path: Path) -> str:
  runs = summary.all_runs(str(metadata_path)) if metadata_path.exists() else []
  return format_history(runs) if runs else f'No runs recorded in {metadata_path}'
