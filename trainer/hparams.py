"""Contract: the training hyperparameters, owned by the Trainer.

`run_fn` rebuilds a `TrainingConfig` from the Trainer's `custom_config`; the runners build
one from flags and environment (pipeline/configs.py). Plain Python, no TensorFlow, nothing
of the project: every layer may import it.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class TrainingConfig:
  """Hyperparameters handed to the Trainer's `run_fn` through `custom_config`."""
  architecture: str = 'cnn'          # cnn | mlp
  epochs: int = 24
  batch_size: int = 128
  learning_rate: float = 3e-3
  lr_schedule: str = 'cosine'        # constant | exponential | cosine | onecycle | plateau
  warmup_epochs: float = 0.5
  optimizer: str = 'adam'            # adam | adamw
  weight_decay: float = 1e-4         # adamw only
  dropout: float = 0.25
  batch_norm: bool = True
  label_smoothing: float = 0.1
  augment: bool = True               # random shifts/rotations/zoom, training only
  early_stopping_patience: int = 0   # epochs without eval improvement; 0 disables
  distribution: str = 'auto'         # auto (mirrored over GPUs, else default) | mirrored | default
  mixed_precision: str = 'auto'      # auto (on with a GPU) | on | off
  seed: int = 42

  def __post_init__(self) -> None:
    choices = {
        'architecture': ('cnn', 'mlp'),
        'lr_schedule': ('constant', 'exponential', 'cosine', 'onecycle', 'plateau'),
        'optimizer': ('adam', 'adamw'),
        'distribution': ('auto', 'mirrored', 'default'),
        'mixed_precision': ('auto', 'on', 'off'),
    }
    for name, allowed in choices.items():
      if getattr(self, name) not in allowed:
        raise ValueError(f'{name}: expected one of {allowed}, found {getattr(self, name)!r}')
    if self.epochs < 1 or self.batch_size < 1:
      raise ValueError(f'epochs and batch_size must be >= 1, found {self.epochs}, '
                       f'{self.batch_size}')


# Named starting points for training; environment and flags still override each field.
PRESETS = {
    'default': {},   # TrainingConfig's own defaults: the accuracy configuration
    'quick': {'epochs': 3, 'augment': False, 'label_smoothing': 0.0},
}
