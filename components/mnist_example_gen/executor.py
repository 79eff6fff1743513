"""Beam executor: the base IDX files and a window of sealed spans -> gzip'd TFRecords of
tf.Examples in four splits.

`train` is the base training file less the seeded `eval` sample, plus every span in the
window less its own seeded holdout; `test` is the base test file; `holdout` gathers the
spans' holdouts. Every example carries its `span` (0 = base), so the Evaluator reports
each span's holdout as its own slice. The artifact records which spans it holds
(`span`: the newest, TFX's span property; `spans`: all of them) in ML Metadata.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Tuple

from absl import logging
import apache_beam as beam
import numpy as np
from tfx import types
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.types import artifact_utils, standard_component_specs

from components import spans as span_reader
from components.mnist_example_gen import encoding
from trainer import data_layout, features, idx

EVAL_SIZE_KEY = 'eval_size'
LIMIT_TRAIN_KEY = 'limit_train'
LIMIT_TEST_KEY = 'limit_test'
SPLIT_SEED_KEY = 'split_seed'
SPAN_WINDOW_KEY = 'span_window'
HOLDOUT_FRACTION_KEY = 'holdout_fraction'
SPLIT_COUNTS_PROPERTY = 'split_counts'
SPANS_PROPERTY = 'spans'              # JSON list of the spans read (the base is not listed)
SPAN_COUNTS_PROPERTY = 'span_counts'  # JSON {span: [train examples, holdout examples]}
CHUNK_SIZE = 5000  # rows per Beam element; small enough to spread over workers


class Split(NamedTuple):
  images: np.ndarray  # uint8 [n, 28, 28]
  labels: np.ndarray  # uint8 [n]
  spans: np.ndarray   # int64 [n]: 0 = base files, N = span N


def window(data_dir: str, span_window: int) -> Dict[int, Path]:
  """The sealed spans to read: all (`span_window` 0) or the newest `span_window`."""
  sealed = data_layout.sealed_spans(data_dir)
  numbers = sorted(sealed)[-span_window:] if span_window else sorted(sealed)
  return {n: sealed[n] for n in numbers}


def _holdout_mask(count: int, fraction: float, seed: int) -> np.ndarray:
  mask = np.zeros(count, dtype=bool)
  size = int(count * fraction)
  if size:
    mask[np.random.default_rng(seed).permutation(count)[:size]] = True
  return mask


def _join(parts: List[Split]) -> Split:
  return Split(*(np.concatenate(column) for column in zip(*parts)))


def _from(images: np.ndarray, labels: np.ndarray, span: int) -> Split:
  return Split(images, labels, np.full(len(labels), span, np.int64))


@functools.lru_cache(maxsize=2)
def load_splits(data_dir: str, eval_size: int, limit_train: int, limit_test: int,
                seed: int, span_window: int = 0, holdout_fraction: float = 0.1
                ) -> Dict[str, Split]:
  """Validates the files and carves the splits. Cached: each worker reads once."""
  train = idx.load_source(data_dir, 'train', limit_train)
  test = idx.load_source(data_dir, 'test', limit_test)
  held_out = np.zeros(len(train.labels), dtype=bool)
  held_out[idx.eval_indices(len(train.labels), eval_size, seed)] = True
  base = features.BASE_SPAN
  train_parts = [_from(train.images[~held_out], train.labels[~held_out], base)]
  holdout_parts = [_from(np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.uint8), base)]
  for number, folder in window(data_dir, span_window).items():
    images, labels = span_reader.read_span(folder)  # SpanError names any bad file
    mask = _holdout_mask(len(labels), holdout_fraction, seed + number)
    train_parts.append(_from(images[~mask], labels[~mask], number))
    holdout_parts.append(_from(images[mask], labels[mask], number))
  return {
      features.TRAIN_SPLIT: _join(train_parts),
      features.EVAL_SPLIT: _from(train.images[held_out], train.labels[held_out], base),
      features.TEST_SPLIT: _from(test.images, test.labels, base),
      features.HOLDOUT_SPLIT: _join(holdout_parts),
  }


def _chunk_to_examples(chunk: Tuple[str, int, int], split_args: Tuple) -> List[bytes]:
  split, start, end = chunk
  data = load_splits(*split_args)[split]
  return encoding.to_examples(data.images[start:end], data.labels[start:end],
                              data.spans[start:end])


def _split_args(exec_properties: Dict[str, Any]) -> Tuple:
  return (exec_properties[standard_component_specs.INPUT_BASE_KEY],
          int(exec_properties[EVAL_SIZE_KEY]), int(exec_properties[LIMIT_TRAIN_KEY]),
          int(exec_properties[LIMIT_TEST_KEY]), int(exec_properties[SPLIT_SEED_KEY]),
          int(exec_properties.get(SPAN_WINDOW_KEY) or 0),
          float(exec_properties.get(HOLDOUT_FRACTION_KEY) or 0.1))


class Executor(BaseExampleGenExecutor):
  """Reads the IDX files once up front (failing fast on bad data), then writes in Beam."""

  def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
    raise NotImplementedError('MNIST splits are built in GenerateExamplesByBeam')

  def GenerateExamplesByBeam(self, pipeline: beam.Pipeline,
                             exec_properties: Dict[str, Any]) -> Dict[str, beam.PCollection]:
    split_args = _split_args(exec_properties)
    load_splits.cache_clear()  # the same folder may hold new spans since the last execution
    splits = load_splits(*split_args)  # raises IdxError/SpanError before any Beam work
    self._split_counts = {name: len(data.labels) for name, data in splits.items()}
    self._span_counts = {
        int(n): [int(np.sum(splits[features.TRAIN_SPLIT].spans == n)),
                 int(np.sum(splits[features.HOLDOUT_SPLIT].spans == n))]
        for n in np.unique(np.concatenate([splits[features.TRAIN_SPLIT].spans,
                                           splits[features.HOLDOUT_SPLIT].spans]))
        if n != features.BASE_SPAN}
    for name, count in self._split_counts.items():
      logging.info('MNIST ExampleGen: split %s has %d examples', name, count)
    for number, (train, holdout) in self._span_counts.items():
      logging.info('MNIST ExampleGen: span %d: %d train, %d holdout', number, train, holdout)
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
    examples.set_string_custom_property(SPANS_PROPERTY, json.dumps(sorted(self._span_counts)))
    examples.set_string_custom_property(SPAN_COUNTS_PROPERTY, json.dumps(self._span_counts))
    examples.span = max(self._span_counts, default=features.BASE_SPAN)
    for name, count in self._split_counts.items():
      examples.set_int_custom_property(f'num_examples_{name}', count)
