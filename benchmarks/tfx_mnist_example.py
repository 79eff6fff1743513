"""Runs TFX's bundled MNIST example (tfx/examples/mnist, native Keras) on our MNIST files.

The baseline for benchmarks/pipeline_bench.py. The example ships inside the tfx wheel; it
expects TFRecords of `image_floats` (784 floats in [-0.5, 0.5]) and `image_class` (int),
which this script writes from the same IDX files, then runs the example's own
`_create_pipeline` with LocalDagRunner, with the example's own Beam settings (multi-process,
one worker per core) or, with --our-beam-settings, our pipeline's.

  python -m benchmarks.tfx_mnist_example --work-dir DIR [--data-dir DIR] [--prepare-only]
      [--our-beam-settings]
(--prepare-only writes the TFRecords and stops, so a benchmark can time the run alone.)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from trainer import logs

if __name__ == '__main__':  # the program itself, before TensorFlow is imported below
  logs.quiet()

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top
from tfx import v1 as tfx  # pylint: disable=g-import-not-at-top
from tfx.examples.mnist import mnist_pipeline_native_keras as example  # pylint: disable=g-import-not-at-top

from trainer import idx  # pylint: disable=g-import-not-at-top
from pipeline import configs  # pylint: disable=g-import-not-at-top

PIPELINE_NAME = 'tfx_mnist_example'


def write_example_records(data_dir: Path, out_file: Path) -> int:
  """All 70,000 images as the example's tf.Examples; its ExampleGen splits them 2:1."""
  out_file.parent.mkdir(parents=True, exist_ok=True)
  count = 0
  with tf.io.TFRecordWriter(str(out_file)) as writer:
    for source in ('train', 'test'):
      data = idx.load_source(data_dir, source)
      floats = data.images.reshape(len(data.labels), -1).astype(np.float32) / 255.0 - 0.5
      for image, label in zip(floats, data.labels):
        writer.write(tf.train.Example(features=tf.train.Features(feature={
            'image_floats': tf.train.Feature(float_list=tf.train.FloatList(value=image)),
            'image_class': tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        })).SerializeToString())
        count += 1
  return count


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--work-dir', type=Path, required=True)
  parser.add_argument('--data-dir', type=Path, default=configs.default_data_dir())
  parser.add_argument('--prepare-only', action='store_true')
  parser.add_argument('--our-beam-settings', action='store_true')
  args = parser.parse_args()
  work = args.work_dir.absolute()
  data_root = work / 'data'
  if not data_root.exists():
    write_example_records(args.data_dir, data_root / 'mnist.tfrecord')
  if args.prepare_only:
    return
  logs.show_progress()
  pipeline = example._create_pipeline(  # pylint: disable=protected-access
      pipeline_name=PIPELINE_NAME,
      pipeline_root=str(work / 'pipeline_root'),
      data_root=str(data_root),
      module_file=os.path.join(os.path.dirname(example.__file__),
                               'mnist_utils_native_keras.py'),
      serving_model_dir=str(work / 'serving'),
      metadata_path=str(work / 'metadata.db'),
      beam_pipeline_args=(configs.load(environ={}).beam_pipeline_args()
                          if args.our_beam_settings
                          else example._beam_pipeline_args))  # pylint: disable=protected-access
  tfx.orchestration.LocalDagRunner().run(pipeline)


if __name__ == '__main__':
  main()
