"""Readable logs for the project's commands: progress lines and real warnings, not noise.

TensorFlow's C++ start-up chatter and TFX's INFO dumps (configs, protos, artifact lists)
hide the few lines a user wants: which component runs, how long it took, each epoch.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings

# Set before TensorFlow is imported; Beam workers inherit them through the environment.
QUIET_ENV = {
    'TF_CPP_MIN_LOG_LEVEL': '3',       # C++ INFO/WARNING/ERROR: TensorRT, oneDNN, CUDA probes
    'TF_USE_LEGACY_KERAS': '1',        # tf.keras is tf_keras, as TFX 1.16 expects
    'GRPC_VERBOSITY': 'ERROR',
    'PYTHONWARNINGS': 'ignore::DeprecationWarning,ignore::FutureWarning',
}
# INFO lines worth keeping: per-component progress and the project's own messages.
KEEP_INFO = re.compile(r'^(Component \S+ is (running|finished)|A cached execution|'
                       r'MNIST ExampleGen|Trainer:|'
                       r'Epoch \d+/\d+|\d+/\d+ - )')  # Keras's per-epoch lines
NOISY_LOGGERS = ('apache_beam', 'tensorflow', 'tfx', 'ml_metadata', 'tensorflow_transform',
                 'tensorflow_model_analysis', 'tensorflow_data_validation', 'h5py', 'root')
KNOWN_NOISY_WARNINGS = (
    r'.*is deprecated.*', r'.*Tensorflow version .* is not supported.*',
    r'.*Please use .* instead.*', r'.*apply_shuffle_transform.*',
    r'.*Beam worker.*', r'.*Skipping import of.*', r'ArtifactQuery.property_predicate',
    r'.*does not have payload_format custom property',
    r'(Worker: .*)?(No semi_persistent_directory|Discarding unparseable args)',
    r".*Couldn't find python-snappy",
)


class _ProgressFilter(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return not any(re.match(p, record.getMessage(), re.S) for p in KNOWN_NOISY_WARNINGS)
    return bool(KEEP_INFO.match(record.getMessage()))


def _ignore_tf_teardown_errors(unraisable) -> None:
  """TF's AtomicFunction.__del__ raises harmlessly while objects are collected."""
  if 'AtomicFunction.__del__' not in repr(unraisable.object):
    sys.__unraisablehook__(unraisable)


def quiet() -> None:
  """Call first thing in a command, before TensorFlow or TFX is imported."""
  for key, value in QUIET_ENV.items():
    os.environ.setdefault(key, value)
  sys.unraisablehook = _ignore_tf_teardown_errors
  warnings.filterwarnings('ignore', category=DeprecationWarning)
  warnings.filterwarnings('ignore', category=FutureWarning)
  warnings.filterwarnings('ignore', category=UserWarning, module='tensorflow_transform')


def show_progress() -> None:
  """After TFX is imported: INFO from TFX passes the filter, so progress lines show."""
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  absl_logging.set_verbosity(absl_logging.INFO)
  logging.basicConfig(format='%(asctime)s %(message)s', datefmt='%H:%M:%S', force=True)
  for name in ('', 'tensorflow'):  # TensorFlow's logger has a handler of its own
    for handler in logging.getLogger(name).handlers:
      handler.addFilter(_ProgressFilter())
