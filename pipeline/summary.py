"""What the last run did, read back from ML Metadata: the record TFX itself keeps."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, List, Optional

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
import tensorflow as tf
import tensorflow_model_analysis as tfma

from pipeline import component_ids as ids

PIPELINE_RUN_CONTEXT = 'pipeline_run'
NODE_CONTEXT = 'node'
STATES = {
    metadata_store_pb2.Execution.COMPLETE: 'done',
    metadata_store_pb2.Execution.CACHED: 'cached',
    metadata_store_pb2.Execution.FAILED: 'FAILED',
    metadata_store_pb2.Execution.RUNNING: 'running',
    metadata_store_pb2.Execution.NEW: 'new',
    metadata_store_pb2.Execution.CANCELED: 'canceled',
}
ACCURACY_METRIC = 'sparse_categorical_accuracy'


@dataclasses.dataclass
class ComponentRun:
  component_id: str
  state: str
  seconds: float


@dataclasses.dataclass
class RunSummary:
  run_id: str
  components: List[ComponentRun]
  started: Optional[float] = None      # Unix seconds: the first execution's creation
  ended: Optional[float] = None        # Unix seconds: the last execution's last update
  spans: Optional[List[int]] = None    # spans trained on beside the base; [] = base only
  newest_span: Optional[int] = None    # ExampleGen's `span`, when it recorded no list
  test_accuracy: Optional[float] = None
  blessed: Optional[bool] = None
  baseline_version: Optional[str] = None   # the served version compared with; '' = none
  baseline_accuracy: Optional[float] = None
  pushed_to: Optional[str] = None
  pushed_version: Optional[str] = None
  first_pushed_by: Optional[str] = None    # the run that pushed this version first
  training: Optional[Dict[str, Any]] = None              # the Trainer's TrainingConfig
  code_fingerprint: Dict[str, str] = dataclasses.field(default_factory=dict)  # per component
  anomalies: List[str] = dataclasses.field(default_factory=list)   # ExampleValidator's
  not_blessed_because: List[str] = dataclasses.field(default_factory=list)

  def state(self, component_id: str) -> Optional[str]:
    return next((c.state for c in self.components if c.component_id == component_id), None)

  @property
  def already_served(self) -> bool:
    """Pushed a model an earlier run had pushed already (the Pusher recorded its version)."""
    return self.first_pushed_by not in (None, self.run_id)

  def stopped_at(self) -> Optional[str]:
    """The component that failed, or that never finished (still running, or killed)."""
    for wanted in ('FAILED', 'running', 'new'):
      found = next((c.component_id for c in self.components if c.state == wanted), None)
      if found:
        return found
    return None

  def format(self) -> str:
    lines = [f'Run {self.run_id}', f'  {"component":<28} {"status":<8} {"seconds":>8}']
    for c in self.components:
      lines.append(f'  {c.component_id:<28} {c.state:<8} {c.seconds:>8.1f}')
    total = sum(c.seconds for c in self.components)
    lines.append(f'  {"total":<28} {"":<8} {total:>8.1f}')
    if self.anomalies:
      verdict = {'FAILED': 'the run stopped before training',
                 'done': 'warn-only: the run went on', 'cached': 'warn-only: the run went on'}
      lines.append(f'  data anomalies: {len(self.anomalies)} '
                   f'({verdict.get(self.state(ids.ANOMALIES_GATE) or "", "see AnomaliesGate")})')
      lines += [f'    - {a}' for a in self.anomalies]
    if self.test_accuracy is not None:
      lines.append(f'  test accuracy: {self.test_accuracy:.4f}')
    if self.baseline_version:
      accuracy = (f'{self.baseline_accuracy:.4f}' if self.baseline_accuracy is not None
                  else 'unknown')
      lines.append(f'  baseline: served version {self.baseline_version}, test accuracy '
                   f'{accuracy}')
    elif self.baseline_version == '':
      lines.append('  baseline: none served yet (the absolute bound alone gates)')
    if self.blessed is not None:
      lines.append(f'  blessed: {"yes" if self.blessed else "no"}')
      lines += [f'    - {reason}' for reason in self.not_blessed_because]
    served = (f' (already served: pushed by run {self.first_pushed_by})'
              if self.already_served else '')
    lines.append(f'  pushed: {self.pushed_to or "no"}{served}')
    return '\n'.join(lines)


def format_spans(spans: Optional[List[int]], newest_span: Optional[int] = None
                 ) -> Optional[str]:
  """`base`, `base+1,2`, `base..3` (only the newest span is known), None when unknown."""
  if spans is not None:
    return 'base' + (f'+{",".join(map(str, spans))}' if spans else '')
  if newest_span is not None:
    return f'base..{newest_span}' if newest_span else 'base'
  return None


def open_store(metadata_path: str) -> metadata_store.MetadataStore:
  """ML Metadata's SQLite file, read-only: reading a record never changes it."""
  config = metadata_store_pb2.ConnectionConfig()
  config.sqlite.filename_uri = metadata_path
  config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
  return metadata_store.MetadataStore(config)


