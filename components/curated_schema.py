"""TFX's ImportSchemaGen for the curated schema kept in this repository.

Two gaps of the stock component are closed here, nothing else changes:

* Caching. ImportSchemaGen's only input is the file's path, so after an edit of the file
  ML Metadata would still hand out the old schema from the cache. The file's hash is an
  extra execution property: a changed schema is a new execution.
* Location. A schema inside the repository is recorded by its repo-relative path and
  read relative to the project root where the executor runs: the checkout locally, the
  image's copy (`/app`) in a Kubeflow pod, where the compile machine's path does not exist.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Dict, List

from tfx import types
from tfx.components.schema_gen.import_schema_gen import executor as import_executor
from tfx.components.schema_gen.import_schema_gen.component import ImportSchemaGen
from tfx.dsl.components.base import base_component, executor_spec
from tfx.dsl.io import fileio
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter

PROJECT_ROOT = Path(__file__).resolve().parent.parent
FINGERPRINT_KEY = 'schema_fingerprint'


class CuratedSchemaGenSpec(standard_component_specs.ImportSchemaGenSpec):
  PARAMETERS = {
      **standard_component_specs.ImportSchemaGenSpec.PARAMETERS,
      FINGERPRINT_KEY: ExecutionParameter(type=str),
  }


def resolve(schema_file: str) -> str:
  """A repo-relative path is read from this project's root; anything else as given."""
  if '://' in schema_file or os.path.isabs(schema_file):
    return schema_file
  return str(PROJECT_ROOT / schema_file)


class Executor(import_executor.Executor):
  """ImportSchemaGen's executor, given the resolved path."""

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    key = standard_component_specs.SCHEMA_FILE_KEY
    super().Do(input_dict, output_dict,
               {**exec_properties, key: resolve(exec_properties[key])})


class CuratedSchemaGen(ImportSchemaGen):
  """`ImportSchemaGen(schema_file)` whose cache key includes the file's content."""

  SPEC_CLASS = CuratedSchemaGenSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

  def __init__(self, schema_file: str):  # pylint: disable=super-init-not-called
    with fileio.open(resolve(schema_file), 'rb') as f:  # fails fast if missing
      fingerprint = hashlib.sha256(f.read()).hexdigest()[:16]
    if '://' not in schema_file and Path(schema_file).resolve().is_relative_to(PROJECT_ROOT):
      schema_file = str(Path(schema_file).resolve().relative_to(PROJECT_ROOT))
    spec = CuratedSchemaGenSpec(schema_file=schema_file, schema_fingerprint=fingerprint,
                                schema=types.Channel(type=standard_artifacts.Schema))
    base_component.BaseComponent.__init__(self, spec=spec)
