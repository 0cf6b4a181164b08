"""DP-FTRL: tree-aggregated noise, accounted without sampling amplification.

DP-FTRL is Kairouz, McMahan, Song, Thakkar, Thakurta and Xu, "Practical and
Private (Deep) Learning without Sampling or Shuffling", ICML 2021 (arXiv
2103.00039). Each round's clipped client updates are summed; instead of fresh
noise per round, the server keeps a binary tree over the rounds and releases
the noised *prefix sums* of the updates, each from at most `ceil(log2(T+1))`
Gaussian tree nodes; TFF's `DifferentiallyPrivateFactory.tree_aggregation`
returns the difference of consecutive noised prefix sums divided by
`clients_per_round`, so that server SGD on it is FTRL on the noised prefix sums
(the model after round `t` is the initial model minus the learning rate times
the `t`-th noised prefix sum).

What fedtff accounts for, exactly:

* Unit: one client with all of its data.
* Participation: `sampling='cyclic'` (`fedtff.runner.training.sample_clients`): a
  permutation of the `N` training clients drawn once is cut into `K = N // m`
  cohorts of `m` clients, used in turn. A client therefore joins at most
  `ceil(T / K)` of `T` rounds, with `K - 1` rounds between two of them. The
  bound holds whatever an observer knows of the schedule: no amplification
  by sampling or shuffling is assumed.
* Neighbouring relation: replace one client's data by the "special" empty
  client whose update is 0 (dp_accounting's `REPLACE_SPECIAL`, the relation of
  Kairouz et al.'s Appendix D), so one leaf moves by at most `C` and the noise
  per tree node, of standard deviation `z * C`, has multiplier `z`.
* Accountant: the RDP of the Gaussian mechanism on the whole tree with the
  worst-case sum of squared node sensitivities of a client that joins
  `ceil(T/K)` times at least `K - 1` rounds apart (Kairouz et al., Appendix D;
  TF Privacy's `tree_aggregation_accountant.compute_rdp_single_tree`),
  converted to `(epsilon, delta)` by dp_accounting. TFF's factory never
  restarts the tree, so this single-tree bound is the one that applies.
"""

from __future__ import annotations

import functools
import math
import secrets
from typing import Dict, Optional

import dp_accounting
import numpy as np
from tensorflow_privacy.privacy.analysis import tree_aggregation_accountant

from fedtff.privacy import accounting


def participation(clients_per_round: int, num_clients: int, rounds: int) -> Dict[str, int]:
  """How often and how far apart a client joins `rounds` cyclic rounds.

  Returns:
    `{'cohorts': K, 'max_participation': ceil(rounds / K),
    'min_separation': K - 1}` with `K = num_clients // clients_per_round`.
  """
  accounting._check_sampling_args(1.0, clients_per_round, num_clients,  # pylint: disable=protected-access
                                  accounting.WITHOUT_REPLACEMENT)
  accounting._check_rounds(rounds)  # pylint: disable=protected-access
  cohorts = num_clients // clients_per_round
  return {'cohorts': cohorts, 'max_participation': math.ceil(rounds / cohorts),
          'min_separation': cohorts - 1}


def rdp(noise_multiplier: float, clients_per_round: int, num_clients: int,
        rounds: int) -> np.ndarray:
  """The RDP of `rounds` DP-FTRL rounds at dp_accounting's default orders."""
  parts = participation(clients_per_round, num_clients, rounds)
  if not noise_multiplier >= 0:
    raise ValueError(f'noise_multiplier must be nonnegative, got {noise_multiplier}.')
  orders = _orders()
  if noise_multiplier == 0:
    return np.full(len(orders), np.inf)
  return np.asarray(tree_aggregation_accountant.compute_rdp_single_tree(
      noise_multiplier, rounds, parts['max_participation'], parts['min_separation'], orders))


