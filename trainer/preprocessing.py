"""Transform's `preprocessing_fn`: the one pixel normalization, for training and serving.

The exported serving signatures apply this same graph (TFT's transform layer), so clients
send raw 0-255 pixels and can never normalize differently from training.
"""

from typing import Dict

import tensorflow as tf

from trainer import features


def preprocessing_fn(inputs: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
  image = tf.cast(inputs[features.IMAGE_KEY], tf.float32) / float(features.PIXEL_MAX)
  return {
      features.IMAGE_KEY: tf.reshape(
          image, [-1, features.IMAGE_HEIGHT, features.IMAGE_WIDTH, 1]),
      features.LABEL_KEY: tf.reshape(inputs[features.LABEL_KEY], [-1]),
  }
