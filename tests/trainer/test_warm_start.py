"""Warm starts: the export carries the weights, a warm run fine-tunes exactly those, and
every case that cannot warm start trains from scratch with a warning instead of failing.

One served base path for the module, exported as the Trainer exports: version 1 an mlp,
version 2 (the newest, the one served) a cnn, both trained briefly on 256 MNIST images.
"""

import dataclasses
import json
import logging
import math
import shutil

import h5py
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from tests import model_factory
from trainer import export, features, idx, model, run, schedules, warm_start
from trainer.hparams import TrainingConfig

NUM_IMAGES = 256
TINY = TrainingConfig(epochs=1, batch_size=64, augment=False, label_smoothing=0.0,
                      lr_schedule='constant')
STEPS_PER_EPOCH = math.ceil(NUM_IMAGES / TINY.batch_size)
CNN = dataclasses.replace(TINY, architecture='cnn')
MLP = dataclasses.replace(TINY, architecture='mlp')


@pytest.fixture(scope='module')
def mnist(mnist_dir):
  return idx.load_source(mnist_dir, 'train', limit=NUM_IMAGES)


@pytest.fixture(scope='module')
def arrays(mnist, tmp_path_factory):
  transform_dir = tmp_path_factory.mktemp('transform')
  return model_factory.transform(mnist.images, mnist.labels, transform_dir), transform_dir


@pytest.fixture(scope='module')
def served(arrays, tmp_path_factory):
  """(base path, the served cnn's Keras model): versions 1 (mlp) and 2 (cnn)."""
  train_arrays, transform_dir = arrays
  base = tmp_path_factory.mktemp('serving') / 'mnist'
  nets = {}
  for version, cfg in ((1, MLP), (2, CNN)):
    nets[version] = run.train(cfg, train_arrays, train_arrays,
                              str(tmp_path_factory.mktemp('logs')))
    export.export_serving_model(nets[version], cfg, tft.TFTransformOutput(str(transform_dir)),
                                str(base / str(version)))
  return base, nets[2]


def _max_difference(net_a, net_b) -> float:
  return max(float(np.max(np.abs(a.numpy() - b.numpy())))
             for a, b in zip(net_a.trainable_weights, net_b.trainable_weights))


def test_export_writes_the_weights_alone_and_the_network(served):
  base, cnn = served
  extra = base / '2' / warm_start.ASSETS_EXTRA_DIR
  assert json.loads((extra / warm_start.ARCHITECTURE_FILE).read_text()) == (
      model.architecture(CNN))
  assert json.loads((base / '1' / warm_start.ASSETS_EXTRA_DIR /
                     warm_start.ARCHITECTURE_FILE).read_text())['architecture'] == 'mlp'
  with h5py.File(extra / warm_start.WEIGHTS_FILE, 'r') as f:
    assert set(f) == {'layers', 'vars'}, 'no optimizer state, no metrics'
  loaded = model.build_model(CNN)
  loaded.load_weights(str(extra / warm_start.WEIGHTS_FILE))
  for a, b in zip(loaded.get_weights(), cnn.get_weights(), strict=True):
    np.testing.assert_array_equal(a, b)


def test_warm_start_loads_the_newest_version_exactly(served, mnist, arrays, caplog):
  base, _ = served
  caplog.set_level(logging.INFO, logger='absl')
  weights = warm_start.served_weights(dataclasses.replace(CNN, warm_start=True), str(base))
  assert 'Trainer: warm start from version 2' in caplog.text
  warm = model.build_model(CNN)
  warm.set_weights(weights)
  # Before any training, the warm model predicts what the served SavedModel answers.
  images = mnist.images[:64]
  served_model = tf.saved_model.load(str(base / '2'))
  expected = served_model.signatures[features.SERVING_DEFAULT](
      **{features.PIXELS_INPUT: tf.constant(images, tf.float32)})
  np.testing.assert_allclose(warm(arrays[0].images[:64], training=False).numpy(),
                             expected[features.PROBABILITIES_OUTPUT].numpy(),
                             rtol=1e-5, atol=1e-6)


