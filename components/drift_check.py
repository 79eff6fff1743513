"""The drift gate: stop the run before training when the newest span's data has drifted
from the base data, beyond bounds kept in the repository (pipeline/schema/drift.pbtxt).

New data that looks unlike what the model was built on (another alphabet, inverted scans,
one digit only) would move the model without anyone asking for it. TFDV's drift
comparators measure it: the label distribution by L-infinity distance, the pixel
statistics (each image's mean intensity and ink fraction) by Jensen-Shannon divergence,
the newest span against the base files' training data. A span past a bound fails the run
before Transform with one line per feature (span, feature, distance, bound), unless
`warn_only`. A span smaller than `min_examples` is too small for a distribution to mean
anything (a handful of corrections is skewed by nature): it is logged and not compared.
"""

# No `from __future__ import annotations`: TFX reads the component's hints at runtime.
import json
import os
from typing import Dict, List

from absl import logging
import numpy as np
from tfx.dsl.component.experimental.annotations import InputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_artifacts

from components.mnist_example_gen.executor import SPANS_PROPERTY
from trainer import features

INK = 128  # a pixel at least this bright is ink (MNIST digits are white on black)


class DataDriftError(RuntimeError):
  """The newest span drifted from the base data past a bound; the message names each."""


def image_statistics(images: np.ndarray, labels: np.ndarray) -> Dict[str, np.ndarray]:
  """The per-example columns the drift bounds are about."""
  flat = images.reshape(len(images), -1).astype(np.float32)
  return {features.LABEL_KEY: labels.astype(np.int64),
          'mean_pixel': flat.mean(axis=1),
          'ink_fraction': (flat >= INK).mean(axis=1)}


def _read(examples: standard_artifacts.Examples, splits: List[str]) -> Dict[str, np.ndarray]:
  """image, label and span of every example in `splits` (gzip'd TFRecords)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  spec = {features.IMAGE_KEY: tf.io.FixedLenFeature([features.IMAGE_PIXELS], tf.int64),
          features.LABEL_KEY: tf.io.FixedLenFeature([1], tf.int64),
          features.SPAN_KEY: tf.io.FixedLenFeature([1], tf.int64)}
  files = [f for split in splits
           for f in fileio.glob(os.path.join(artifact_utils.get_split_uri([examples], split),
                                             '*'))]
  columns: Dict[str, list] = {key: [] for key in spec}
  dataset = tf.data.TFRecordDataset(files, compression_type='GZIP').batch(4096)
  for batch in dataset.map(lambda rows: tf.io.parse_example(rows, spec)):
    for key in spec:
      columns[key].append(batch[key].numpy())
  return {key: (np.concatenate(parts) if parts else np.zeros((0,) + tuple(spec[key].shape),
                                                             np.int64))
          for key, parts in columns.items()}


def drift_problems(base: Dict[str, np.ndarray], span: Dict[str, np.ndarray], span_number: int,
                   drift_schema_text: str) -> List[str]:
  """TFDV's drift comparators between two sets of per-example statistics."""
  # pylint: disable=import-outside-toplevel
  import pandas as pd
  import tensorflow_data_validation as tfdv
  from google.protobuf import text_format
  from tensorflow_metadata.proto.v0 import schema_pb2
  # pylint: enable=import-outside-toplevel
  schema = text_format.Parse(drift_schema_text, schema_pb2.Schema())
  options = tfdv.StatsOptions(schema=schema)  # the label's counts as a categorical feature
  current = tfdv.generate_statistics_from_dataframe(pd.DataFrame(span), options)
  previous = tfdv.generate_statistics_from_dataframe(pd.DataFrame(base), options)
  anomalies = tfdv.validate_statistics(current, schema, previous_statistics=previous)
  return [f'span {span_number}: {feature}: {reason.description}'
          for feature, info in sorted(anomalies.anomaly_info.items())
          for reason in info.reason]


def check(examples: standard_artifacts.Examples, drift_schema_text: str, min_examples: int,
          warn_only: bool) -> List[str]:
  spans = json.loads(examples.get_string_custom_property(SPANS_PROPERTY) or '[]')
  if not spans:
    logging.info('DriftCheck: no spans, only the base data; nothing to compare')
    return []
  newest = max(spans)
  rows = _read(examples, [features.TRAIN_SPLIT, features.HOLDOUT_SPLIT])
  which = rows[features.SPAN_KEY].reshape(-1)
  count = int(np.sum(which == newest))
  if count < min_examples:
    logging.info('DriftCheck: span %d has %d examples, fewer than %d: too few to compare '
                 'distributions; not checked', newest, count, min_examples)
    return []

  def stats(mask: np.ndarray) -> Dict[str, np.ndarray]:
    return image_statistics(rows[features.IMAGE_KEY][mask],
                            rows[features.LABEL_KEY][mask].reshape(-1))

  problems = drift_problems(stats(which == features.BASE_SPAN), stats(which == newest),
                            newest, drift_schema_text)
  if not problems:
    logging.info('DriftCheck: span %d (%d examples) within the drift bounds', newest, count)
    return problems
  text = (f'span {newest} drifted from the base data past the bounds in '
          f'pipeline/schema/drift.pbtxt:\n' + '\n'.join(f'  - {p}' for p in problems))
  if warn_only:
    logging.warning('%s\nContinuing: anomalies_warn_only is set.', text)
    return problems
  raise DataDriftError(f'{text}\nStopped before Transform and Trainer. Look at the span, or '
                       f'review the bounds, or pass --anomalies-warn-only true to continue.')


@component
def DriftCheck(  # pylint: disable=invalid-name
    examples: InputArtifact[standard_artifacts.Examples],
    drift_schema: Parameter[str],
    min_examples: Parameter[int] = 500,
    warn_only: Parameter[bool] = False) -> None:
  """Fails the run when the newest span drifted past a bound, unless `warn_only`.
  `drift_schema` is the bounds file's text, so an edit of the bounds re-runs the check."""
  check(examples, drift_schema, min_examples, warn_only)
