"""Client learning-rate schedules over rounds, as in Reddi et al. (2021).

Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar and McMahan, "Adaptive
Federated Optimization", ICLR 2021 (arXiv 2003.00295), compare a constant
client learning rate with exponential, inverse-linear and inverse-square-root
decay over rounds, optionally after a linear warmup. Each schedule maps the
0-based round number (a Python int or an int tensor: TFF calls it inside the
round's computation) to a learning rate.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import tensorflow as tf

LearningRateFn = Callable[[int], float]
SCHEDULES = ('constant', 'exp_decay', 'inv_lin_decay', 'inv_sqrt_decay')


@dataclasses.dataclass(frozen=True)
class Schedule:
  """A client learning-rate schedule.

  Attributes:
    name: One of `SCHEDULES`.
    learning_rate: The initial (post-warmup) learning rate η₀.
    decay_rate: γ. `exp_decay`: η₀·γ^(t/decay_steps); `inv_lin_decay`:
      η₀/(1 + γ·t/decay_steps); `inv_sqrt_decay`: η₀/√(1 + γ·t/decay_steps).
    decay_steps: The number of rounds over which one factor of decay applies.
    staircase: With `exp_decay`, decay in whole steps of `decay_steps` rounds.
    warmup_rounds: Rounds of linear warmup from η₀/warmup_rounds up to η₀,
      after which the decay starts counting from 0.
  """
  name: str = 'constant'
  learning_rate: float = 0.1
  decay_rate: float = 0.1
  decay_steps: int = 1000
  staircase: bool = False
  warmup_rounds: int = 0

  def __post_init__(self):
    if self.name not in SCHEDULES:
      raise ValueError(f'Unknown learning-rate schedule {self.name!r}; expected one of '
                       f'{", ".join(SCHEDULES)}.')
    if self.learning_rate <= 0 or self.decay_steps < 1 or self.warmup_rounds < 0:
      raise ValueError('A schedule needs learning_rate > 0, decay_steps >= 1 and '
                       f'warmup_rounds >= 0, got {self}.')

  def __call__(self, round_num) -> tf.Tensor:
    round_num = tf.cast(round_num, tf.float32)
    warmup = float(self.warmup_rounds)
    decayed = self._decay(tf.maximum(round_num - warmup, 0.0))
    if self.warmup_rounds == 0:
      return decayed
    warming = self.learning_rate * (round_num + 1.0) / warmup
    return tf.where(round_num < warmup, warming, decayed)

  def _decay(self, t: tf.Tensor) -> tf.Tensor:
    progress = t / float(self.decay_steps)
    if self.name == 'exp_decay':
      exponent = tf.floor(progress) if self.staircase else progress
      return self.learning_rate * tf.pow(self.decay_rate, exponent)
    if self.name == 'inv_lin_decay':
      return self.learning_rate / (1.0 + self.decay_rate * progress)
    if self.name == 'inv_sqrt_decay':
      return self.learning_rate / tf.sqrt(1.0 + self.decay_rate * progress)
    return tf.ones_like(t) * self.learning_rate