def _outputs(store, execution_id: int) -> List[metadata_store_pb2.Artifact]:
  events = store.get_events_by_execution_ids([execution_id])
  ids = [e.artifact_id for e in events
         if e.type in (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)]
  return store.get_artifacts_by_id(ids) if ids else []


def read_test_accuracy(evaluation_uri: str) -> Optional[float]:
  """The candidate's accuracy on the canonical test split (the base data's slice)."""
  # pylint: disable=import-outside-toplevel
  from components.served_baseline import CANDIDATE, slice_accuracies
  from trainer import features
  # pylint: enable=import-outside-toplevel
  return slice_accuracies(evaluation_uri).get((CANDIDATE, features.BASE_SPAN))


def _threshold_text(threshold) -> str:
  """`>= 0.99` for a value bound; `change >= -1e-10 vs the served model` for a
  change bound (TFMA reports each failed bound on its own)."""
  parts = []
  if threshold.HasField('value_threshold'):
    bound = threshold.value_threshold
    parts += [f'>= {bound.lower_bound.value:g}'] if bound.HasField('lower_bound') else []
    parts += [f'<= {bound.upper_bound.value:g}'] if bound.HasField('upper_bound') else []
  if threshold.HasField('change_threshold'):
    bound = threshold.change_threshold
    sign = '>=' if bound.direction == tfma.MetricDirection.HIGHER_IS_BETTER else '<='
    changes = ([f'change {sign} {bound.absolute.value:g}'] if bound.HasField('absolute')
               else []) + ([f'relative change {sign} {bound.relative.value:g}']
                           if bound.HasField('relative') else [])
    parts.append(' and '.join(changes) + ' vs the served model')
  return ' and '.join(parts) or 'none'


def _slice_text(slice_key) -> str:
  keys = [f'{k.column}={k.WhichOneof("kind") and getattr(k, k.WhichOneof("kind"))}'
          for k in slice_key.single_slice_keys]
  return ', '.join(keys) or 'overall'


def read_gate_failures(evaluation_uri: str) -> List[str]:
  """Why the Evaluator did not bless: each failed bound as metric, value and bound."""
  result = tfma.load_validation_result(evaluation_uri)
  reasons = []
  for per_slice in result.metric_validations_per_slice:
    for failure in per_slice.failures:
      key = failure.metric_key
      what = 'change vs the served model' if key.is_diff else 'value'
      reasons.append(f'{key.name} ({_slice_text(per_slice.slice_key)} slice): {what} '
                     f'{failure.metric_value.double_value.value:.4f}, bound '
                     f'{_threshold_text(failure.metric_threshold)}'
                     + (f' ({failure.message.strip()})' if failure.message.strip() else ''))
  reasons += [f'slice with no examples: {s}' for s in result.missing_slices]
  if result.missing_thresholds:
    reasons.append('a threshold had no metric to check')
  return reasons


def read_anomaly_lines(artifact: metadata_store_pb2.Artifact) -> List[str]:
  from components import anomalies_gate  # pylint: disable=import-outside-toplevel
  splits = json.loads(artifact.properties['split_names'].string_value or '[]')
  return [str(a) for a in anomalies_gate.read_anomalies_at(artifact.uri, splits)]


def run_contexts(store: metadata_store.MetadataStore) -> List[metadata_store_pb2.Context]:
  """The pipeline runs, oldest first."""
  return sorted(store.get_contexts_by_type(PIPELINE_RUN_CONTEXT),
                key=lambda c: (c.create_time_since_epoch, c.id))


def _run_of(store: metadata_store.MetadataStore, execution_id: int) -> Optional[str]:
  return next((c.name for c in store.get_contexts_by_execution(execution_id)
               if c.type == PIPELINE_RUN_CONTEXT), None)


def first_pushes(store: metadata_store.MetadataStore) -> Dict[str, str]:
  """Pushed version -> the run that pushed it first. A later run whose model was already
  served (or whose Pusher was cached) records the same version."""
  pushed = {a.id: a.custom_properties['pushed_version'].string_value
            for a in store.get_artifacts_by_type('PushedModel')
            if a.custom_properties.get('pushed') and a.custom_properties['pushed'].int_value
            and a.custom_properties.get('pushed_version')}
  if not pushed:
    return {}
  events = [e for e in store.get_events_by_artifact_ids(list(pushed))
            if e.type == metadata_store_pb2.Event.OUTPUT]
  executions = {e.id: e for e in store.get_executions_by_id(
      list({e.execution_id for e in events}))}
  result: Dict[str, str] = {}
  for event in sorted(events, key=lambda e: (executions[e.execution_id].create_time_since_epoch,
                                             e.execution_id)):
    run = _run_of(store, event.execution_id)
    if run:
      result.setdefault(pushed[event.artifact_id], run)
  return result


