"""What the last run did, read back from ML Metadata: the record TFX itself keeps."""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
import tensorflow_model_analysis as tfma

from trainer import features

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
  test_accuracy: Optional[float] = None
  blessed: Optional[bool] = None
  pushed_to: Optional[str] = None

  def format(self) -> str:
    lines = [f'Run {self.run_id}', f'  {"component":<28} {"status":<8} {"seconds":>8}']
    for c in self.components:
      lines.append(f'  {c.component_id:<28} {c.state:<8} {c.seconds:>8.1f}')
    total = sum(c.seconds for c in self.components)
    lines.append(f'  {"total":<28} {"":<8} {total:>8.1f}')
    if self.test_accuracy is not None:
      lines.append(f'  test accuracy: {self.test_accuracy:.4f}')
    if self.blessed is not None:
      lines.append(f'  blessed: {"yes" if self.blessed else "no"}')
    lines.append(f'  pushed: {self.pushed_to or "no"}')
    return '\n'.join(lines)


def _store(metadata_path: str) -> metadata_store.MetadataStore:
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
  """Overall test accuracy from the Evaluator's TFMA output."""
  result = tfma.load_eval_result(evaluation_uri)
  for slice_key, metrics in result.slicing_metrics:
    if slice_key == ():
      for output_metrics in metrics.values():
        for sub in output_metrics.values():
          if ACCURACY_METRIC in sub:
            return float(sub[ACCURACY_METRIC]['doubleValue'])
  return None


def last_run(metadata_path: str, run_id: Optional[str] = None) -> Optional[RunSummary]:
  """A pipeline run (the newest unless `run_id` names one), per-component state and time."""
  store = _store(metadata_path)
  runs = [c for c in store.get_contexts_by_type(PIPELINE_RUN_CONTEXT)
          if run_id is None or c.name == run_id]
  if not runs:
    return None
  run = max(runs, key=lambda c: c.create_time_since_epoch)
  executions = sorted(store.get_executions_by_context(run.id),
                      key=lambda e: e.create_time_since_epoch)
  node_of: Dict[int, str] = {}
  for execution in executions:
    for context in store.get_contexts_by_execution(execution.id):
      if context.type == NODE_CONTEXT:  # named '<pipeline>.<component id>'
        node_of[execution.id] = context.name.split('.', 1)[-1]
  summary = RunSummary(run_id=run.name, components=[])
  for execution in executions:
    seconds = (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1e3
    component_id = node_of.get(execution.id, execution.type)
    summary.components.append(ComponentRun(
        component_id, STATES.get(execution.last_known_state, '?'), seconds))
    for artifact in _outputs(store, execution.id):
      props = artifact.custom_properties
      if component_id == 'Evaluator' and artifact.type == 'ModelBlessing':
        summary.blessed = bool(props['blessed'].int_value) if 'blessed' in props else None
      elif component_id == 'Evaluator' and artifact.type == 'ModelEvaluation':
        summary.test_accuracy = read_test_accuracy(artifact.uri)
      elif component_id == 'Pusher' and props.get('pushed') and props['pushed'].int_value:
        summary.pushed_to = props['pushed_destination'].string_value
  return summary
