"""A short real training on a slice, exported exactly as the Trainer exports it."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from trainer import idx
from components.mnist_example_gen.encoding import to_example
from trainer.hparams import TrainingConfig
from tests import model_factory
from trainer import features


@pytest.fixture(scope='module')
def exported(mnist_dir, tmp_path_factory):
  train = idx.load_source(mnist_dir, 'train', limit=5000)
  path = model_factory.build_serving_model(
      tmp_path_factory.mktemp('model') / '1', train.images, train.labels,
      TrainingConfig(epochs=1, augment=False, label_smoothing=0.0))
  return path, tf.saved_model.load(str(path)), idx.load_source(mnist_dir, 'test', limit=1000)


def test_one_epoch_on_5000_images_is_sane(exported):
  _, model, test = exported
  out = model.signatures[features.SERVING_DEFAULT](
      **{features.PIXELS_INPUT: tf.constant(test.images, tf.float32)})
  accuracy = float(np.mean(out[features.CLASSES_OUTPUT].numpy() == test.labels))
  assert accuracy > 0.90, f'test accuracy {accuracy:.3f} after one epoch on 5,000 images'
  probs = out[features.PROBABILITIES_OUTPUT].numpy()
  assert probs.shape == (1000, 10)
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_serving_is_deterministic_and_both_signatures_agree(exported):
  _, model, test = exported
  pixels = tf.constant(test.images[:32], tf.float32)
  serve = model.signatures[features.SERVING_DEFAULT]
  first = serve(**{features.PIXELS_INPUT: pixels})[features.PROBABILITIES_OUTPUT].numpy()
  second = serve(**{features.PIXELS_INPUT: pixels})[features.PROBABILITIES_OUTPUT].numpy()
  np.testing.assert_array_equal(first, second)
  examples = tf.constant([to_example(i, l) for i, l in zip(test.images[:32], test.labels[:32])])
  classify = model.signatures[features.SERVING_TF_EXAMPLE](
      **{features.EXAMPLES_INPUT: examples})
  np.testing.assert_allclose(classify[features.CLASSIFY_SCORES_OUTPUT].numpy(), first,
                             rtol=1e-5, atol=1e-6)
  assert classify[features.CLASSIFY_CLASSES_OUTPUT].numpy()[0].tolist() == [
      str(i).encode() for i in range(10)]


def test_out_of_range_pixels_are_clipped_like_0_to_255(exported):
  _, model, test = exported
  serve = model.signatures[features.SERVING_DEFAULT]
  image = test.images[:1].astype(np.float32)
  pushed = image.copy()
  pushed[image == 0] = -40.0
  pushed[image == 255] = 900.0
  np.testing.assert_allclose(serve(image=tf.constant(pushed))['probabilities'],
                             serve(image=tf.constant(image))['probabilities'], rtol=1e-6)


def test_tf_example_signature_is_a_classify_signature(exported):
  path, _, _ = exported
  saved = saved_model_pb2.SavedModel.FromString((path / 'saved_model.pb').read_bytes())
  signatures = saved.meta_graphs[0].signature_def
  assert signatures[features.SERVING_TF_EXAMPLE].method_name == 'tensorflow/serving/classify'
  assert signatures[features.SERVING_DEFAULT].method_name == 'tensorflow/serving/predict'
  assert set(signatures[features.SERVING_DEFAULT].outputs) == {'probabilities', 'classes'}
