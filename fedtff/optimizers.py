"""Client and server optimizers by name, as `tff.learning.optimizers` objects.

TFF's learning algorithms need TFF optimizers, not Keras ones. `build` maps a
name and hyperparameters onto TFF's builders; `check` turns the common mistake
of passing a Keras optimizer into a clear error.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import tensorflow as tf
import tensorflow_federated as tff

TffOptimizer = tff.learning.optimizers.Optimizer

_BUILDERS: Dict[str, Callable[..., TffOptimizer]] = {
    'sgd': tff.learning.optimizers.build_sgdm,
    'adam': tff.learning.optimizers.build_adam,
    'adagrad': tff.learning.optimizers.build_adagrad,
    'yogi': tff.learning.optimizers.build_yogi,
    'rmsprop': tff.learning.optimizers.build_rmsprop,
}
OPTIMIZER_NAMES = tuple(sorted(_BUILDERS))


def build(name: str, learning_rate: float, **hparams: Any) -> TffOptimizer:
  """Returns the TFF optimizer called `name`.

  Args:
    name: One of `OPTIMIZER_NAMES`: 'sgd' (with optional `momentum`), 'adam',
      'adagrad', 'yogi' or 'rmsprop'.
    learning_rate: The learning rate.
    **hparams: Further keyword arguments of the matching
      `tff.learning.optimizers.build_*` function, e.g. `beta_1`, `epsilon`.

  Raises:
    ValueError: If `name` is unknown or a hyperparameter does not apply.
  """
  if name not in _BUILDERS:
    raise ValueError(f'Unknown optimizer {name!r}; expected one of {", ".join(OPTIMIZER_NAMES)}.')
  if name == 'sgd' and not hparams.get('momentum'):
    hparams.pop('momentum', None)
  try:
    return _BUILDERS[name](learning_rate=learning_rate, **hparams)
  except TypeError as e:
    raise ValueError(f'Optimizer {name!r} does not take {sorted(hparams)}: {e}') from None


def check(optimizer: Any, role: str) -> TffOptimizer:
  """Returns `optimizer` if it is a TFF optimizer, else raises `TypeError`."""
  if isinstance(optimizer, TffOptimizer):
    return optimizer
  if isinstance(optimizer, tf.keras.optimizers.Optimizer) or (
      callable(optimizer) and 'keras' in getattr(optimizer, '__module__', '')):
    raise TypeError(
        f'The {role} optimizer is a Keras optimizer; fedtff needs a TFF optimizer: '
        f"pass fedtff.optimizer('sgd', learning_rate=...) or "
        f'tff.learning.optimizers.build_sgdm(...) instead.')
  raise TypeError(
      f'Expected a tff.learning.optimizers.Optimizer for the {role} optimizer, '
      f"got {optimizer!r}; build one with fedtff.optimizer('sgd', learning_rate=...).")
