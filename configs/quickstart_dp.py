"""The quickstart task with differential privacy (docs/privacy.md).

Variants (`--config=configs/quickstart_dp.py:VARIANT`), each with epsilon
<= 1 (`..eps1`), <= 8 (`..eps8`) after all rounds, or no noise (`..noiseless`,
epsilon = infinity):

  eps1, eps8, noiseless
      DP-FedAvg (McMahan et al. 2018, arXiv 1710.06963), 10 clients drawn
      without replacement each round, replace-one, RDP accountant.
  poisson_eps1, poisson_eps8, poisson_noiseless
      DP-FedAvg with Poisson sampling (each client joins with probability
      10/50), add-or-remove, PLD accountant.
  ftrl_eps1, ftrl_eps8, ftrl_noiseless
      DP-FTRL (Kairouz et al. 2021, arXiv 2103.00039): TFF's tree aggregation,
      cyclic cohorts of 10, no amplification; server SGD without momentum, as
      TFF's tree aggregation expects.
  ddp_eps1, ddp_eps8, ddp_noiseless
      Distributed DP (Agarwal et al. 2021, arXiv 2110.04995): each client adds
      Skellam noise to its rotated, rounded update under (simulated) secure
      summation, 20 bits; replace-one, Skellam RDP, no amplification claimed.

Delta defaults to 0.01/N = 2e-4 for N = 50 training clients. Aggregation is
unweighted with the update clipped to L2 norm 1.0, as DP requires; DP-FedAvg
keeps the quickstart's server momentum. docs/privacy.md records what each reaches.
"""

import importlib.util
import os

EPSILONS = {'eps1': 1.0, 'eps8': 8.0, 'noiseless': None}
MECHANISMS = {
    '': dict(mechanism='dp_fedavg', sampling='fixed', accountant='rdp'),
    'poisson_': dict(mechanism='dp_fedavg', sampling='poisson', accountant='pld'),
    'ftrl_': dict(mechanism='dp_ftrl', sampling='cyclic', accountant='rdp'),
    'ddp_': dict(mechanism='ddp_skellam', sampling='fixed', accountant='rdp'),
}
VARIANTS = tuple(prefix + eps for prefix in MECHANISMS for eps in EPSILONS)
SMOKE_VARIANTS = ('eps8', 'poisson_eps8', 'ftrl_eps8', 'ddp_eps8')  # One per mechanism (tests/test_configs_smoke.py).


def _quickstart_config():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'quickstart.py')
  spec = importlib.util.spec_from_file_location('quickstart_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config(variant='eps8'):
  if variant not in VARIANTS:
    raise ValueError(f'Unknown variant {variant!r}; expected one of {", ".join(VARIANTS)}.')
  prefix = next(p for p in sorted(MECHANISMS, key=len, reverse=True) if variant.startswith(p))
  epsilon = EPSILONS[variant[len(prefix):]]
  config = _quickstart_config()
  config.algorithm.weighted = False
  config.aggregator.kind = 'dp'
  config.aggregator.clip_norm = 1.0
  config.privacy.update(MECHANISMS[prefix])
  if prefix == 'ftrl_':
    config.server.momentum = 0.0
  if epsilon is None:
    config.aggregator.noise_multiplier = 0.0
  else:
    config.privacy.target_epsilon = epsilon
  return config
