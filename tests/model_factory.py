"""A small real serving model for tests and benchmarks, built without the whole pipeline.

It takes the same path as the pipeline's Transform and Trainer: `preprocessing_fn` through
tensorflow-transform's Beam implementation, `trainer.run.train`, then the real export, so
its signatures are exactly what the Pusher ships.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import metadata_io, schema_utils

from trainer.hparams import TrainingConfig
from trainer import data, export, features, preprocessing, run

RAW_FEATURE_SPEC = {
    features.IMAGE_KEY: tf.io.FixedLenFeature([features.IMAGE_PIXELS], tf.int64),
    features.LABEL_KEY: tf.io.FixedLenFeature([1], tf.int64),
}


def transform(images: np.ndarray, labels: np.ndarray, transform_dir: Path) -> data.Arrays:
  """Analyzes and transforms with TFT on Beam; writes the transform graph to transform_dir."""
  instances = [{features.IMAGE_KEY: img.reshape(-1).astype(np.int64),
                features.LABEL_KEY: np.array([lab], np.int64)}
               for img, lab in zip(images, labels)]
  metadata = tft.DatasetMetadata(schema_utils.schema_from_feature_spec(RAW_FEATURE_SPEC))
  with tft_beam.Context(temp_dir=tempfile.mkdtemp(), force_tf_compat_v1=False):
    (transformed, _), transform_fn = (
        (instances, metadata) | tft_beam.AnalyzeAndTransformDataset(
            preprocessing.preprocessing_fn, output_record_batches=False))
    _ = transform_fn | tft_beam.WriteTransformFn(str(transform_dir))
  metadata_io.write_metadata(metadata, str(transform_dir / tft.TFTransformOutput.RAW_METADATA_DIR))
  return data.Arrays(np.stack([t[features.IMAGE_KEY] for t in transformed]).astype(np.float32),
                     np.array([t[features.LABEL_KEY] for t in transformed], np.int64))


def build_serving_model(export_dir: Path, images: np.ndarray, labels: np.ndarray,
                        cfg: Optional[TrainingConfig] = None) -> Path:
  """Trains on (images uint8 [n,28,28], labels) and exports a SavedModel to export_dir."""
  work = Path(tempfile.mkdtemp())
  arrays = transform(images, labels, work / 'transform')
  cfg = cfg or TrainingConfig(epochs=3, batch_size=64, augment=False, label_smoothing=0.0)
  model = run.train(cfg, arrays, arrays, str(work / 'logs'))
  export.export_serving_model(model, cfg, tft.TFTransformOutput(str(work / 'transform')),
                              str(export_dir))
  return Path(export_dir)
