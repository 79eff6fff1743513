"""Beam executor: MNIST IDX files -> gzip'd TFRecords of tf.Examples in three splits."""

from __future__ import annotations

import functools
import json
from typing import Any, Dict, List, Tuple

from absl import logging
import apache_beam as beam
import numpy as np
from tfx import types
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.types import artifact_utils, standard_component_specs

from trainer import idx
from components.mnist_example_gen import encoding
from trainer import features

EVAL_SIZE_KEY = 'eval_size'
LIMIT_TRAIN_KEY = 'limit_train'
LIMIT_TEST_KEY = 'limit_test'
SPLIT_SEED_KEY = 'split_seed'
SPLIT_COUNTS_PROPERTY = 'split_counts'
CHUNK_SIZE = 5000  # rows per Beam element; small enough to spread over workers


@functools.lru_cache(maxsize=2)
def load_splits(data_dir: str, eval_size: int, limit_train: int, limit_test: int,
                seed: int) -> Dict[str, idx.LabeledImages]:
  """Validates the files and carves train/eval/test. Cached: each worker reads once."""
  train = idx.load_source(data_dir, 'train', limit_train)
  test = idx.load_source(data_dir, 'test', limit_test)
  held_out = np.zeros(len(train.labels), dtype=bool)
  held_out[idx.eval_indices(len(train.labels), eval_size, seed)] = True
  return {
      features.TRAIN_SPLIT: idx.LabeledImages(train.images[~held_out], train.labels[~held_out]),
      features.EVAL_SPLIT: idx.LabeledImages(train.images[held_out], train.labels[held_out]),
      features.TEST_SPLIT: test,
  }


def _chunk_to_examples(chunk: Tuple[str, int, int], split_args: Tuple) -> List[bytes]:
  split, start, end = chunk
  data = load_splits(*split_args)[split]
  return encoding.to_examples(data.images[start:end], data.labels[start:end])


def _split_args(exec_properties: Dict[str, Any]) -> Tuple:
  return (exec_properties[standard_component_specs.INPUT_BASE_KEY],
          int(exec_properties[EVAL_SIZE_KEY]), int(exec_properties[LIMIT_TRAIN_KEY]),
          int(exec_properties[LIMIT_TEST_KEY]), int(exec_properties[SPLIT_SEED_KEY]))


class Executor(BaseExampleGenExecutor):
  """Reads the IDX files once up front (failing fast on bad data), then writes in Beam."""

  def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
    raise NotImplementedError('MNIST splits are built in GenerateExamplesByBeam')

  def GenerateExamplesByBeam(self, pipeline: beam.Pipeline,
                             exec_properties: Dict[str, Any]) -> Dict[str, beam.PCollection]:
    split_args = _split_args(exec_properties)
    splits = load_splits(*split_args)  # raises IdxError before any Beam work
    self._split_counts = {name: len(data.labels) for name, data in splits.items()}
    for name, count in self._split_counts.items():
      logging.info('MNIST ExampleGen: split %s has %d examples', name, count)
    result = {}
    for name in features.SPLITS:
      count = self._split_counts[name]
      chunks = [(name, start, min(start + CHUNK_SIZE, count))
                for start in range(0, count, CHUNK_SIZE)]
      result[name] = (pipeline
                      | f'Chunks[{name}]' >> beam.Create(chunks)
                      | f'ToExamples[{name}]' >> beam.FlatMap(_chunk_to_examples, split_args))
    return result

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    super().Do(input_dict, output_dict, exec_properties)
    examples = artifact_utils.get_single_instance(
        output_dict[standard_component_specs.EXAMPLES_KEY])
    examples.set_string_custom_property(SPLIT_COUNTS_PROPERTY, json.dumps(self._split_counts))
    for name, count in self._split_counts.items():
      examples.set_int_custom_property(f'num_examples_{name}', count)