def _exec_json(execution: metadata_store_pb2.Execution, name: str) -> Dict[str, Any]:
  """A JSON exec property (TFX stores `custom_config` as a JSON string); {} if unreadable."""
  value = execution.custom_properties.get(name) or execution.properties.get(name)
  try:
    parsed = json.loads(value.string_value) if value else {}
  except ValueError:
    return {}
  return parsed if isinstance(parsed, dict) else {}


def _spans(examples: metadata_store_pb2.Artifact) -> Optional[List[int]]:
  """ExampleGen's `spans` custom property (a JSON list); None when absent or unreadable."""
  if 'spans' not in examples.custom_properties:
    return None
  try:
    return [int(span) for span in json.loads(examples.custom_properties['spans'].string_value)]
  except (ValueError, TypeError):
    return None


def _read_blessing(summary: RunSummary, blessing: metadata_store_pb2.Artifact) -> None:
  props = blessing.custom_properties
  summary.blessed = bool(props['blessed'].int_value) if 'blessed' in props else None
  if 'baseline_version' in props:
    summary.baseline_version = props['baseline_version'].string_value
  if 'baseline_accuracy' in props:
    summary.baseline_accuracy = props['baseline_accuracy'].double_value


def read_run(store: metadata_store.MetadataStore, run: metadata_store_pb2.Context,
             pushes: Optional[Dict[str, str]] = None) -> RunSummary:
  """One pipeline run: per-component state and time, and what its components recorded.
  `pushes` is `first_pushes(store)`, read once by callers that read many runs."""
  pushes = first_pushes(store) if pushes is None else pushes
  executions = sorted(store.get_executions_by_context(run.id),
                      key=lambda e: e.create_time_since_epoch)
  node_of: Dict[int, str] = {}
  for execution in executions:
    for context in store.get_contexts_by_execution(execution.id):
      if context.type == NODE_CONTEXT:  # named '<pipeline>.<component id>'
        node_of[execution.id] = context.name.split('.', 1)[-1]
  summary = RunSummary(run_id=run.name, components=[])
  if executions:
    summary.started = min(e.create_time_since_epoch for e in executions) / 1e3
    summary.ended = max(e.last_update_time_since_epoch for e in executions) / 1e3
  for execution in executions:
    seconds = (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1e3
    component_id = node_of.get(execution.id, execution.type)
    summary.components.append(ComponentRun(
        component_id, STATES.get(execution.last_known_state, '?'), seconds))
    if component_id in (ids.TRANSFORM, ids.TRAINER):
      custom_config = _exec_json(execution, 'custom_config')
      if 'code_fingerprint' in custom_config:
        summary.code_fingerprint[component_id.lower()] = str(custom_config['code_fingerprint'])
      if component_id == ids.TRAINER and isinstance(custom_config.get('training'), dict):
        summary.training = custom_config['training']
    for artifact in _outputs(store, execution.id):
      props = artifact.custom_properties
      if component_id == ids.EXAMPLE_GEN and artifact.type == 'Examples':
        summary.spans = _spans(artifact)
        if summary.spans is None and 'span' in artifact.properties:
          summary.newest_span = artifact.properties['span'].int_value
      elif component_id == ids.EVALUATOR and artifact.type == 'ModelBlessing':
        _read_blessing(summary, artifact)
      elif (component_id == ids.EVALUATOR and artifact.type == 'ModelEvaluation' and
            tf.io.gfile.exists(artifact.uri)):  # an old run's outputs may have been deleted
        summary.test_accuracy = read_test_accuracy(artifact.uri)
        summary.not_blessed_because = read_gate_failures(artifact.uri)
      elif artifact.type == 'ExampleAnomalies' and artifact.state == artifact.LIVE:
        summary.anomalies = read_anomaly_lines(artifact)
      elif component_id == ids.PUSHER and props.get('pushed') and props['pushed'].int_value:
        summary.pushed_to = props['pushed_destination'].string_value
        if props.get('pushed_version'):
          summary.pushed_version = props['pushed_version'].string_value
          summary.first_pushed_by = pushes.get(summary.pushed_version)
  return summary


def all_runs(metadata_path: str) -> List[RunSummary]:
  """Every pipeline run, oldest first."""
  store = open_store(metadata_path)
  pushes = first_pushes(store)
  return [read_run(store, run, pushes) for run in run_contexts(store)]


def last_run(metadata_path: str, run_id: Optional[str] = None) -> Optional[RunSummary]:
  """A pipeline run (the newest unless `run_id` names one), per-component state and time."""
  store = open_store(metadata_path)
  runs = [c for c in run_contexts(store) if run_id is None or c.name == run_id]
  return read_run(store, runs[-1]) if runs else None
