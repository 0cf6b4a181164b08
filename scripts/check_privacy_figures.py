"""Checks docs/privacy.md's noise table without fedtff: dp_accounting and TF Privacy directly.

For each noise multiplier z that `scripts/privacy_tradeoff.py --noise-table`
reports for the quickstart (N = 50 training clients, 10 per round, 100 rounds,
delta = 0.01/50, the default), prints the epsilon an independent computation gives at z
(at most the target) and at z - 0.001 (above it, up to rounding).

  .venv/bin/python scripts/check_privacy_figures.py
"""

import logging
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
logging.getLogger('absl').setLevel(logging.ERROR)  # compute_dp_sgd_privacy's deprecation notice.

# pylint: disable=g-import-not-at-top,wrong-import-position
import dp_accounting
import mpmath
import numpy as np
import tensorflow_federated as tff
from tensorflow_federated.python.aggregators import distributed_dp

import fedtff  # pylint: disable=unused-import  # Only for its TFF runtime, to run TFF's initialize.
from dp_accounting.pld import privacy_loss_distribution
from tensorflow_privacy.privacy.analysis import compute_dp_sgd_privacy_lib
from tensorflow_privacy.privacy.analysis import tree_aggregation_accountant

N, M, T = 50, 10, 100
DELTA = 0.01 / N  # fedtff's default delta (docs/privacy.md).
# docs/privacy.md's figures: z for epsilon = 1 and for epsilon = 8.
FIGURES = {'fixed': (27.507, 4.786), 'poisson_rdp': (6.830, 1.371),
           'poisson_pld': (6.158, 1.275), 'dp_ftrl': (72.094, 12.186),
           'ddp_skellam': (69.854, 11.390)}
DIM = 4810  # The quickstart MLP's trainable coordinates (64*64 + 64 + 64*10 + 10).


def fixed(z):
  """Replace-one, m of N without replacement: Gaussian with multiplier z/2 (sensitivity 2C)."""
  accountant = dp_accounting.rdp.RdpAccountant(
      neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
  event = dp_accounting.SampledWithoutReplacementDpEvent(N, M, dp_accounting.GaussianDpEvent(z / 2))
  return accountant.compose(event, T).get_epsilon(DELTA)


def poisson_rdp(z):
  """TF Privacy's DP-SGD calculator: Poisson q = M/N, T steps, add-or-remove."""
  return compute_dp_sgd_privacy_lib.compute_dp_sgd_privacy(N, M, z, T * M / N, DELTA)[0]


def poisson_pld(z):
  """The PLD of the Poisson-subsampled Gaussian, built and composed directly."""
  pld = privacy_loss_distribution.from_gaussian_mechanism(
      z, sampling_prob=M / N, value_discretization_interval=1e-4)
  return pld.self_compose(T).get_epsilon_for_delta(DELTA)


def dp_ftrl(z):
  """One tree over T rounds; 5 cyclic cohorts: 20 participations, 4 rounds apart."""
  orders = dp_accounting.rdp.RdpAccountant().orders
  rdp = tree_aggregation_accountant.compute_rdp_single_tree(z, T, T // (N // M), N // M - 1, orders)
  return dp_accounting.rdp.compute_epsilon(orders, rdp, DELTA)[0]


def ddp_skellam(z):
  """TFF's own DistributedDpSumFactory bounds (20 bits, clip 1, Hadamard), Agarwal et al.'s
  Theorem 3.5 in mpmath at replace-one sensitivities 2*L2, 2*L1, no amplification, and
  Canonne et al.'s RDP conversion in NumPy."""
  factory = distributed_dp.DistributedDpSumFactory(
      noise_multiplier=z, expected_clients_per_round=M, bits=20, l2_clip=1.0,
      mechanism='distributed_skellam', rotation_type='hd')
  state = factory.create(tff.TensorType(np.float32, (DIM,))).initialize()
  query = state[0]['inner_agg']['inner_agg_process'].query_state
  d2, d1 = 2 * mpmath.mpf(float(query.l2_norm_bound)), 2 * mpmath.mpf(int(query.l1_norm_bound))
  mu = M * mpmath.mpf(float(query.local_stddev))**2
  orders = np.array(list(range(2, 65)) + [80, 96, 128, 160, 192, 256, 384, 512, 768, 1024], float)
  rdp = np.array([float(T * (a * d2**2 / (2 * mu) + min(((2 * a - 1) * d2**2 + 6 * d1) / (4 * mu**2),
                                                        3 * d1 / (2 * mu)))) for a in orders])
  return float(np.min(rdp + np.log1p(-1 / orders) - (np.log(DELTA) + np.log(orders)) / (orders - 1)))


def main():
  for name, compute in (('fixed', fixed), ('poisson_rdp', poisson_rdp),
                        ('poisson_pld', poisson_pld), ('dp_ftrl', dp_ftrl),
                        ('ddp_skellam', ddp_skellam)):
    for z, target in zip(FIGURES[name], (1, 8)):
      print(f'{name}: target {target}: z={z}: epsilon {compute(z):.4f}; '
            f'z-0.001: epsilon {compute(z - 0.001):.4f}', flush=True)


if __name__ == '__main__':
  main()
