"""The quickstart task with DP-FedAvg (McMahan et al. 2018, arXiv 1710.06963).

Variants (`--config=configs/quickstart_dp.py:VARIANT`):
  eps1      noise multiplier chosen so that epsilon <= 1 after all rounds
  eps8      the same for epsilon <= 8
  noiseless clipping and unweighted averaging, no noise (epsilon = infinity)

Delta defaults to 0.01/N = 2e-4 for N = 50 training clients. Aggregation is
unweighted with the update clipped to L2 norm 1.0, as DP-FedAvg requires; the
quickstart's server momentum is kept. docs/privacy.md records what each reaches.
"""

import importlib.util
import os

VARIANTS = {'eps1': 1.0, 'eps8': 8.0, 'noiseless': None}


def _quickstart_config():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'quickstart.py')
  spec = importlib.util.spec_from_file_location('quickstart_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config(variant='eps8'):
  if variant not in VARIANTS:
    raise ValueError(f'Unknown variant {variant!r}; expected one of {", ".join(VARIANTS)}.')
  config = _quickstart_config()
  config.algorithm.weighted = False
  config.aggregator.kind = 'dp'
  config.aggregator.clip_norm = 1.0
  if VARIANTS[variant] is None:
    config.aggregator.noise_multiplier = 0.0
  else:
    config.privacy.target_epsilon = VARIANTS[variant]
  return config
