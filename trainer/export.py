"""The exported SavedModel and its two serving signatures (the contract in `features`).

- `serving_default`: raw pixels float32 [None, 28, 28] (0-255) -> `probabilities`, `classes`.
- `serving_tf_example`: serialized tf.Examples -> `classes` (labels as strings) and
  `scores`, marked as a classify signature so TF Serving's `:classify` API accepts it.
Both run Transform's graph first, so serving normalizes exactly as training did.
Beside them, in `assets.extra/`, what a later warm start needs (trainer/warm_start.py) and
TF Serving's warm-up requests (trainer/warmup_requests.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from tensorflow.core.protobuf import saved_model_pb2

from trainer.hparams import TrainingConfig
from trainer import features, warm_start, warmup_requests

SAVED_MODEL_FILE = 'saved_model.pb'


def _signatures(model: keras.Model, tf_transform_output: tft.TFTransformOutput) -> dict:
  model.tft_layer = tf_transform_output.transform_features_layer()
  # Clients send the image alone: the label and the data's bookkeeping (span) are not inputs.
  raw_spec = {features.IMAGE_KEY: tf_transform_output.raw_feature_spec()[features.IMAGE_KEY]}

  def probabilities(raw_features):
    transformed = model.tft_layer(raw_features)
    return model(transformed[features.IMAGE_KEY], training=False)

  @tf.function(input_signature=[tf.TensorSpec(
      [None, features.IMAGE_HEIGHT, features.IMAGE_WIDTH], tf.float32,
      name=features.PIXELS_INPUT)])
  def serve_pixels(image):
    pixels = tf.reshape(image, [-1, features.IMAGE_PIXELS])
    pixels = tf.cast(tf.round(tf.clip_by_value(pixels, 0., float(features.PIXEL_MAX))),
                     tf.int64)
    probs = probabilities({features.IMAGE_KEY: pixels})
    return {features.PROBABILITIES_OUTPUT: probs,
            features.CLASSES_OUTPUT: tf.argmax(probs, axis=1)}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string,
                                              name=features.EXAMPLES_INPUT)])
  def serve_tf_examples(serialized):
    probs = probabilities(tf.io.parse_example(serialized, raw_spec))
    labels = tf.constant([[str(i) for i in range(features.NUM_CLASSES)]])
    return {features.CLASSIFY_CLASSES_OUTPUT: tf.tile(labels, [tf.shape(probs)[0], 1]),
            features.CLASSIFY_SCORES_OUTPUT: probs}

  return {features.SERVING_DEFAULT: serve_pixels.get_concrete_function(),
          features.SERVING_TF_EXAMPLE: serve_tf_examples.get_concrete_function()}


def mark_classify_signature(export_dir: str, signature_name: str) -> None:
  """Sets TF Serving's classify method name, which tf.saved_model.save cannot express."""
  path = Path(export_dir) / SAVED_MODEL_FILE
  saved_model = saved_model_pb2.SavedModel.FromString(path.read_bytes())
  for meta_graph in saved_model.meta_graphs:
    meta_graph.signature_def[signature_name].method_name = features.CLASSIFY_METHOD_NAME
  path.write_bytes(saved_model.SerializeToString())


def export_serving_model(model: keras.Model, cfg: TrainingConfig,
                         tf_transform_output: tft.TFTransformOutput, export_dir: str,
                         warmup_images: Optional[np.ndarray] = None,
                         model_name: str = 'mnist') -> None:
  """`cfg` is the config the model was built from, recorded for warm starts;
  `warmup_images` (raw uint8 [n, 28, 28]) become TF Serving's warm-up requests."""
  tf.saved_model.save(model, export_dir, signatures=_signatures(model, tf_transform_output))
  if warmup_images is not None and len(warmup_images):
    warmup_requests.write_warmup_file(Path(export_dir), warmup_images, model_name)
  mark_classify_signature(export_dir, features.SERVING_TF_EXAMPLE)
  warm_start.write(model, cfg, export_dir)
