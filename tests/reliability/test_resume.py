"""Resume: a run killed while the Trainer trains is started again, reuses every component
that had finished (ML Metadata's cache), and completes; nothing the killed run left
behind is taken for a finished artifact."""

from __future__ import annotations

from ml_metadata.proto import metadata_store_pb2

from pipeline import component_ids as ids
from pipeline import summary
from tests.reliability.conftest import (artifacts_of, executions_of, run_contexts, store,
                                        versions)

FINISHED_BEFORE_TRAINER = (ids.EXAMPLE_GEN, ids.STATISTICS_GEN, ids.SCHEMA_GEN,
                           ids.EXAMPLE_VALIDATOR, ids.ANOMALIES_GATE, ids.TRANSFORM)
Event = metadata_store_pb2.Event
Execution = metadata_store_pb2.Execution


def test_killed_run_stopped_inside_the_trainer(scenario, capsys):
  config = scenario.config
  killed = executions_of(config, run_contexts(config)[0])
  with capsys.disabled():
    print(f'\n  resume: killed {scenario.killed_after:.0f} s after start, in the Trainer')
  assert 'Component Trainer is running.' in scenario.killed_output
  for component_id in FINISHED_BEFORE_TRAINER:
    assert killed[component_id].last_known_state == Execution.COMPLETE, component_id
  assert killed[ids.TRAINER].last_known_state == Execution.RUNNING  # never finished
  assert ids.EVALUATOR not in killed and ids.PUSHER not in killed


def test_resumed_run_reuses_finished_components_and_completes(scenario):
  config = scenario.config
  resumed = summary.last_run(str(config.metadata_path), run_id=run_contexts(config)[1].name)
  states = {c.component_id: c.state for c in resumed.components}
  assert set(states) == set(ids.ALL)
  for component_id in FINISHED_BEFORE_TRAINER:
    assert states[component_id] == 'cached', states
  for component_id in (ids.TRAINER, ids.EVALUATOR, ids.PUSHER):
    assert states[component_id] == 'done', states
  assert resumed.blessed is True and resumed.pushed_to
  assert resumed.anomalies == []  # real MNIST passes the curated schema


def test_nothing_from_the_killed_trainer_is_used(scenario):
  config = scenario.config
  killed_run, resumed_run = run_contexts(config)[:2]
  killed = executions_of(config, killed_run)[ids.TRAINER]
  resumed = executions_of(config, resumed_run)
  killed_outputs = artifacts_of(config, killed.id, Event.OUTPUT)
  [new_model] = [a for a in artifacts_of(config, resumed[ids.TRAINER].id, Event.OUTPUT)
                 if a.type == 'Model']
  # The killed Trainer's outputs never became LIVE, and none is reused.
  assert all(a.state != metadata_store_pb2.Artifact.LIVE for a in killed_outputs)
  assert all(a.uri != new_model.uri for a in killed_outputs)
  # The Evaluator and the Pusher of the resumed run read the new Trainer's model.
  for component_id in (ids.EVALUATOR, ids.PUSHER):
    inputs = artifacts_of(config, resumed[component_id].id, Event.INPUT)
    assert [a.id for a in inputs if a.type == 'Model'] == [new_model.id], component_id
  # What was pushed is byte for byte the new Trainer's export.
  [version] = versions(config.model_serving_dir)
  pushed = config.model_serving_dir / str(version) / 'saved_model.pb'
  exported = f'{new_model.uri}/Format-Serving/saved_model.pb'
  assert pushed.read_bytes() == open(exported, 'rb').read()
  assert sorted(p.name for p in config.model_serving_dir.iterdir()) == [str(version)]


def test_only_finished_executions_feed_the_cache(scenario):
  """Every artifact a cached component handed out was produced by a COMPLETE execution."""
  config = scenario.config
  mlmd = store(config)
  resumed = executions_of(config, run_contexts(config)[1])
  for component_id in FINISHED_BEFORE_TRAINER:
    for artifact in artifacts_of(config, resumed[component_id].id, Event.OUTPUT):
      assert artifact.state == metadata_store_pb2.Artifact.LIVE
      producers = [e.execution_id for e in mlmd.get_events_by_artifact_ids([artifact.id])
                   if e.type == Event.OUTPUT]
      states = {x.last_known_state for x in mlmd.get_executions_by_id(producers)}
      assert Execution.COMPLETE in states, (component_id, states)
