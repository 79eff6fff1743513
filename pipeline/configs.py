"""The one typed configuration of the pipeline.

Values come from, in rising precedence: the defaults below, `MNIST_*` environment
variables (`MNIST_DATA_DIR`, `MNIST_EPOCHS`, ...), and command-line flags (`--data-dir`,
`--epochs`, ...). Nothing else in the project reads the environment for these values:
runners build a `PipelineConfig` here and hand it down.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

from trainer.hparams import PRESETS, TrainingConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = 'MNIST_'
SHARED_DATA_DIR = REPO_ROOT.parent / 'shared' / 'datasets' / 'mnist'
DOWNLOAD_CACHE_DIR = Path.home() / '.cache' / 'mnist-tfx' / 'mnist'  # components.download's default
CURATED_SCHEMA = REPO_ROOT / 'pipeline' / 'schema' / 'schema.pbtxt'


def default_data_dir() -> Path:
  """The shared copy next to this checkout when present, else the download cache."""
  return SHARED_DATA_DIR if SHARED_DATA_DIR.is_dir() else DOWNLOAD_CACHE_DIR


@dataclasses.dataclass
class PipelineConfig:
  """Where data comes from and goes to, how it is split, and what gates a push."""
  preset: str = 'default'              # see PRESETS
  pipeline_name: str = 'mnist'
  model_name: str = 'mnist'
  data_dir: Path = dataclasses.field(default_factory=default_data_dir)
  output_dir: Path = REPO_ROOT / 'outputs'
  serving_dir: Optional[Path] = None   # default: <output_dir>/serving
  eval_size: int = 5000                # held out from the training file, deterministic
  limit_train: int = 0                 # 0 = the whole training file
  limit_test: int = 0                  # 0 = the whole test file
  accuracy_threshold: float = 0.99     # absolute lower bound on test accuracy
  beam_workers: int = 1                # 1 = in-process (fastest at MNIST size); 0 = one per core
  enable_cache: bool = True
  schema_path: Path = CURATED_SCHEMA   # what ExampleValidator checks the data against
  anomalies_warn_only: bool = False    # data anomalies: warn and go on instead of failing
  min_free_mb: int = 500               # free disk space the run needs before it starts
  training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)

  def __post_init__(self) -> None:
    if self.preset not in PRESETS:
      raise ValueError(f'preset: expected one of {tuple(PRESETS)}, found {self.preset!r}')
    self.data_dir = Path(self.data_dir).expanduser().absolute()
    self.output_dir = Path(self.output_dir).expanduser().absolute()
    self.schema_path = Path(self.schema_path).expanduser().absolute()
    self.serving_dir = (Path(self.serving_dir).expanduser().absolute()
                        if self.serving_dir else self.output_dir / 'serving')
    if self.eval_size < 1:
      raise ValueError(f'eval_size must be >= 1, found {self.eval_size}')
    if self.limit_train and self.limit_train <= self.eval_size:
      raise ValueError(f'limit_train ({self.limit_train}) must exceed eval_size '
                       f'({self.eval_size}) so that the train split is not empty')

  @property
  def pipeline_root(self) -> Path:
    return self.output_dir / 'pipelines' / self.pipeline_name

  @property
  def metadata_path(self) -> Path:
    return self.output_dir / 'metadata' / self.pipeline_name / 'metadata.db'

  @property
  def model_serving_dir(self) -> Path:
    """TF Serving's model base path: the Pusher writes `<this>/<version>/`."""
    return self.serving_dir / self.model_name

  def beam_pipeline_args(self) -> list[str]:
    """One worker runs in-process: a worker process would only add its start-up (it
    imports TensorFlow, ~20 s per Beam component) and no parallelism."""
    workers = self.beam_workers or os.cpu_count() or 1
    mode = 'in_memory' if workers == 1 else 'multi_processing'
    return [f'--direct_running_mode={mode}', f'--direct_num_workers={workers}',
            NO_EXTRA_PACKAGES]


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


def _fields() -> Fields:
  return ([('PipelineConfig', f) for f in dataclasses.fields(PipelineConfig)
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
  add_field_arguments(parser, _fields(), _env_names)


def load(args: Optional[argparse.Namespace] = None,
         environ: Optional[Mapping[str, str]] = None,
         **overrides: Any) -> PipelineConfig:
  """Builds the config: defaults < preset < environment < CLI flags < keyword overrides."""
  environ = os.environ if environ is None else environ
  values = read_field_values(_fields(), args, environ, _env_names)
  values.update(overrides)
  training_names = {f.name for f in dataclasses.fields(TrainingConfig)}
  training = TrainingConfig(**{**PRESETS.get(values.get('preset', 'default'), {}),
                               **{k: v for k, v in values.items() if k in training_names}})
  return PipelineConfig(training=training,
                        **{k: v for k, v in values.items() if k not in training_names})


def parse(argv: Optional[Sequence[str]] = None, **overrides: Any) -> PipelineConfig:
  """Config from a command line alone (used by runners that take no subcommand)."""
  parser = argparse.ArgumentParser()
  add_arguments(parser)
  return load(parser.parse_args(argv), **overrides)
