"""The gate holds: a candidate worse than the model being served is not blessed, not
pushed, and the serving directory and what the server answers stay exactly as they were.

The candidate is the scenario's blessed model with its output bias pushed toward class 9
(a model that answers "9" far too often). It goes through the pipeline's own model gate
(`pipeline.model_gate`: the Evaluator with the served model as its baseline, the atomic
Pusher), pushing into the directory the test server polls and reads its baseline from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Dict

import pytest
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from trainer import idx
from pipeline import component_ids as ids
from pipeline import pipeline, summary
from serving import process
from tests.reliability.conftest import (MODEL_NAME, artifacts_of, executions_of,
                                        run_contexts, versions)
from tests.serving.conftest import MNIST_DIR, derive_version
from tests.serving.helpers import call


def tree(folder: Path) -> Dict[str, str]:
  """Every file under `folder` with its SHA-256: equal trees hold equal bytes."""
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob('*')) if p.is_file()}


def predict(server, images) -> bytes:
  status, body = call(f'{server.rest_url}/v1/models/{MODEL_NAME}:predict',
                      {'instances': images.tolist()})
  assert status == 200, body
  return json.dumps(body, sort_keys=True).encode()


def test_worse_candidate_is_not_blessed_not_pushed_and_nothing_served_changes(
    scenario, server, tmp_path):
  # Only the comparison with the served model can fail: no absolute bound.
  config = dataclasses.replace(scenario.config, accuracy_threshold=0.0)
  [blessed_version] = versions(config.model_serving_dir)
  candidate = tmp_path / 'candidate'
  derive_version(config.model_serving_dir / str(blessed_version),
                 candidate / 'Format-Serving', shift_to_nine=4.0)

  images = idx.load_source(MNIST_DIR, 'test', 20).images
  served_dir = server.serving_dir / MODEL_NAME
  before = (tree(served_dir), process.served_versions(server.rest_url), predict(server, images))

  examples = tfx.dsl.Resolver(
      strategy_class=tfx.dsl.experimental.LatestArtifactStrategy,
      examples=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Examples),
  ).with_id('LatestExamples')
  model = tfx.dsl.Importer(source_uri=str(candidate),
                           artifact_type=tfx.types.standard_artifacts.Model).with_id('Candidate')
  locations = dataclasses.replace(config.locations(), serving=str(served_dir))
  gate = pipeline.model_gate(config, locations, examples.outputs['examples'],
                             model.outputs['result'], pipeline.code_fingerprints())
  tfx.orchestration.LocalDagRunner().run(tfx.dsl.Pipeline(
      pipeline_name=config.pipeline_name, pipeline_root=locations.pipeline_root,
      components=[examples, model, *gate], enable_cache=False,
      metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
          str(config.metadata_path)),
      beam_pipeline_args=config.beam_pipeline_args()))

  # The verdict, from ML Metadata: the baseline was the served version, the candidate lost.
  run = executions_of(config, run_contexts(config)[-1])
  blessed_run = summary.last_run(str(config.metadata_path),
                                 run_id=run_contexts(config)[1].name)
  result = summary.last_run(str(config.metadata_path))
  assert result.baseline_version == str(blessed_version)
  assert result.baseline_accuracy == pytest.approx(blessed_run.test_accuracy, abs=1e-6)
  assert result.blessed is False and result.pushed_to is None
  assert result.test_accuracy < blessed_run.test_accuracy
  [pushed] = artifacts_of(config, run[ids.PUSHER].id, metadata_store_pb2.Event.OUTPUT)
  assert pushed.custom_properties['pushed'].int_value == 0

  # The summary says why: metric, value and bound.
  text = result.format()
  print(text)
  assert f'baseline: served version {blessed_version}, test accuracy' in text
  reason = re.search(r'- sparse_categorical_accuracy \(span=0 slice\): change vs the served '
                     r'model (-[\d.]+), bound change >= -1e-10 vs the served model', text)
  assert reason, text
  assert float(reason.group(1)) == pytest.approx(
      result.test_accuracy - blessed_run.test_accuracy, abs=1e-3)

  # Nothing changed where the server looks, nor in what it serves.
  after = (tree(served_dir), process.served_versions(server.rest_url), predict(server, images))
  assert after == before