def test_warm_run_fine_tunes_for_the_warm_epochs_at_the_warm_rate(served, arrays, tmp_path,
                                                                  caplog):
  base, cnn = served
  caplog.set_level(logging.INFO, logger='absl')
  cfg = dataclasses.replace(CNN, epochs=5, warm_start=True, warm_start_epochs=2,
                            warm_start_learning_rate=1e-6)
  tuned = run.train_or_warm_start(cfg, arrays[0], arrays[0], str(tmp_path), str(base))
  assert 'warm start from version 2' in caplog.text
  assert tuned.history.epoch == [0, 1]
  steps = 2 * STEPS_PER_EPOCH
  assert int(tuned.optimizer.iterations) == steps
  schedule = keras.optimizers.schedules.deserialize(
      tuned.optimizer.get_config()['learning_rate'])
  assert float(schedule(0)) == pytest.approx(1e-6)            # cosine, no warm-up
  assert float(schedule(steps // 2)) == pytest.approx(0.5e-6, rel=1e-3)
  assert float(schedule(steps)) == pytest.approx(0.0, abs=1e-12)
  # It started from the served weights: at this rate 8 steps move them very little.
  assert 0 < _max_difference(tuned, cnn) < 1e-4


def test_without_a_served_model_warm_start_trains_cold_and_warns(arrays, tmp_path, caplog):
  cfg = dataclasses.replace(CNN, warm_start=True, warm_start_epochs=2)
  net = run.train_or_warm_start(cfg, arrays[0], arrays[0], str(tmp_path / 'logs'),
                                str(tmp_path / 'serving' / 'mnist'))
  assert 'training from scratch' in caplog.text
  assert 'no complete model version' in caplog.text
  assert net.history.epoch == [0]
  assert schedules.current_learning_rate(net.optimizer) == pytest.approx(CNN.learning_rate)


def test_another_served_architecture_trains_cold_and_warns(served, arrays, tmp_path, caplog):
  base, _ = served
  cfg = dataclasses.replace(MLP, warm_start=True, warm_start_epochs=2)
  net = run.train_or_warm_start(cfg, arrays[0], arrays[0], str(tmp_path), str(base))
  assert "version 2 is another network: architecture 'cnn' served, 'mlp' here" in caplog.text
  assert 'training from scratch' in caplog.text
  assert net.history.epoch == [0]
  assert schedules.current_learning_rate(net.optimizer) == pytest.approx(MLP.learning_rate)


def test_warm_start_off_ignores_the_served_model(served, arrays, tmp_path, caplog):
  base, cnn = served
  caplog.set_level(logging.INFO, logger='absl')
  net = run.train_or_warm_start(dataclasses.replace(CNN, warm_start_epochs=2), arrays[0],
                                arrays[0], str(tmp_path), str(base))
  assert 'warm start' not in caplog.text
  assert net.history.epoch == [0]
  assert schedules.current_learning_rate(net.optimizer) == pytest.approx(CNN.learning_rate)
  # Today's training: the served cnn came from `run.train` with this config and seed.
  assert _max_difference(net, cnn) < 1e-5


def test_a_version_exported_before_warm_starts_trains_cold(served, tmp_path, caplog):
  base, _ = served
  copy = tmp_path / 'mnist'
  shutil.copytree(base, copy)
  shutil.copytree(base / '2', copy / '3',
                  ignore=shutil.ignore_patterns(warm_start.ASSETS_EXTRA_DIR))
  assert warm_start.served_weights(dataclasses.replace(CNN, warm_start=True), str(copy)) is None
  assert 'version 3 has no assets.extra/keras.weights.h5' in caplog.text


def test_no_served_model_dir_or_an_unreadable_version_trains_cold(served, tmp_path, caplog):
  base, _ = served
  cfg = dataclasses.replace(CNN, warm_start=True)
  assert warm_start.served_weights(cfg, None) is None
  assert 'given no served model directory' in caplog.text
  copy = tmp_path / 'mnist'
  shutil.copytree(base, copy)
  (copy / '2' / warm_start.ASSETS_EXTRA_DIR / warm_start.ARCHITECTURE_FILE).write_text('{cnn')
  assert warm_start.served_weights(cfg, str(copy)) is None
  assert f'cannot read the served model under {copy}' in caplog.text


def test_a_uri_base_path_is_read_through_gfile(served):
  base, cnn = served
  uri = f'file://{base}'
  assert warm_start.newest_version(uri) == f'{uri}/2'
  assert warm_start.newest_version(f'file://{base.parent}/absent') is None
  weights = warm_start.served_weights(CNN, uri)
  for a, b in zip(weights, cnn.get_weights(), strict=True):
    np.testing.assert_array_equal(a, b)


def test_fine_tuning_config_and_validation():
  cfg = TrainingConfig(epochs=24, learning_rate=3e-3, lr_schedule='onecycle',
                       warm_start_epochs=3, warm_start_learning_rate=3e-4)
  tuned = cfg.fine_tuning()
  assert (tuned.epochs, tuned.learning_rate, tuned.lr_schedule, tuned.warmup_epochs) == (
      3, 3e-4, 'cosine', 0.0)
  assert dataclasses.replace(tuned, epochs=24, learning_rate=3e-3, lr_schedule='onecycle',
                             warmup_epochs=cfg.warmup_epochs) == cfg
  with pytest.raises(ValueError, match='warm_start_epochs'):
    TrainingConfig(warm_start_epochs=0)
  for rate in (0.0, -1e-4, float('nan')):
    with pytest.raises(ValueError, match='warm_start_learning_rate'):
      TrainingConfig(warm_start_learning_rate=rate)
