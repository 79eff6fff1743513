"""The reference for the Trainer's overhead: the same model, config and epochs as the
pipeline's Trainer, as a bare `model.fit` on in-memory numpy arrays already normalized.

  python -m benchmarks.bare_fit [config flags, e.g. --preset quick]
Prints `bare_fit_seconds <s>` (model build, compile and fit; not imports or file reading).
"""

from __future__ import annotations

import argparse
import time

from trainer import logs

if __name__ == '__main__':  # the program itself, before TensorFlow is imported below
  logs.quiet()

import numpy as np  # pylint: disable=g-import-not-at-top

from components.mnist_example_gen import executor  # pylint: disable=g-import-not-at-top
from pipeline import configs  # pylint: disable=g-import-not-at-top
from trainer import features, run  # pylint: disable=g-import-not-at-top


def normalized(images: np.ndarray) -> np.ndarray:
  return (images[..., None] / float(features.PIXEL_MAX)).astype(np.float32)


def main() -> None:
  parser = argparse.ArgumentParser()
  configs.add_arguments(parser)
  config = configs.load(parser.parse_args())
  splits = executor.load_splits(config.data_dir, config.eval_size, config.limit_train,
                                config.limit_test, 0)
  train, evaluation = splits[features.TRAIN_SPLIT], splits[features.EVAL_SPLIT]
  x, y = normalized(train.images), np.eye(features.NUM_CLASSES, dtype=np.float32)[train.labels]
  xe = normalized(evaluation.images)
  ye = np.eye(features.NUM_CLASSES, dtype=np.float32)[evaluation.labels]
  cfg = config.training
  start = time.perf_counter()
  strategy = run.distribution.configure(cfg)
  with strategy.scope():
    net = run.compile_model(cfg, steps_per_epoch=int(np.ceil(len(y) / cfg.batch_size)))
  net.fit(x, y, batch_size=cfg.batch_size, epochs=cfg.epochs, validation_data=(xe, ye),
          shuffle=True, verbose=2)
  print(f'bare_fit_seconds {time.perf_counter() - start:.1f}', flush=True)


if __name__ == '__main__':
  main()
