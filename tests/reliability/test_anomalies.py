"""Anomalies stop the run: bad data goes through the real DAG (`create_pipeline`) with
hand-written examples in place of the MNIST ExampleGen, which itself cannot emit most
of them (IDX pixels are bytes, and it rejects labels above 9). ExampleValidator checks
them against the curated schema; the gate fails the run before Transform and Trainer."""

# No `from __future__ import annotations`: TFX reads the components' hints at runtime.
import os
import re
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest
import tensorflow as tf
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_artifacts

from components import anomalies_gate, curated_schema
from pipeline import component_ids as ids
from pipeline import configs, pipeline, summary
from tests.reliability.conftest import artifacts_of, executions_of, run_contexts
from trainer import features

Execution = metadata_store_pb2.Execution


def _example(image: List[int], label: Optional[int]) -> bytes:
  feature = {features.IMAGE_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=image))}
  if label is not None:
    feature[features.LABEL_KEY] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def crafted_splits() -> Dict[str, List[bytes]]:
  """Valid rows plus one of each anomaly; the test split is far below its minimum size."""
  rng = np.random.default_rng(0)
  def valid(n: int) -> List[bytes]:
    return [_example(rng.integers(0, 256, features.IMAGE_PIXELS).tolist(), int(rng.integers(10)))
            for _ in range(n)]
  blank = [0] * features.IMAGE_PIXELS
  return {
      features.TRAIN_SPLIT: valid(150) + [
          _example([300] + blank[1:], 3),     # pixel above 255
          _example([-1] + blank[1:], 3),      # pixel below 0
          _example(blank, 12),                # label outside 0-9
          _example(blank[:700], 3)],          # image of the wrong size
      features.EVAL_SPLIT: valid(120) + [_example(blank, None)] * 2,  # label missing
      features.TEST_SPLIT: valid(30),         # far below the 100-example minimum
  }


@component
def CraftedExamples(examples: OutputArtifact[standard_artifacts.Examples]) -> None:  # pylint: disable=invalid-name
  """Writes crafted_splits() the way ExampleGen writes splits (gzip'd TFRecords)."""
  splits = crafted_splits()
  examples.split_names = artifact_utils.encode_split_names(list(splits))
  for name, rows in splits.items():
    folder = os.path.join(examples.uri, f'Split-{name}')
    fileio.makedirs(folder)
    with tf.io.TFRecordWriter(os.path.join(folder, 'data.tfrecord.gz'), 'GZIP') as writer:
      for row in rows:
        writer.write(row)


@component
def Downstream(anomalies: InputArtifact[standard_artifacts.ExampleAnomalies]) -> None:  # pylint: disable=invalid-name
  """Stands for Transform in the warn-only run: it runs only if the gate let it."""
  del anomalies


def _config(out: Path, **overrides) -> configs.LocalConfig:
  return configs.load(environ={}, output_dir=out, pipeline_name='anomalies', eval_size=20,
                      beam_workers=1, **overrides)


def _run(config: configs.LocalConfig, dag: tfx.dsl.Pipeline) -> None:
  config.metadata_path.parent.mkdir(parents=True, exist_ok=True)
  dag.metadata_connection_config = (
      tfx.orchestration.metadata.sqlite_metadata_connection_config(str(config.metadata_path)))
  tfx.orchestration.LocalDagRunner().run(dag)


@pytest.fixture(scope='module')
def stopped(tmp_path_factory):
  """One run of the whole DAG on the crafted examples; returns (config, the error)."""
  config = _config(tmp_path_factory.mktemp('anomalies'))
  with pytest.raises(Exception) as failure:
    _run(config, pipeline.create_pipeline(config.params(), config.locations(),
                                  example_gen=CraftedExamples()))
  return config, failure.value


def test_the_run_fails_at_the_gate_before_training(stopped):
  config, _ = stopped
  ran = executions_of(config, run_contexts(config)[-1])
  assert ran[ids.EXAMPLE_VALIDATOR].last_known_state == Execution.COMPLETE
  assert ran[ids.ANOMALIES_GATE].last_known_state == Execution.FAILED
  for component_id in (ids.TRANSFORM, ids.TRAINER, ids.EVALUATOR, ids.PUSHER):
    assert component_id not in ran, sorted(ran)
  assert not config.model_serving_dir.exists() or not list(config.model_serving_dir.iterdir())


