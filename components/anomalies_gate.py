"""The data gate: stop the run before training when ExampleValidator found anomalies.

ExampleValidator only records anomalies; nothing downstream reads them, so a run would
train on bad data and could push the result. `AnomaliesGate` reads its `anomalies`
output, and raises with one readable line per anomaly (split, feature, what is wrong)
unless `warn_only` is set. The pipeline makes Transform, hence the Trainer, wait for it.
"""

# No `from __future__ import annotations`: TFX reads the component's hints at runtime.
import dataclasses
import os
from typing import List

from absl import logging
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import types
from tfx.dsl.component.experimental.annotations import InputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_artifacts

SCHEMA_DIFF_FILE = 'SchemaDiff.pb'  # ExampleValidator's file in each split's folder
DATASET = '(dataset)'               # `feature` of split-level anomalies (example counts)


@dataclasses.dataclass(frozen=True)
class Anomaly:
  split: str
  feature: str
  kind: str         # TFDV's reason type, e.g. INT_TYPE_BIG_INT
  description: str

  def __str__(self) -> str:
    return f'{self.split}: {self.feature}: {self.description} [{self.kind}]'


class DataAnomaliesError(RuntimeError):
  """The data does not match the curated schema; the message lists every anomaly."""


def _from_info(split: str, feature: str, info: anomalies_pb2.AnomalyInfo) -> List[Anomaly]:
  kind_name = anomalies_pb2.AnomalyInfo.Type.Name
  if info.reason:
    return [Anomaly(split, feature, kind_name(r.type), r.description or r.short_description)
            for r in info.reason]
  return [Anomaly(split, feature, 'UNKNOWN_TYPE', info.description or info.short_description)]


def parse_anomalies(split: str, anomalies: anomalies_pb2.Anomalies) -> List[Anomaly]:
  """Every reason in one split's Anomalies proto, features in name order."""
  result = []
  for feature in sorted(anomalies.anomaly_info):
    result += _from_info(split, feature, anomalies.anomaly_info[feature])
  if anomalies.HasField('dataset_anomaly_info'):
    result += _from_info(split, DATASET, anomalies.dataset_anomaly_info)
  return result


def read_anomalies_at(uri: str, splits: List[str]) -> List[Anomaly]:
  """The anomalies ExampleValidator wrote under `uri` (its artifact's folder)."""
  result = []
  for split in splits:
    path = os.path.join(uri, f'Split-{split}', SCHEMA_DIFF_FILE)
    with fileio.open(path, 'rb') as f:
      result += parse_anomalies(split, anomalies_pb2.Anomalies.FromString(f.read()))
  return result


def read_anomalies(artifact: types.Artifact) -> List[Anomaly]:
  """The anomalies an ExampleAnomalies artifact holds, over all its splits."""
  return read_anomalies_at(artifact.uri, artifact_utils.decode_split_names(artifact.split_names))


def format_anomalies(anomalies: List[Anomaly]) -> str:
  return '\n'.join(f'  - {a}' for a in anomalies)


def check(artifact: types.Artifact, warn_only: bool) -> List[Anomaly]:
  """Raises DataAnomaliesError listing the anomalies, or logs them when `warn_only`."""
  anomalies = read_anomalies(artifact)
  if not anomalies:
    logging.info('AnomaliesGate: no anomalies against the schema')
    return anomalies
  text = (f'{len(anomalies)} data anomalies against the curated schema '
          f'(ExampleValidator output {artifact.uri}):\n{format_anomalies(anomalies)}')
  if warn_only:
    logging.warning('%s\nContinuing: anomalies_warn_only is set.', text)
    return anomalies
  raise DataAnomaliesError(
      f'{text}\nStopped before Transform and Trainer. Fix the data, or review the schema '
      f'(pipeline/schema/schema.pbtxt), or pass --anomalies-warn-only true to continue.')


@component
def AnomaliesGate(  # pylint: disable=invalid-name
    anomalies: InputArtifact[standard_artifacts.ExampleAnomalies],
    warn_only: Parameter[bool] = False) -> None:
  """Fails the run on data anomalies unless `warn_only` (a function component, so it
  runs under every TFX orchestrator, Kubeflow's included)."""
  check(anomalies, warn_only)