def epsilon(noise_multiplier: float, clients_per_round: int, num_clients: int, rounds: int,
            delta: Optional[float] = None) -> float:
  """The epsilon `rounds` DP-FTRL rounds spend (module docstring).

  Args:
    noise_multiplier: `z`: the noise standard deviation per tree node over
      the clip norm.
    clients_per_round: `m`, the size of each cyclic cohort.
    num_clients: `N`, the training clients.
    rounds: `T`, the rounds run.
    delta: The target delta; `accounting.default_delta(num_clients)` when `None`.

  Returns:
    Epsilon at `delta`; `math.inf` when `noise_multiplier` is 0.
  """
  delta = accounting.resolve_delta(delta, num_clients)
  values = rdp(noise_multiplier, clients_per_round, num_clients, rounds)
  if not np.all(np.isfinite(values)):
    return math.inf
  return float(dp_accounting.rdp.compute_epsilon(_orders(), values, delta)[0])


@functools.lru_cache(maxsize=64)
def noise_multiplier_for_epsilon(target_epsilon: float, clients_per_round: int,
                                 num_clients: int, rounds: int, delta: Optional[float] = None,
                                 *, tolerance: float = accounting.DEFAULT_TOLERANCE) -> float:
  """The smallest DP-FTRL noise multiplier (within `tolerance`) for `target_epsilon`."""
  if not target_epsilon > 0:
    raise ValueError(f'target_epsilon must be positive, got {target_epsilon}.')
  spends = lambda z: epsilon(z, clients_per_round, num_clients, rounds, delta)
  return accounting.smallest_noise_multiplier(spends, target_epsilon, rounds, tolerance=tolerance)


class FtrlPrivacyTracker:
  """The epsilon DP-FTRL has spent after each round, like `accounting.PrivacyTracker`."""

  def __init__(self, noise_multiplier: float, clients_per_round: int, num_clients: int,
               delta: Optional[float] = None):
    participation(clients_per_round, num_clients, 1)
    self.noise_multiplier = noise_multiplier
    self.clients_per_round = clients_per_round
    self.num_clients = num_clients
    self.delta = accounting.resolve_delta(delta, num_clients)

  def epsilon(self, round_num: int) -> float:
    """Epsilon after rounds `1..round_num`; 0 before the first round."""
    if round_num < 0:
      raise ValueError(f'round_num must be nonnegative, got {round_num}.')
    if round_num == 0:
      return 0.0
    return epsilon(self.noise_multiplier, self.clients_per_round, self.num_clients, round_num,
                   self.delta)

  def metrics(self, round_num: int) -> Dict[str, float]:
    return {accounting.EPSILON_METRIC: self.epsilon(round_num)}


def _orders():
  return dp_accounting.rdp.RdpAccountant().orders


def ftrl_aggregator(noise_multiplier: float, clients_per_round: int, clip: float,
                    keras_model_fn) -> 'tff.aggregators.UnweightedAggregationFactory':
  """TFF's DP-FTRL mean for the model `keras_model_fn` builds.

  `tff.aggregators.DifferentiallyPrivateFactory.tree_aggregation`: each update
  is clipped to L2 norm `clip`; the noise per tree node has standard deviation
  `noise_multiplier * clip`; the output is the residual of the noised prefix
  sums divided by `clients_per_round`. Use it with a server SGD optimizer (TFF's
  docstring): then the model follows FTRL on the noised prefix sums. Any server
  optimizer keeps the guarantee (post-processing).

  The tree's noise seed is drawn from the OS (`secrets`) at every build: left
  unset, TF Privacy seeds the tree from the clock at initialization
  (`tf.timestamp()` in microseconds), which anyone who knows roughly when the
  run started can search, regenerate and subtract. The seed lives on in the
  aggregator state, so checkpoints carry it and a resumed run continues the
  same noise.

  Args:
    noise_multiplier: `z` per tree node.
    clients_per_round: `m`, the cyclic cohort size.
    clip: The L2 clip norm `C`.
    keras_model_fn: Builds the Keras model whose trainable weights are updated.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  model = keras_model_fn()
  specs = [tf.TensorSpec(v.shape, v.dtype) for v in model.trainable_weights]
  return tff.aggregators.DifferentiallyPrivateFactory.tree_aggregation(
      float(noise_multiplier), float(clients_per_round), float(clip), specs,
      noise_seed=secrets.randbits(63))
