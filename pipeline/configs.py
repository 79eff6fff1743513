"""The one typed configuration of the pipeline.

Two kinds of settings, kept apart: `PipelineParams`, what the DAG does on any runner, and
`Locations`, where it reads and writes (paths or URIs, passed through unchanged).
`LocalConfig` is the local runner's: the parameters plus local folders, which it alone
resolves (against the working directory). Kubeflow builds its locations from
kubeflow/config.py.

Values come from, in rising precedence: the defaults below, `MNIST_*` environment
variables (`MNIST_DATA_DIR`, `MNIST_EPOCHS`, ...), and command-line flags (`--data-dir`,
`--epochs`, ...). Nothing else in the project reads the environment for these values:
runners build their config here and hand it down.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import posixpath
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

from trainer.hparams import PRESETS, TrainingConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = 'MNIST_'
SHARED_DATA_DIR = REPO_ROOT.parent / 'shared' / 'datasets' / 'mnist'
DOWNLOAD_CACHE_DIR = Path.home() / '.cache' / 'mnist-tfx' / 'mnist'  # components.download's default
CURATED_SCHEMA = REPO_ROOT / 'pipeline' / 'schema' / 'schema.pbtxt'
DRIFT_BOUNDS = REPO_ROOT / 'pipeline' / 'schema' / 'drift.pbtxt'


def default_data_dir() -> Path:
  """The shared copy next to this checkout when present, else the download cache."""
  return SHARED_DATA_DIR if SHARED_DATA_DIR.is_dir() else DOWNLOAD_CACHE_DIR


@dataclasses.dataclass
class PipelineParams:
  """What the DAG does, the same on every runner: splits, limits, training, the gate."""
  preset: str = 'default'              # see PRESETS
  pipeline_name: str = 'mnist'
  model_name: str = 'mnist'
  eval_size: int = 5000                # held out from the training file, deterministic
  limit_train: int = 0                 # 0 = the whole training file
  limit_test: int = 0                  # 0 = the whole test file
  accuracy_threshold: float = 0.99     # absolute lower bound on test accuracy (a
                                       # pipeline parameter on Kubeflow: RUNTIME_PARAMETERS)
  span_window: int = 0                 # sealed spans trained on: 0 = all, K = the newest K
  holdout_fraction: float = 0.1        # of each span, held out and evaluated as its slice
  drift_min_examples: int = 500        # smaller spans are not compared with the base data
  beam_workers: int = 1                # 1 = in-process (fastest at MNIST size); 0 = one per core
  enable_cache: bool = True
  anomalies_warn_only: bool = False    # data anomalies: warn and go on instead of failing
  training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)

  def __post_init__(self) -> None:
    if self.preset not in PRESETS:
      raise ValueError(f'preset: expected one of {tuple(PRESETS)}, found {self.preset!r}')
    if self.eval_size < 1:
      raise ValueError(f'eval_size must be >= 1, found {self.eval_size}')
    if self.span_window < 0:
      raise ValueError(f'span_window must be >= 0 (0 = all spans), found {self.span_window}')
    if not 0 <= self.holdout_fraction < 1:
      raise ValueError(f'holdout_fraction: expected 0 <= value < 1, found '
                       f'{self.holdout_fraction}')
    if self.limit_train and self.limit_train <= self.eval_size:
      raise ValueError(f'limit_train ({self.limit_train}) must exceed eval_size '
                       f'({self.eval_size}) so that the train split is not empty')

  def beam_pipeline_args(self) -> list[str]:
    """One worker runs in-process: a worker process would only add its start-up (it
    imports TensorFlow, ~20 s per Beam component) and no parallelism."""
    workers = self.beam_workers or os.cpu_count() or 1
    mode = 'in_memory' if workers == 1 else 'multi_processing'
    return [f'--direct_running_mode={mode}', f'--direct_num_workers={workers}',
            NO_EXTRA_PACKAGES]


@dataclasses.dataclass(frozen=True)
class Locations:
  """Where the DAG reads and writes. Each is a local path or a URI (`gs://...`, a path
  mounted in a pod) and reaches the components exactly as given: each runner builds its
  own (`LocalConfig.locations`, kubeflow/runner.py)."""
  data: str                  # base IDX files (and spans) of the data
  pipeline_root: str         # TFX's artifacts
  serving: str               # TF Serving's model base path: the Pusher writes <serving>/<version>/
  schema: str                # the curated schema ExampleValidator checks against
  metadata: Optional[str] = None   # ML Metadata's SQLite file; None: the orchestrator's own


# Pipeline parameters of the compiled Kubeflow spec (name -> type): a run or schedule sets
# them (`--param epochs=5`) without recompiling, the spec's defaults being the values it
# was compiled with (PipelineParams.training.epochs and .learning_rate,
# PipelineParams.accuracy_threshold, and KubeflowConfig.data_uri as `data_uri`). Every
# other field is fixed at compile time. Locally they are plain values of the DAG.
RUNTIME_PARAMETERS: Dict[str, type] = {'epochs': int, 'learning_rate': float,
                                       'accuracy_threshold': float, 'data_uri': str}


def is_uri(location: str) -> bool:
  return '://' in location


def resolve_local(location: Union[str, Path]) -> str:
  """A local path made absolute against the working directory; a URI as it is."""
  text = str(location)
  return text if is_uri(text) else str(Path(text).expanduser().absolute())


@dataclasses.dataclass
class LocalConfig(PipelineParams):
  """The local runner's config: the portable parameters plus local folders."""
  data_dir: str = dataclasses.field(default_factory=lambda: str(default_data_dir()))
  output_dir: str = str(REPO_ROOT / 'outputs')
  serving_dir: str = ''                # '' = <output_dir>/serving
  schema_path: str = str(CURATED_SCHEMA)
  min_free_mb: int = 500               # free disk space the run needs before it starts
  beam_args: str = ''                  # Beam flags of every Beam component (pipeline/beam_deps.py)

  def __post_init__(self) -> None:
    super().__post_init__()
    self.data_dir = resolve_local(self.data_dir)
    self.output_dir = resolve_local(self.output_dir)
    self.schema_path = resolve_local(self.schema_path)
    self.serving_dir = resolve_local(self.serving_dir or Path(self.output_dir) / 'serving')

  def params(self) -> PipelineParams:
    return PipelineParams(**{f.name: getattr(self, f.name)
                             for f in dataclasses.fields(PipelineParams)})

  @property
  def model_serving_dir(self) -> Path:
    """`locations().serving` as a local folder (what tests and the summary look into)."""
    return Path(self.locations().serving)

  @property
  def metadata_path(self) -> Path:
    return Path(self.output_dir) / 'metadata' / self.pipeline_name / 'metadata.db'

  def locations(self) -> Locations:
    return Locations(
        data=self.data_dir,
        pipeline_root=posixpath.join(self.output_dir, 'pipelines', self.pipeline_name),
        serving=posixpath.join(self.serving_dir, self.model_name),
        schema=self.schema_path,
        metadata=str(self.metadata_path))


