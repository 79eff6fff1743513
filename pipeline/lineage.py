"""`python -m pipeline lineage VERSION`: what produced a served model version.

Two sources, each optional: the evaluation record the Pusher writes beside the model
(`<version>/assets.extra/evaluation.json`; it travels with the model, also when the
serving folder is copied elsewhere) and ML Metadata (the run whose Pusher recorded this
version, read as `python -m pipeline summary` reads a run). A version pushed by an older
pipeline or by hand has no record; one copied from another machine is not in this ML
Metadata. Where both know a value and disagree, both are printed.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from pipeline import history, summary
from trainer import serving_layout as layout

RECORD_FILE = Path('assets.extra') / 'evaluation.json'
UNKNOWN = 'unknown'


class UnknownVersion(LookupError):
  """The serving folder holds no such version."""


@dataclasses.dataclass
class Lineage:
  model_name: str
  version: int
  path: Path
  record: Optional[Dict[str, Any]]       # evaluation.json; None when absent or unreadable
  record_problem: Optional[str]          # why a present record could not be read
  run: Optional[summary.RunSummary]      # ML Metadata's run that pushed this version
  pipeline_name: str
  metadata_path: str

  def _record(self, key: str) -> Any:
    return (self.record or {}).get(key)

  def _record_text(self, key: str) -> Optional[str]:
    value = self._record(key)
    return None if value is None else str(value)

  def _from_run(self, read: Callable[[summary.RunSummary], Any]) -> Optional[str]:
    return read(self.run) if self.run else None

  def format(self) -> str:
    metrics = self._record('metrics') if isinstance(self._record('metrics'), dict) else {}
    run = self.run
    fields = [
        ('run', both(self._record_text('run_id'), self._from_run(lambda r: r.run_id))),
        ('pipeline', both(self._record_text('pipeline_name'),
                          self._from_run(lambda r: self.pipeline_name))),
        ('started', f'{history.started_text(run.started)} UTC, took '
                    f'{history.duration_text(run.ended - run.started)}'
         if run and run.started is not None else UNKNOWN),
        ('pushed at', self._record_text('pushed_at') or UNKNOWN),
        ('spans', both(_maybe(self._record('spans'),
                              lambda s: summary.format_spans([int(x) for x in s])),
                       self._from_run(lambda r: summary.format_spans(r.spans, r.newest_span)))),
        ('training', both(compact(self._record('training')),
                          self._from_run(lambda r: compact(r.training)))),
        ('code', both(code_text(self._record('code_fingerprint')),
                      self._from_run(lambda r: code_text(r.code_fingerprint)))),
        ('test accuracy', both(accuracy_text(metrics.get('test_accuracy')),
                               self._from_run(lambda r: accuracy_text(r.test_accuracy)))),
        ('baseline', both(
            baseline_text(metrics.get('baseline_version'), metrics.get('baseline_accuracy'))
            if 'baseline_version' in metrics else None,
            self._from_run(lambda r: baseline_text(r.baseline_version, r.baseline_accuracy)
                           if r.baseline_version is not None else None))),
        ('holdout', holdout_text(metrics.get('holdout_accuracy')) or UNKNOWN),
        ('blessed', self._from_run(blessed_text) or UNKNOWN),
        ('sources', self.sources()),
    ]
    width = max(len(name) for name, _ in fields) + 1
    return '\n'.join([f'Model {self.model_name} version {self.version}: {self.path}'] +
                     [f'  {name + ":":<{width}} {text}' for name, text in fields])

  def sources(self) -> str:
    record = (f'{RECORD_FILE}' if self.record is not None else
              f'no {RECORD_FILE} ({self.record_problem})' if self.record_problem else
              f'no {RECORD_FILE}')
    mlmd = (f'ML Metadata {self.metadata_path}' if self.run else
            f'not in ML Metadata {self.metadata_path}')
    return f'{record}; {mlmd}'


def both(record: Optional[str], mlmd: Optional[str]) -> str:
  """One value from either source, or the record's with ML Metadata's when they differ."""
  if record is None or mlmd is None or record == mlmd:
    return next((v for v in (record, mlmd) if v is not None), UNKNOWN)
  return f'{record} (ML Metadata: {mlmd})'


def _maybe(value: Any, render: Callable[[Any], str]) -> Optional[str]:
  try:
    return None if value is None else render(value)
  except (TypeError, ValueError, AttributeError):
    return None


def compact(value: Any) -> Optional[str]:
  return _maybe(value, lambda v: json.dumps(v, sort_keys=True) if v else None)


def accuracy_text(value: Any) -> Optional[str]:
  return _maybe(value, lambda v: f'{float(v):.4f}')


def code_text(fingerprints: Any) -> Optional[str]:
  return _maybe(fingerprints, lambda f: ', '.join(
      f'{name} {f.get(name) or UNKNOWN}' for name in ('transform', 'trainer')) if f else None)


def baseline_text(version: Any, accuracy: Any) -> str:
  """`0.9890 (version 17...)`; `none (no blessed model before)` for '' or null."""
  if version in (None, ''):
    return 'none (no blessed model before)'
  return f'{accuracy_text(accuracy) or UNKNOWN} (version {version})'


def holdout_text(holdout: Any) -> Optional[str]:
  """Accuracy on each new span's held-out examples; `none` when trained on base only."""
  return _maybe(holdout, lambda h: ', '.join(
      f'span {span}: {accuracy_text(value) or UNKNOWN}'
      for span, value in sorted(h.items(), key=lambda kv: int(kv[0]))) or 'none')


def blessed_text(run: summary.RunSummary) -> Optional[str]:
  if run.blessed is None:
    return None
  if run.blessed:
    return 'yes'
  return 'no' + (': ' + '; '.join(run.not_blessed_because) if run.not_blessed_because else '')


def read_record(version_dir: Path) -> tuple[Optional[Dict[str, Any]], Optional[str]]:
  """The evaluation record, or None and why it could not be used (None: no file)."""
  path = version_dir / RECORD_FILE
  try:
    record = json.loads(path.read_text())
  except FileNotFoundError:
    return None, None
  except (OSError, ValueError) as e:
    return None, f'unreadable: {e}'
  if not isinstance(record, dict):
    return None, f'unreadable: expected a JSON object, found {type(record).__name__}'
  return record, None


def mlmd_run(metadata_path: Path, version: int) -> Optional[summary.RunSummary]:
  """The run whose Pusher first recorded `version`, or None."""
  if not metadata_path.exists():
    return None
  store = summary.open_store(str(metadata_path))
  pushes = summary.first_pushes(store)
  run_id = pushes.get(str(version))
  if run_id is None:
    return None
  context = store.get_context_by_type_and_name(summary.PIPELINE_RUN_CONTEXT, run_id)
  return summary.read_run(store, context, pushes)


def lineage(model_base: Path, model_name: str, version: int, metadata_path: Path,
            pipeline_name: str) -> Lineage:
  """Reads both sources for `version` of the model served from `model_base`."""
  versions = layout.discover(model_base)
  if version not in versions:
    held = ', '.join(map(str, sorted(versions))) or 'none'
    raise UnknownVersion(f'no version {version} in the serving folder {model_base}; '
                         f'versions there: {held}')
  record, problem = read_record(versions[version])
  return Lineage(model_name, version, versions[version], record, problem,
                 mlmd_run(metadata_path, version), pipeline_name, str(metadata_path))
