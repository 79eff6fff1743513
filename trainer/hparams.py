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
  # Continuous training: fine-tune the served model instead of training from scratch
  # (trainer/warm_start.py; falls back to a cold run when nothing fitting is served).
  warm_start: bool = False
  warm_start_epochs: int = 3
  warm_start_learning_rate: float = 3e-4   # a tenth of learning_rate: the weights are trained

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
    if self.warm_start_epochs < 1:
      raise ValueError(f'warm_start_epochs must be >= 1, found {self.warm_start_epochs}')
    if not self.warm_start_learning_rate > 0:
      raise ValueError(f'warm_start_learning_rate must be > 0, found '
                       f'{self.warm_start_learning_rate}')

  def fine_tuning(self) -> TrainingConfig:
    """A warm run's config: `warm_start_epochs` of cosine decay from
    `warm_start_learning_rate` to zero, without warm-up. Warm-up shields random weights from
    full-size first steps; a warm run starts from trained weights at an already low rate,
    and in a run of 3 epochs a warm-up would take a large share. Decaying to zero, not a
    constant rate, ends the short run settled, as a cold run ends."""
    return dataclasses.replace(self, epochs=self.warm_start_epochs,
                               learning_rate=self.warm_start_learning_rate,
                               lr_schedule='cosine', warmup_epochs=0.0)


# Named starting points for training; environment and flags still override each field.
PRESETS = {
    'default': {},   # TrainingConfig's own defaults: the accuracy configuration
    'quick': {'epochs': 3, 'augment': False, 'label_smoothing': 0.0},
}
