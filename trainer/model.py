"""Keras model builders: `cnn` (default) and `mlp` (the textbook network)."""

from __future__ import annotations

import tf_keras as keras

from trainer.hparams import TrainingConfig
from trainer import features

INPUT_SHAPE = (features.IMAGE_HEIGHT, features.IMAGE_WIDTH, 1)
CNN_FILTERS = (32, 64)   # two conv blocks per stage, a 2x2 max-pool after each stage
CNN_DENSE_UNITS = 128
MLP_UNITS = (512, 256)
# Faster-moving statistics than Keras's 0.99: with 0.9 or more, the initial moving
# variance still dominates after one short epoch and eval accuracy collapses (measured).
BN_MOMENTUM = 0.8
AUGMENT_ROTATION = 10 / 360   # fraction of a full turn: +-10 degrees
AUGMENT_ZOOM = 0.1
AUGMENT_SHIFT = 0.1           # fraction of the side: +-2.8 pixels


def _dense_or_conv(x, layer: keras.layers.Layer, batch_norm: bool):
  """Layer (bias-free under batch norm), then batch norm, then ReLU."""
  x = layer(x)
  if batch_norm:
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
  return keras.layers.ReLU()(x)


def _cnn_body(x, cfg: TrainingConfig):
  for filters in CNN_FILTERS:
    for _ in range(2):
      x = _dense_or_conv(x, keras.layers.Conv2D(filters, 3, padding='same',
                                                use_bias=not cfg.batch_norm), cfg.batch_norm)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Dropout(cfg.dropout)(x)
  x = keras.layers.Flatten()(x)
  x = _dense_or_conv(x, keras.layers.Dense(CNN_DENSE_UNITS, use_bias=not cfg.batch_norm),
                     cfg.batch_norm)
  return keras.layers.Dropout(cfg.dropout)(x)


def _mlp_body(x, cfg: TrainingConfig):
  x = keras.layers.Flatten()(x)
  for units in MLP_UNITS:
    x = _dense_or_conv(x, keras.layers.Dense(units, use_bias=not cfg.batch_norm),
                       cfg.batch_norm)
    x = keras.layers.Dropout(cfg.dropout)(x)
  return x


def augmentation(seed: int) -> keras.Sequential:
  """Small random shifts, rotations and zooms. Keras runs these layers only in training,
  so the exported signatures (inference mode) are untouched by them."""
  return keras.Sequential([
      keras.layers.RandomRotation(AUGMENT_ROTATION, fill_mode='constant', seed=seed),
      keras.layers.RandomZoom(AUGMENT_ZOOM, fill_mode='constant', seed=seed),
      keras.layers.RandomTranslation(AUGMENT_SHIFT, AUGMENT_SHIFT, fill_mode='constant',
                                     seed=seed),
  ], name='augmentation')


def build_model(cfg: TrainingConfig) -> keras.Model:
  """An uncompiled model from normalized images [None, 28, 28, 1] to class probabilities."""
  inputs = keras.Input(shape=INPUT_SHAPE, name=features.IMAGE_KEY)
  x = augmentation(cfg.seed)(inputs) if cfg.augment else inputs
  body = {'cnn': _cnn_body, 'mlp': _mlp_body}[cfg.architecture]
  x = body(x, cfg)
  # float32 output even under mixed precision, so probabilities stay well-formed.
  outputs = keras.layers.Dense(features.NUM_CLASSES, activation='softmax', dtype='float32',
                               name=features.PROBABILITIES_OUTPUT)(x)
  return keras.Model(inputs, outputs, name=f'mnist_{cfg.architecture}')


def architecture(cfg: TrainingConfig) -> dict:
  """The network a config builds, as JSON values: what the shapes of its weights depend on
  (layer widths are code, so they count too) and its dropout. A warm start loads served
  weights only into the same network."""
  if cfg.architecture == 'cnn':
    widths = {'cnn_filters': list(CNN_FILTERS), 'cnn_dense_units': CNN_DENSE_UNITS}
  else:
    widths = {'mlp_units': list(MLP_UNITS)}
  return {'architecture': cfg.architecture, 'batch_norm': cfg.batch_norm,
          'dropout': cfg.dropout, **widths}
