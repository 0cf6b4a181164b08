"""Systems heterogeneity: stragglers and dropouts, seeded per round and client.

Li, Sahu, Zaheer, Sanjabi, Talwalkar and Smith, "Federated Optimization in
Heterogeneous Networks", MLSys 2020 (arXiv 1812.06127), Section 5.2: in
each round a fraction of the selected devices are stragglers that run only
a number of local steps drawn uniformly at random (at most the full local
work); FedAvg drops them, FedProx aggregates their partial work.

fedtff's plan of a round (`plan_round`), drawn from the run's seed and the
round only, so that a run and a resumed run repeat it:

* dropouts: `round(dropout_fraction * m)` of the `m` sampled clients never
  report; they are removed from the cohort;
* stragglers: `round(straggler_fraction * m')` of the `m'` remaining clients;
  straggler c's number of batches k is uniform in [1, K_c], K_c its full
  number of batches (all local epochs), drawn from `(seed, round, c)`. With
  `'keep_partial'` it trains on its round dataset cut to the first k batches
  (`fedtff.data.rounds.round_client_id(..., max_batches=k)`: k local steps);
  with `'drop'` it is removed from the cohort, as FedAvg in Li et al.

The cut travels in the round-tagged client id, and `RoundClientData` builds
the cut dataset, so both engines train on the same batches without a change
to TFF's client work.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Callable, Dict, List, NamedTuple, Sequence

import numpy as np
import tensorflow as tf

from fedtff.data import rounds

POLICIES = ('auto', 'drop', 'keep_partial')
# With policy 'auto': the algorithms that keep a straggler's partial work (FedProx,
# Li et al.; FedNova, Wang et al. 2020, normalizes it); the others drop stragglers.
KEEPS_PARTIAL_WORK = ('fedprox', 'fednova')
STRAGGLERS_METRIC = 'train/stragglers'
DROPPED_METRIC = 'train/dropped'
_COHORT_SALT = 0x5354  # Separates these draws from sample_clients' ([seed, round]).
_STEPS_SALT = 0x4b53


@dataclasses.dataclass(frozen=True)
class Heterogeneity:
  """What fraction of each round's clients straggle or drop out.

  Attributes:
    straggler_fraction: In [0, 1]: the share of the reporting clients that straggle.
    dropout_fraction: In [0, 1): the share of the sampled clients that never report.
    straggler_policy: 'drop' or 'keep_partial' (`resolve_policy`).
  """
  straggler_fraction: float = 0.0
  dropout_fraction: float = 0.0
  straggler_policy: str = 'drop'

  def __post_init__(self):
    if not 0.0 <= self.straggler_fraction <= 1.0:
      raise ValueError(f'straggler_fraction must be in [0, 1], got {self.straggler_fraction}.')
    if not 0.0 <= self.dropout_fraction < 1.0:
      raise ValueError(f'dropout_fraction must be in [0, 1), got {self.dropout_fraction}.')
    if self.straggler_policy not in POLICIES[1:]:
      raise ValueError(f"straggler_policy must be 'drop' or 'keep_partial', got "
                       f'{self.straggler_policy!r}.')

  @property
  def enabled(self) -> bool:
    return bool(self.straggler_fraction or self.dropout_fraction)


def resolve_policy(policy: str, algorithm: str) -> str:
  """`policy`, with 'auto' read as 'keep_partial' for `KEEPS_PARTIAL_WORK`, else 'drop'."""
  if policy not in POLICIES:
    raise ValueError(f'straggler_policy must be one of {POLICIES}, got {policy!r}.')
  if policy != 'auto':
    return policy
  return 'keep_partial' if algorithm in KEEPS_PARTIAL_WORK else 'drop'


class RoundPlan(NamedTuple):
  """One round's cohort after heterogeneity.

  Attributes:
    tagged_ids: The reporting clients' round-tagged ids, in cohort order, a
      kept straggler's with its cut.
    stragglers: The stragglers' plain ids, in cohort order.
    dropped: The dropouts' plain ids, in cohort order.
    max_batches: Each straggler's number of batches k.
  """
  tagged_ids: List[str]
  stragglers: List[str]
  dropped: List[str]
  max_batches: Dict[str, int]

  def metrics(self) -> Dict[str, float]:
    """`train/stragglers` and `train/dropped`: this round's counts."""
    return {STRAGGLERS_METRIC: float(len(self.stragglers)),
            DROPPED_METRIC: float(len(self.dropped))}


def _count(fraction: float, num_clients: int) -> int:
  """`fraction * num_clients` rounded half up."""
  return int(np.floor(fraction * num_clients + 0.5))


def client_key(client_id: str) -> int:
  """A stable 32-bit number of a client id (CRC-32 of its UTF-8 bytes)."""
  return zlib.crc32(client_id.encode('utf-8'))


def straggler_batches(full_batches: int, *, seed: int, round_num: int, client_id: str) -> int:
  """A straggler's number of batches: uniform in [1, `full_batches`], from `(seed, round, client)`."""
  rng = np.random.default_rng([seed, round_num, client_key(client_id), _STEPS_SALT])
  return 1 + int(rng.integers(max(full_batches, 1)))


def plan_round(cohort: Sequence[str], heterogeneity: Heterogeneity, *, seed: int,
               round_num: int, full_batches_fn: Callable[[str], int]) -> RoundPlan:
  """The round's dropouts, stragglers and reporting clients (module docstring).

  Args:
    cohort: The sampled clients' plain ids.
    heterogeneity: The fractions and the straggler policy.
    seed: The run's seed.
    round_num: The round.
    full_batches_fn: A client's full number of batches (`FullBatches`).
  """
  order = np.random.default_rng([seed, round_num, _COHORT_SALT]).permutation(len(cohort))
  num_dropped = _count(heterogeneity.dropout_fraction, len(cohort))
  num_stragglers = _count(heterogeneity.straggler_fraction, len(cohort) - num_dropped)
  dropped = set(order[:num_dropped].tolist())
  straggling = set(order[num_dropped:num_dropped + num_stragglers].tolist())
  max_batches = {cohort[i]: straggler_batches(full_batches_fn(cohort[i]), seed=seed,
                                              round_num=round_num, client_id=cohort[i])
                 for i in sorted(straggling)}
  keep = heterogeneity.straggler_policy == 'keep_partial'
  tagged = [rounds.round_client_id(round_num, c, max_batches=max_batches.get(c))
            for i, c in enumerate(cohort)
            if i not in dropped and (keep or i not in straggling)]
  return RoundPlan(tagged, [cohort[i] for i in sorted(straggling)],
                   [cohort[i] for i in sorted(dropped)], max_batches)


class FullBatches:
  """A client's full number of batches in a round (all local epochs), read once and kept.

  The count is of the client's round-0 dataset; shuffling and augmentation do
  not change it from round to round.

  Args:
    client_data: The training clients' `fedtff.data.RoundClientData`.
  """

  def __init__(self, client_data: rounds.RoundClientData):
    self._client_data = client_data
    self._counts: Dict[str, int] = {}

  def __call__(self, client_id: str) -> int:
    if client_id not in self._counts:
      dataset = self._client_data.create_tf_dataset_for_client(client_id)
      count = int(dataset.cardinality())
      if count < 0:  # Unknown (e.g. a filter): count the batches.
        count = int(dataset.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
      self._counts[client_id] = count
    return self._counts[client_id]