# Unless a Beam dependency flag is set, every TFX Beam executor copies TFX's whole install
# (41 MB) to a temporary folder it never removes and builds an sdist of it there for remote
# workers: ~1 s per Beam component. DirectRunner workers run in this environment, which
# has TFX and the project installed; an empty --extra_packages tells TFX so.
NO_EXTRA_PACKAGES = '--extra_packages='


# ---------------------------------------------------------------------------
# Overrides from the environment and the command line. Every field of both dataclasses
# is a flag `--field-name` and an environment variable `MNIST_FIELD_NAME`. The helpers
# take any dataclass fields, so kubeflow/config.py builds its config the same way.

Fields = Sequence[Tuple[str, dataclasses.Field]]  # (owner class name, field)
EnvNames = Callable[[dataclasses.Field], Sequence[str]]


def _fields(config_class: type = LocalConfig) -> Fields:
  """Flags of a config class: its own fields, then TrainingConfig's."""
  return ([(config_class.__name__, f) for f in dataclasses.fields(config_class)
           if f.name != 'training'] +
          [('TrainingConfig', f) for f in dataclasses.fields(TrainingConfig)])


def _env_names(field: dataclasses.Field) -> Sequence[str]:
  return [ENV_PREFIX + field.name.upper()]


def parse_value(field: dataclasses.Field, text: str) -> Any:
  kind = field.type if isinstance(field.type, str) else field.type.__name__
  if kind == 'bool':
    lowered = text.strip().lower()
    if lowered not in ('1', '0', 'true', 'false', 'yes', 'no', 'on', 'off'):
      raise ValueError(f'{field.name}: expected a boolean, found {text!r}')
    return lowered in ('1', 'true', 'yes', 'on')
  if kind == 'int':
    return int(text)
  if kind == 'float':
    return float(text)
  return text  # str and paths; paths are resolved in __post_init__


def add_field_arguments(parser: Union[argparse.ArgumentParser, argparse._ArgumentGroup],
                        fields: Fields, env_names: EnvNames, dest_prefix: str = '') -> None:
  """One `--flag` per field; unset flags stay None so environment and defaults apply."""
  for owner, field in fields:
    default = field.default if field.default is not dataclasses.MISSING else '(computed)'
    parser.add_argument('--' + field.name.replace('_', '-'), dest=dest_prefix + field.name,
                        default=None, metavar=field.name.upper(),
                        help=f'{owner}.{field.name} (env {" or ".join(env_names(field))}; '
                             f'default {default})')


def read_field_values(fields: Fields, args: Optional[argparse.Namespace],
                      environ: Mapping[str, str], env_names: EnvNames,
                      dest_prefix: str = '') -> Dict[str, Any]:
  """Parsed values of the fields set in the environment or on the command line."""
  values: Dict[str, Any] = {}
  for _, field in fields:
    text = next((environ[name] for name in env_names(field) if environ.get(name)), None)
    cli = getattr(args, dest_prefix + field.name, None) if args is not None else None
    if cli is not None:
      text = cli
    if text is not None:
      try:
        values[field.name] = parse_value(field, str(text))
      except ValueError as e:
        raise ValueError(f'invalid value for {field.name}: {e}') from None
  return values


def add_arguments(parser: argparse.ArgumentParser,
                  config_class: type = LocalConfig) -> None:
  """Flags for `LocalConfig` (the local runner) or `PipelineParams` (portable only)."""
  add_field_arguments(parser, _fields(config_class), _env_names)


def load(args: Optional[argparse.Namespace] = None,
         environ: Optional[Mapping[str, str]] = None,
         config_class: type = LocalConfig, **overrides: Any) -> Any:
  """Builds the config: defaults < preset < environment < CLI flags < keyword overrides."""
  environ = os.environ if environ is None else environ
  values = read_field_values(_fields(config_class), args, environ, _env_names)
  values.update(overrides)
  training_names = {f.name for f in dataclasses.fields(TrainingConfig)}
  training = TrainingConfig(**{**PRESETS.get(values.get('preset', 'default'), {}),
                               **{k: v for k, v in values.items() if k in training_names}})
  return config_class(training=training,
                      **{k: v for k, v in values.items() if k not in training_names})


def parse(argv: Optional[Sequence[str]] = None, **overrides: Any) -> LocalConfig:
  """The local config from a command line alone (the TFX CLI's local_runner.py)."""
  parser = argparse.ArgumentParser()
  add_arguments(parser)
  return load(parser.parse_args(argv), **overrides)
