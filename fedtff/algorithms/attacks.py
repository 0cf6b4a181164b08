"""Simulated attacks on a fraction of each round's clients, the same on both engines.

Kinds (`KINDS`):

* `label_flipping` (data side): an attacking client trains on its data with
  each label y replaced by C − 1 − y (C classes). Each client of round r is an
  attacker with probability `fraction`, drawn from the client's stateless key
  `fedtff.data.rounds.client_seed(seed, r, client id)` (folded with
  `_LABEL_TAG`), so the draw is per (seed, round, client) and reproducible; the
  dataset function is the same for both engines (`flip_labels_fn`).
* `sign_flipping` (update side): an attacker sends −scale · its update
  (scale 1 unless `scale` is set).
* `model_replacement` (update side; Bagdasaryan, Veit, Hua, Estrin,
  Shmatikov, "How To Backdoor Federated Learning", AISTATS 2020, arXiv
  1807.00459): the attacker's target model X is the model it trains locally
  from the global model G on its own data, and it sends the boosted update
  γ (X − G) (fedtff's deltas are G − X, scaled alike), γ = n / η so that the
  mean of n updates applied with server learning rate η replaces G by about X.
  `scale` is γ; unset, γ = n, the cohort size (η = 1, FedAvg's server SGD).

Update-side attacks are applied by the robust aggregation wrapper
(`fedtff.algorithms.robust`) to the stacked updates of the round at the server,
before the rule, on both engines: exactly ⌊fraction · n + 1/2⌋ of the n
clients attack, at the positions (in the cohort's order) of the least of n
stateless uniform draws seeded by (seed, round), the round counted from 0 in
the aggregator's state.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Callable, Optional

import tensorflow as tf

KINDS = ('none', 'label_flipping', 'sign_flipping', 'model_replacement')
UPDATE_KINDS = ('sign_flipping', 'model_replacement')
_LABEL_TAG = 7741  # Folded into a client's key: its label-flipping draw.
_UPDATE_TAG = 7742  # Folded into (0, seed): the rounds' update-attack draws.


@dataclasses.dataclass(frozen=True)
class AttackSpec:
  """An attack on a fraction of each round's clients.

  Attributes:
    kind: One of `KINDS`.
    fraction: The share of each round's clients that attack, in [0, 1].
    scale: sign_flipping: the attacker sends −scale · update (None: 1);
      model_replacement: γ (None: the cohort size).
    seed: The run's seed; the draws are stateless from it.
  """
  kind: str = 'none'
  fraction: float = 0.0
  scale: Optional[float] = None
  seed: int = 0

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f'Unknown attack {self.kind!r}; expected one of {", ".join(KINDS)}.')
    if not 0.0 <= self.fraction <= 1.0:
      raise ValueError(f'The attack fraction must be in [0, 1], got {self.fraction}.')
    if self.scale is not None and self.kind not in UPDATE_KINDS:
      raise ValueError(f'The attack scale applies to {" and ".join(UPDATE_KINDS)}, got kind '
                       f'{self.kind!r}.')

  @property
  def on_updates(self) -> bool:
    return self.kind in UPDATE_KINDS


def attacker_mask(spec: AttackSpec, round_index: tf.Tensor, num_clients: tf.Tensor) -> tf.Tensor:
  """bool `[n]`: which positions of round `round_index`'s cohort attack (see module doc)."""
  base = tf.constant([0, spec.seed], tf.int64)
  key = tf.random.experimental.stateless_fold_in(
      tf.random.experimental.stateless_fold_in(base, _UPDATE_TAG), tf.cast(round_index, tf.int64))
  draws = tf.random.stateless_uniform([num_clients], seed=key)
  count = tf.cast(tf.floor(spec.fraction * tf.cast(num_clients, tf.float64) + 0.5), tf.int32)
  positions = tf.argsort(draws, stable=True)[:count]
  return tf.scatter_nd(positions[:, None], tf.ones_like(positions, tf.bool), [num_clients])


def attack_updates(spec: AttackSpec, stack: tf.Tensor, round_index: tf.Tensor) -> tf.Tensor:
  """The stacked updates `[n, ...]` with the round's attackers' updates replaced."""
  if not spec.on_updates:
    return stack
  n = tf.shape(stack)[0]
  if spec.kind == 'sign_flipping':
    factor = -(1.0 if spec.scale is None else spec.scale)
  else:
    factor = tf.cast(n, stack.dtype) if spec.scale is None else spec.scale
  mask = tf.reshape(attacker_mask(spec, round_index, n),
                    tf.concat([[n], tf.ones([tf.rank(stack) - 1], tf.int32)], 0))
  return tf.where(mask, stack * tf.cast(factor, stack.dtype), stack)


def is_label_flipper(spec: AttackSpec, key: tf.Tensor) -> tf.Tensor:
  """Whether the client with round key `key` flips its labels (bool scalar)."""
  seed = tf.random.experimental.stateless_fold_in(key, _LABEL_TAG)
  return tf.random.stateless_uniform([], seed=seed) < spec.fraction


def flip_labels_fn(preprocess_fn: Callable[..., tf.data.Dataset], spec: AttackSpec,
                   num_classes: int) -> Callable[..., tf.data.Dataset]:
  """`preprocess_fn(dataset, seed=key)` whose attackers' labels y become C − 1 − y.

  The datasets' elements are `OrderedDict(x=..., y=...)` (fedtff's datasets) or
  `(x, y)` pairs, batched or not.
  """
  def preprocess(dataset: tf.data.Dataset, *, seed: tf.Tensor) -> tf.data.Dataset:
    flips = is_label_flipper(spec, seed)
    flipped = lambda y: tf.where(flips, tf.cast(num_classes - 1, y.dtype) - y, y)
    def flip(*element):
      if len(element) == 2:
        return element[0], flipped(element[1])
      element = collections.OrderedDict(element[0])
      element['y'] = flipped(element['y'])
      return element
    return preprocess_fn(dataset, seed=seed).map(flip)
  return preprocess
