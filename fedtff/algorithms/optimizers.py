"""Client and server optimizers by name, as `tff.learning.optimizers` objects.

TFF's learning algorithms need TFF optimizers, not Keras ones. `build` maps a
name and hyperparameters onto TFF's builders; `check` turns the common mistake
of passing a Keras optimizer into a clear error.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
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

# Reddi et al. (2021) defaults for the adaptive optimizers; TFF's own defaults
# differ (epsilon 1e-7 for Adam and Adagrad, 1e-3 for Yogi; initial
# accumulator 0.1 for Adagrad and 1e-6 for Yogi).
ADAPTIVE_DEFAULTS = {
    'adam': {'beta_1': 0.9, 'beta_2': 0.999, 'epsilon': 1e-3},
    'adagrad': {'epsilon': 1e-3, 'initial_accumulator': 0.0},
    'yogi': {'beta_1': 0.9, 'beta_2': 0.999, 'epsilon': 1e-3, 'initial_accumulator': 0.0},
}


def _tff_hparams(name: str, hparams: Dict[str, Any]) -> Dict[str, Any]:
  """Fills in fedtff's defaults and maps fedtff's names onto TFF's."""
  hparams = {**ADAPTIVE_DEFAULTS.get(name, {}), **hparams}
  if name == 'sgd' and not hparams.get('momentum'):
    hparams.pop('momentum', None)
  if 'initial_accumulator' in hparams:
    if name == 'adam':
      if hparams.pop('initial_accumulator'):
        raise ValueError("Optimizer 'adam' starts its accumulators at 0; it takes no "
                         'initial_accumulator.')
    else:
      hparams['initial_preconditioner_value'] = hparams.pop('initial_accumulator')
  return hparams


def _momentum_in_floatx(name: str, learning_rate: Any,
                        hparams: Dict[str, Any]) -> Tuple[Any, Dict[str, Any]]:
  """SGD with momentum under a float64 Keras floatx gets float64 hyperparameters.

  TFF 0.87's SGD momentum step (`a = momentum * a + g; w = w - lr * a`) casts
  neither hyperparameter to the accumulator's dtype, so float32 hyperparameters
  fail on a float64 model. Every other case is returned unchanged: the other
  optimizers cast their hyperparameters to each value's dtype themselves.
  """
  if name != 'sgd' or not hparams.get('momentum') or tf.keras.backend.floatx() != 'float64':
    return learning_rate, hparams
  as_float64 = lambda v: tf.cast(v, tf.float64) if tf.is_tensor(v) else np.float64(v)
  return as_float64(learning_rate), {**hparams, 'momentum': as_float64(hparams['momentum'])}


def build(name: str, learning_rate: float, **hparams: Any) -> TffOptimizer:
  """Returns the TFF optimizer called `name`.

  Args:
    name: One of `OPTIMIZER_NAMES`: 'sgd' (with optional `momentum`), 'adam',
      'adagrad', 'yogi' or 'rmsprop'.
    learning_rate: The learning rate.
    **hparams: Further keyword arguments of the matching
      `tff.learning.optimizers.build_*` function: `momentum` for sgd;
      `beta_1`, `beta_2`, `epsilon` (Reddi et al.'s τ) and
      `initial_accumulator` for the adaptive ones, whose defaults are
      `ADAPTIVE_DEFAULTS` (Reddi et al. 2021), not TFF's. Under a float64
      Keras floatx, SGD with momentum holds its hyperparameters in float64
      (TFF's momentum step does not cast them); all else is as given.

  Raises:
    ValueError: If `name` is unknown or a hyperparameter does not apply.
  """
  if name not in _BUILDERS:
    raise ValueError(f'Unknown optimizer {name!r}; expected one of {", ".join(OPTIMIZER_NAMES)}.')
  try:
    learning_rate, tff_hparams = _momentum_in_floatx(name, learning_rate,
                                                     _tff_hparams(name, hparams))
    return _BUILDERS[name](learning_rate=learning_rate, **tff_hparams)
  except TypeError as e:
    raise ValueError(f'Optimizer {name!r} does not take {sorted(hparams)}: {e}') from None


def build_fn(name: str, **hparams: Any) -> Callable[[float], TffOptimizer]:
  """Returns `learning_rate -> build(name, learning_rate, **hparams)`.

  Learning-rate schedules need the client optimizer in this form.
  """
  build(name, 1.0, **hparams)  # Fails now, not inside TFF tracing, on bad input.
  return lambda learning_rate: build(name, learning_rate, **dict(hparams))


def check(optimizer: Any, role: str) -> TffOptimizer:
  """Returns `optimizer` if it is a TFF optimizer, else raises `TypeError`."""
  if isinstance(optimizer, TffOptimizer):
    return optimizer
  if isinstance(optimizer, tf.keras.optimizers.Optimizer) or (
      callable(optimizer) and 'keras' in getattr(optimizer, '__module__', '')):
    raise TypeError(
        f'The {role} optimizer is a Keras optimizer; fedtff needs a TFF optimizer: '
        f"pass fedtff.build_optimizer('sgd', learning_rate=...) or "
        f'tff.learning.optimizers.build_sgdm(...) instead.')
  raise TypeError(
      f'Expected a tff.learning.optimizers.Optimizer for the {role} optimizer, '
      f"got {optimizer!r}; build one with fedtff.build_optimizer('sgd', learning_rate=...).")


def plain_sgd_learning_rate(optimizer: TffOptimizer) -> Optional[float]:
  """The learning rate of a plain SGD optimizer (no momentum), else None.

  SCAFFOLD's option II, FedNova's a_i = τ_i, q-FedAvg's L = 1/η and Ditto's
  personal step all assume plain SGD; each refuses anything else in its own words.
  """
  hparams = dict(optimizer.get_hparams(optimizer.initialize(tf.TensorSpec([], tf.float32))))
  if set(hparams) - {'learning_rate', 'momentum'} or float(hparams.get('momentum') or 0.0):
    return None
  return float(hparams['learning_rate'])