def test_the_error_lists_every_anomaly_by_split_and_feature(stopped):
  _, error = stopped
  text = str(error)
  assert isinstance(error, anomalies_gate.DataAnomaliesError), repr(error)
  expected = [
      ('train: image:', 'Unexpectedly large value: 300'),
      ('train: image:', 'Unexpectedly small value: -1'),
      ('train: image:', 'INVALID_FEATURE_SHAPE'),
      ('train: label:', 'Unexpectedly large value: 12'),
      ('eval: label:', 'fewer examples than expected'),
      ('test: (dataset):', 'has 30 examples, which is fewer than expected'),
  ]
  lines = text.splitlines()
  for where, what in expected:
    assert any(where in line and what in line for line in lines), (where, what, text)
  for clean in ('eval: image:', 'test: image:', 'test: label:', 'train: (dataset)'):
    assert clean not in text  # valid parts are not reported
  assert '--anomalies-warn-only' in text


def test_summary_lists_the_anomalies_and_says_the_run_stopped(stopped):
  config, _ = stopped
  text = summary.last_run(str(config.metadata_path)).format()
  assert re.search(r'AnomaliesGate +FAILED', text), text
  assert 'data anomalies: ' in text and 'the run stopped before training' in text
  assert 'test: (dataset): The dataset has 30 examples' in text


def test_the_schema_checked_is_the_curated_file_not_one_inferred(stopped):
  config, _ = stopped
  run = executions_of(config, run_contexts(config)[-1])
  [schema] = artifacts_of(config, run[ids.SCHEMA_GEN].id, metadata_store_pb2.Event.OUTPUT)
  imported = Path(schema.uri, 'schema.pbtxt').read_text()
  assert imported == configs.CURATED_SCHEMA.read_text()
  assert 'SchemaGen' not in run  # nothing infers a schema from the data it checks


def test_warn_only_reports_and_lets_the_run_go_on(stopped, caplog):
  config, _ = stopped
  [anomalies] = artifacts_of(config, executions_of(config, run_contexts(config)[-1])
                             [ids.EXAMPLE_VALIDATOR].id, metadata_store_pb2.Event.OUTPUT)
  artifact = standard_artifacts.ExampleAnomalies()
  artifact.set_mlmd_artifact(anomalies)
  assert len(anomalies_gate.check(artifact, warn_only=True)) >= 6

  warn = _config(config.output_dir, anomalies_warn_only=True)
  examples = CraftedExamples()
  validation = pipeline.data_validation(warn, warn.locations(), examples.outputs['examples'])
  downstream = Downstream(anomalies=validation.example_validator.outputs['anomalies'])
  downstream.add_upstream_node(validation.anomalies_gate)
  _run(warn, tfx.dsl.Pipeline(pipeline_name=warn.pipeline_name,
                              pipeline_root=warn.locations().pipeline_root,
                              components=[examples, *validation, downstream],
                              enable_cache=True, beam_pipeline_args=warn.beam_pipeline_args()))
  ran = executions_of(warn, run_contexts(warn)[-1])
  assert ran[ids.ANOMALIES_GATE].last_known_state == Execution.COMPLETE
  assert ran['Downstream'].last_known_state == Execution.COMPLETE


def test_a_schema_edit_is_a_new_import_not_a_cache_hit(tmp_path):
  edited = tmp_path / 'schema.pbtxt'
  edited.write_text(configs.CURATED_SCHEMA.read_text().replace('max: 9', 'max: 8'))
  curated = curated_schema.CuratedSchemaGen(str(configs.CURATED_SCHEMA))
  changed = curated_schema.CuratedSchemaGen(str(edited))
  key = curated_schema.FINGERPRINT_KEY
  assert curated.exec_properties[key] != changed.exec_properties[key]
  # The repo's schema is recorded repo-relative: it resolves in a checkout or an image.
  assert curated.exec_properties['schema_file'] == 'pipeline/schema/schema.pbtxt'
  assert curated_schema.resolve('pipeline/schema/schema.pbtxt') == str(configs.CURATED_SCHEMA)
