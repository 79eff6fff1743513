"""The MNIST ExampleGen component: TFX's file-based ExampleGen with an IDX executor.

It stays a `FileBasedExampleGen` so that TFX's file-based driver fingerprints the input
files (a changed file invalidates the cache) and Kubeflow's v2 compiler treats it as one.
"""

from __future__ import annotations

from typing import Union

from tfx import types
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.orchestration import data_types
from tfx.proto import example_gen_pb2
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter

from components.mnist_example_gen import executor
from trainer import data_layout, features


CODE_FINGERPRINT_KEY = 'code_fingerprint'


class MnistExampleGenSpec(standard_component_specs.FileBasedExampleGenSpec):
  PARAMETERS = {
      **standard_component_specs.FileBasedExampleGenSpec.PARAMETERS,
      executor.EVAL_SIZE_KEY: ExecutionParameter(type=int),
      executor.LIMIT_TRAIN_KEY: ExecutionParameter(type=int),
      executor.LIMIT_TEST_KEY: ExecutionParameter(type=int),
      executor.SPLIT_SEED_KEY: ExecutionParameter(type=int),
      executor.SPAN_WINDOW_KEY: ExecutionParameter(type=int),
      executor.HOLDOUT_FRACTION_KEY: ExecutionParameter(type=float),
      # The reading code's hash: a changed reader is new input, not a cache hit.
      CODE_FINGERPRINT_KEY: ExecutionParameter(type=str, optional=True),
  }


def input_config() -> example_gen_pb2.Input:
  """Which files feed which split. TFX's driver fingerprints each pattern's files, so a
  newly sealed span (its manifest is written last) is new input and re-runs ExampleGen;
  a span being written has no manifest yet and changes nothing."""
  train_glob, test_glob = 'train-*', 't10k-*'  # see idx.SOURCE_FILES
  manifests = f'{data_layout.SPANS_DIR}/*/{data_layout.MANIFEST_FILE}'
  return example_gen_pb2.Input(splits=[
      example_gen_pb2.Input.Split(name=features.TRAIN_SPLIT, pattern=train_glob),
      example_gen_pb2.Input.Split(name=features.EVAL_SPLIT, pattern=train_glob),
      example_gen_pb2.Input.Split(name=features.TEST_SPLIT, pattern=test_glob),
      example_gen_pb2.Input.Split(name=features.HOLDOUT_SPLIT, pattern=manifests),
  ])


class MnistExampleGen(FileBasedExampleGen):
  """Writes `image` (784 int64 pixels, 0-255), `label` and `span` (int64) in
  train/eval/test/holdout, from the base files and a window of sealed spans. `data_dir`
  may be a RuntimeParameter (str): TFX's file-based ExampleGen takes its `input_base`
  as one, and Kubeflow then binds it per run."""

  SPEC_CLASS = MnistExampleGenSpec
  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

  def __init__(self, data_dir: Union[str, data_types.RuntimeParameter], eval_size: int = 5000,
               limit_train: int = 0, limit_test: int = 0, split_seed: int = 0,
               span_window: int = 0, holdout_fraction: float = 0.1, code_fingerprint: str = ''):
    spec = MnistExampleGenSpec(
        input_base=data_dir,
        input_config=input_config(),
        output_config=example_gen_pb2.Output(),
        output_data_format=example_gen_pb2.FORMAT_TF_EXAMPLE,
        output_file_format=example_gen_pb2.FORMAT_TFRECORDS_GZIP,
        eval_size=eval_size,
        limit_train=limit_train,
        limit_test=limit_test,
        split_seed=split_seed,
        span_window=span_window,
        holdout_fraction=holdout_fraction,
        code_fingerprint=code_fingerprint,
        examples=types.Channel(type=standard_artifacts.Examples))
    base_beam_component.BaseBeamComponent.__init__(self, spec=spec)
