"""Warm start: fine-tune the weights of the served model instead of training from scratch.

The export writes, beside the SavedModel, the Keras weights and the network they belong to
(`assets.extra/`: TF Serving ignores that folder, the Pusher copies it with the version).
A warm run reads both back from the newest complete version under the model's serving
base path (a local path or a URI such as gs://, the string TF Serving reads). When nothing
is served yet, or the served network is another one, it trains from scratch and says why:
a warm start never fails a run.
"""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
from pathlib import Path
from typing import List, Optional

from absl import logging
import numpy as np
import tensorflow as tf
import tf_keras as keras

from trainer import model, serving_layout
from trainer.hparams import TrainingConfig

ASSETS_EXTRA_DIR = 'assets.extra'       # TF Serving ignores it; it travels with the version
WEIGHTS_FILE = 'keras.weights.h5'       # the suffix selects tf_keras's weights-only format
ARCHITECTURE_FILE = 'architecture.json'  # model.architecture() of the exported network


def write(net: keras.Model, cfg: TrainingConfig, export_dir: str) -> None:
  """Writes the trained weights and `model.architecture(cfg)` into `<export_dir>/assets.extra/`."""
  folder = Path(export_dir) / ASSETS_EXTRA_DIR
  folder.mkdir(parents=True, exist_ok=True)
  # Saved through an uncompiled view of the same layers, so the file holds the weights
  # alone: not the optimizer's moments (twice the weights' size) nor its step count.
  keras.Model(net.inputs, net.outputs).save_weights(str(folder / WEIGHTS_FILE))
  (folder / ARCHITECTURE_FILE).write_text(
      json.dumps(model.architecture(cfg), indent=2, sort_keys=True) + '\n')


def newest_version(base: str) -> Optional[str]:
  """The version a model server serves (serving_layout's rule), read through tf.io.gfile
  so that gs:// works too."""
  def listdir(path: str) -> List[str]:
    try:
      return tf.io.gfile.listdir(path)
    except tf.errors.NotFoundError as e:
      raise FileNotFoundError(path) from e
  versions = serving_layout.versions(base, listdir, tf.io.gfile.exists)
  return versions[max(versions)] if versions else None


def _load_weights(cfg: TrainingConfig, weights_file: str) -> List[np.ndarray]:
  """Copied to a local temp file first: h5py reads local files only."""
  with tempfile.TemporaryDirectory() as tmp:
    local = os.path.join(tmp, WEIGHTS_FILE)
    tf.io.gfile.copy(weights_file, local)
    net = model.build_model(cfg)
    net.load_weights(local)
    return net.get_weights()


def _cold(reason: str) -> None:
  logging.warning('Trainer: warm start asked for, training from scratch instead: %s', reason)


def served_weights(cfg: TrainingConfig, served_model_dir: Optional[str]
                   ) -> Optional[List[np.ndarray]]:
  """The newest served version's weights when `cfg` builds the same network, else None
  after a warning saying why (the run then trains from scratch)."""
  if not served_model_dir:
    return _cold('the Trainer was given no served model directory')
  try:
    version = newest_version(served_model_dir)
    if version is None:
      return _cold(f'no complete model version under {served_model_dir} (first run?)')
    name = posixpath.basename(version)
    extra = posixpath.join(version, ASSETS_EXTRA_DIR)
    weights_file = posixpath.join(extra, WEIGHTS_FILE)
    if not tf.io.gfile.exists(weights_file):
      return _cold(f'version {name} has no {ASSETS_EXTRA_DIR}/{WEIGHTS_FILE} '
                   f'(exported before warm starts existed)')
    with tf.io.gfile.GFile(posixpath.join(extra, ARCHITECTURE_FILE)) as f:
      served = json.load(f)
    wanted = model.architecture(cfg)
    if served != wanted:
      differences = ', '.join(f'{key} {served.get(key)!r} served, {wanted.get(key)!r} here'
                              for key in sorted(served.keys() | wanted.keys())
                              if served.get(key) != wanted.get(key))
      return _cold(f'version {name} is another network: {differences}')
    weights = _load_weights(cfg, weights_file)
  except (OSError, ValueError, tf.errors.OpError) as e:
    return _cold(f'cannot read the served model under {served_model_dir}: {e}')
  logging.info('Trainer: warm start from version %s (%s, %s), %d epochs at learning rate %g',
               name, version, cfg.architecture, cfg.warm_start_epochs,
               cfg.warm_start_learning_rate)
  return weights
