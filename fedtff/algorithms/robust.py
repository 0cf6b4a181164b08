"""Byzantine-robust aggregation rules, written once for both engines.

Each rule is a pure TensorFlow function of the cohort's client updates stacked
into one tensor `[num_clients, ...]` (unweighted, as in the papers), returning
one update of the shape of a row. The TFF engine's `RobustFactory` gathers the
clients' updates at the server (`tff.federated_aggregate` with a concatenating
accumulator: TFF 0.87 has no `federated_collect`) and applies the rule; the
compiled engine (`fedtff.compiled.aggregation`) keeps the round's updates in a
`tf.TensorArray` and applies the same function.

Rules (`RULES`):

* `median`: coordinate-wise median (Yin, Chen, Ramchandran, Bartlett,
  "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates",
  ICML 2018, arXiv 1803.01498); with an even count, the mean of the two middle
  values (NumPy's `median`).
* `trimmed_mean`: coordinate-wise β-trimmed mean (Yin et al. 2018): per
  coordinate, the largest and the smallest ⌊β n⌋ values are dropped and the
  rest averaged.
* `krum`, `multi_krum`: Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine
  Learning with Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017.
  Each update's score is the sum of its squared L2 distances to its n − f − 2
  nearest other updates; Krum returns the update of least score, Multi-Krum
  the mean of the m of least score (scores computed once, as Flower's
  `aggregate_krum`). Ties go to the lower client index. Needs n > 2f + 2.
* `bulyan`: El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of
  Distributed Learning in Byzantium", ICML 2018, arXiv 1802.07927. θ = n − 2f
  updates are selected by Krum applied recursively (each time on the updates
  not yet selected, with n' − f − 2 neighbours, at least 1, n' the remaining
  count, as Flower's `aggregate_bulyan`); then, per coordinate, the mean of the
  β = θ − 2f selected values closest to their median. Needs n ≥ 4f + 3.
* `geometric_median`: RFA (Pillutla, Kakade, Harchaoui, "Robust Aggregation for
  Federated Learning", IEEE Trans. Signal Processing 2022, arXiv 1912.13445):
  the smoothed Weiszfeld algorithm from the mean, a fixed number of iterations
  `v <- sum_i b_i w_i / sum_i b_i`, `b_i = 1 / max(nu, ||v - w_i||)`.
* `mean`: the plain mean (FedAvg's unweighted mean; used when an attack runs
  with `aggregator.kind='mean'`).

Distances and norms are over the whole flattened update (all model tensors).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fedtff.algorithms import attacks

RULES = ('median', 'trimmed_mean', 'krum', 'multi_krum', 'bulyan', 'geometric_median')
# The `Rule` options, named as `AggregatorSpec`'s fields and the config's aggregator.* keys.
OPTIONS = ('trim_fraction', 'byzantine_clients', 'krum_selected', 'rfa_iterations',
           'rfa_smoothing')


@dataclasses.dataclass(frozen=True)
class Rule:
  """A robust rule and its options.

  Attributes:
    name: One of `RULES`, or 'mean'.
    trim_fraction: β of `trimmed_mean`, in [0, 0.5).
    byzantine_clients: f, the assumed number of Byzantine clients (Krum,
      Multi-Krum, Bulyan).
    krum_selected: m of `multi_krum`; 0 is n − f.
    rfa_iterations: Weiszfeld iterations of `geometric_median`.
    rfa_smoothing: ν of `geometric_median`.
  """
  name: str
  trim_fraction: float = 0.1
  byzantine_clients: int = 1
  krum_selected: int = 0
  rfa_iterations: int = 3
  rfa_smoothing: float = 1e-6

  def __post_init__(self):
    if self.name not in RULES + ('mean',):
      raise ValueError(f'Unknown robust rule {self.name!r}; expected one of {", ".join(RULES)}.')
    if not 0 <= self.trim_fraction < 0.5:
      raise ValueError(f'trim_fraction must be in [0, 0.5), got {self.trim_fraction}.')
    if min(self.byzantine_clients, self.krum_selected, self.rfa_iterations - 1) < 0:
      raise ValueError('byzantine_clients and krum_selected must be at least 0 and '
                       f'rfa_iterations at least 1, got {self.byzantine_clients}, '
                       f'{self.krum_selected}, {self.rfa_iterations}.')
    if not self.rfa_smoothing > 0:
      raise ValueError(f'rfa_smoothing (nu) must be positive, got {self.rfa_smoothing}.')

  def min_clients(self) -> int:
    """The smallest cohort the rule takes (Krum n > 2f + 2, Bulyan n ≥ 4f + 3)."""
    f = self.byzantine_clients
    if self.name in ('krum', 'multi_krum'):
      return max(2 * f + 3, self.krum_selected if self.name == 'multi_krum' else 1)
    if self.name == 'bulyan':
      return 4 * f + 3
    return 1

  def check_cohort(self, num_clients: int) -> None:
    """Refuses a cohort too small for the rule, naming the numbers."""
    needed = self.min_clients()
    if num_clients < needed:
      why = {'krum': f'n > 2f + 2 with f={self.byzantine_clients}',
             'multi_krum': f'n > 2f + 2 with f={self.byzantine_clients} and n ≥ m='
                           f'{self.krum_selected}',
             'bulyan': f'n ≥ 4f + 3 with f={self.byzantine_clients}'}.get(self.name, 'n ≥ 1')
      raise ValueError(f'The {self.name} aggregator needs at least {needed} clients per round '
                       f'({why}), got {num_clients}.')


def _flat(stack: tf.Tensor) -> tf.Tensor:
  return tf.reshape(stack, [tf.shape(stack)[0], -1])


def _middle(stack: tf.Tensor, start: tf.Tensor, stop: tf.Tensor) -> tf.Tensor:
  """The mean over clients of the sorted values at ranks [start, stop) per coordinate."""
  ordered = tf.sort(stack, axis=0)
  return tf.reduce_mean(ordered[start:stop], axis=0)


def coordinate_median(stack: tf.Tensor) -> tf.Tensor:
  """Coordinate-wise median over axis 0 (Yin et al. 2018)."""
  n = tf.shape(stack)[0]
  return _middle(stack, (n - 1) // 2, n // 2 + 1)


def trimmed_mean(stack: tf.Tensor, trim_fraction: float) -> tf.Tensor:
  """Coordinate-wise mean without the ⌊β n⌋ largest and smallest values (Yin et al. 2018)."""
  n = tf.shape(stack)[0]
  k = tf.cast(tf.floor(trim_fraction * tf.cast(n, tf.float64)), tf.int32)
  return _middle(stack, k, n - k)


def squared_distances(stack: tf.Tensor) -> tf.Tensor:
  """`[n, n]` squared L2 distances between the flattened updates."""
  flat = _flat(stack)
  diff = flat[:, None, :] - flat[None, :, :]
  return tf.reduce_sum(tf.square(diff), axis=-1)


def krum_scores(distances: tf.Tensor, active: tf.Tensor, byzantine_clients: int) -> tf.Tensor:
  """Each active update's sum of squared distances to its k nearest other active
  updates, k = n' − f − 2 clamped to [1, n' − 1] (n' active); inactive: +inf."""
  n = tf.shape(distances)[0]
  remaining = tf.reduce_sum(tf.cast(active, tf.int32))
  k = tf.minimum(tf.maximum(remaining - byzantine_clients - 2, 1), remaining - 1)
  pair = active[:, None] & active[None, :] & ~tf.eye(n, dtype=tf.bool)
  ordered = tf.sort(tf.where(pair, distances, tf.constant(float('inf'), distances.dtype)), axis=1)
  nearest = tf.range(n)[None, :] < k
  scores = tf.reduce_sum(tf.where(nearest, ordered, tf.zeros_like(ordered)), axis=1)
  return tf.where(active, scores, tf.constant(float('inf'), distances.dtype))


def _least(scores: tf.Tensor, count) -> tf.Tensor:
  """The indices of the `count` least scores, ties to the lower index."""
  return tf.argsort(scores, stable=True)[:count]


def krum(stack: tf.Tensor, byzantine_clients: int) -> tf.Tensor:
  """Krum (Blanchard et al. 2017): the update of least score."""
  return multi_krum(stack, byzantine_clients, 1)


def multi_krum(stack: tf.Tensor, byzantine_clients: int, selected: int) -> tf.Tensor:
  """Multi-Krum (Blanchard et al. 2017): the mean of the `selected` updates of least
  score (`selected` 0: n − f)."""
  n = tf.shape(stack)[0]
  if not selected:
    selected = n - byzantine_clients
  active = tf.ones([n], tf.bool)
  scores = krum_scores(squared_distances(stack), active, byzantine_clients)
  return tf.reduce_mean(tf.gather(stack, _least(scores, selected)), axis=0)


def bulyan_selection(stack: tf.Tensor, byzantine_clients: int) -> tf.Tensor:
  """The indices of the θ = n − 2f updates recursive Krum selects, in order."""
  n = tf.shape(stack)[0]
  distances = squared_distances(stack)
  theta = n - 2 * byzantine_clients

  def select(i, active, chosen):
    best = tf.cast(tf.argmin(krum_scores(distances, active, byzantine_clients)), tf.int32)
    return (i + 1, tf.tensor_scatter_nd_update(active, [[best]], [False]),
            chosen.write(i, best))

  _, _, chosen = tf.while_loop(lambda i, *_: i < theta, select,
                               (tf.constant(0), tf.ones([n], tf.bool),
                                tf.TensorArray(tf.int32, size=theta)))
  return chosen.stack()


def bulyan(stack: tf.Tensor, byzantine_clients: int) -> tf.Tensor:
  """Bulyan (El Mhamdi et al. 2018): recursive Krum, then per coordinate the mean of
  the β = θ − 2f selected values closest to their median."""
  selected = _flat(tf.gather(stack, bulyan_selection(stack, byzantine_clients)))
  beta = tf.shape(selected)[0] - 2 * byzantine_clients
  gap = tf.transpose(tf.abs(selected - coordinate_median(selected)[None, :]))  # [d, θ]
  closest = tf.argsort(gap, axis=1, stable=True)[:, :beta]
  values = tf.gather(tf.transpose(selected), closest, batch_dims=1)  # [d, β]
  return tf.reshape(tf.reduce_mean(values, axis=1), tf.shape(stack)[1:])


def geometric_median(stack: tf.Tensor, iterations: int, smoothing: float) -> tf.Tensor:
  """RFA's smoothed Weiszfeld geometric median (Pillutla et al. 2022), from the mean."""
  flat = _flat(stack)
  median = tf.reduce_mean(flat, axis=0)
  for _ in range(iterations):
    distance = tf.norm(flat - median[None, :], axis=1)
    beta = 1.0 / tf.maximum(tf.cast(smoothing, flat.dtype), distance)
    median = tf.reduce_sum(beta[:, None] * flat, axis=0) / tf.reduce_sum(beta)
  return tf.reshape(median, tf.shape(stack)[1:])


def aggregate(rule: Rule, stack: tf.Tensor) -> tf.Tensor:
  """`rule` applied to the stacked updates `[num_clients, ...]`."""
  if rule.name == 'median':
    return coordinate_median(stack)
  if rule.name == 'trimmed_mean':
    return trimmed_mean(stack, rule.trim_fraction)
  if rule.name == 'krum':
    return krum(stack, rule.byzantine_clients)
  if rule.name == 'multi_krum':
    return multi_krum(stack, rule.byzantine_clients, rule.krum_selected)
  if rule.name == 'bulyan':
    return bulyan(stack, rule.byzantine_clients)
  if rule.name == 'geometric_median':
    return geometric_median(stack, rule.rfa_iterations, rule.rfa_smoothing)
  return tf.reduce_mean(stack, axis=0)


def rule_of(spec) -> Optional[Rule]:
  """The `Rule` of an `AggregatorSpec` whose kind is a robust rule, else None."""
  if spec is None or spec.kind not in RULES:
    return None
  return Rule(spec.kind, **{key: getattr(spec, key) for key in OPTIONS})


def flatten(values: Any) -> tf.Tensor:
  """A structure of float32 tensors as one vector (the row of a client in the stack)."""
  return tf.concat([tf.reshape(v, [-1]) for v in tf.nest.flatten(values)], 0)


def unflatten(vector: tf.Tensor, specs: Any) -> Any:
  """The inverse of `flatten` for tensors shaped like `specs`."""
  flat_specs = tf.nest.flatten(specs)
  pieces = tf.split(vector, [s.shape.num_elements() for s in flat_specs])
  return tf.nest.pack_sequence_as(specs, [tf.reshape(p, s.shape) for p, s in
                                          zip(pieces, flat_specs)])


def server_update(rule: Rule, attack: Optional[attacks.AttackSpec], stack: tf.Tensor,
                  round_index: tf.Tensor) -> tf.Tensor:
  """The round's aggregate of the stacked flattened updates `[n, d]`: the attack's
  update transform (if any), then the rule. Both engines call this."""
  check = tf.debugging.assert_greater_equal(
      tf.shape(stack)[0], rule.min_clients(),
      message=f'The {rule.name} aggregator needs at least {rule.min_clients()} clients per round')
  with tf.control_dependencies([check] if check is not None else []):
    stack = tf.identity(stack)
  if attack is not None:
    stack = attacks.attack_updates(attack, stack, round_index)
  return aggregate(rule, stack)


def initial_state(attack: Optional[attacks.AttackSpec]) -> Any:
  """The aggregator state: with an update attack, the 0-based round (int32); else ()."""
  return np.int32(0) if attack is not None and attack.on_updates else ()


class RobustFactory(tff.aggregators.UnweightedAggregationFactory):
  """A robust rule (and an update attack) as a TFF aggregator.

  The clients' flattened updates are gathered at the server by
  `tff.federated_aggregate` whose accumulator concatenates them into
  `[n, d]` (in the order the runtime feeds them: the cohort's order on TFF's
  local runtime, which `tests/test_robust.py` checks against the compiled
  engine), then `server_update` gives the aggregate. Measurements: ().
  """

  def __init__(self, rule: Rule, attack: Optional[attacks.AttackSpec] = None):
    self._rule = rule
    self._attack = attack if attack is not None and attack.on_updates else None

  def create(self, value_type: tff.types.Type) -> tff.templates.AggregationProcess:
    specs = tff.types.type_to_tf_tensor_specs(value_type)
    size = sum(s.shape.num_elements() for s in tf.nest.flatten(specs))
    row_type = tff.TensorType(np.float32, [size])
    stack_type = tff.TensorType(np.float32, [None, size])
    rule, attack = self._rule, self._attack
    flatten_fn = tff.tensorflow.computation(value_type)(flatten)
    zero = tff.tensorflow.computation(lambda: tf.zeros([0, size], tf.float32))
    append = tff.tensorflow.computation(stack_type, row_type)(
        lambda stack, row: tf.concat([stack, row[None, :]], 0))
    merge = tff.tensorflow.computation(stack_type, stack_type)(
        lambda a, b: tf.concat([a, b], 0))
    report = tff.tensorflow.computation(stack_type)(lambda stack: stack)
    state = initial_state(attack)

    @tff.federated_computation()
    def init_fn():
      return tff.federated_value(state, tff.SERVER)


    @tff.tensorflow.computation(stack_type, tf.int32)
    def attacked_fn(stack, round_index):
      return unflatten(server_update(rule, attack, stack, round_index), specs)

    @tff.tensorflow.computation(stack_type)
    def apply_fn(stack):
      return unflatten(server_update(rule, None, stack, 0), specs)

    @tff.tensorflow.computation(tf.int32)
    def next_round_fn(round_index):
      return round_index + 1

    @tff.federated_computation(init_fn.type_signature.result,
                               tff.FederatedType(value_type, tff.CLIENTS))
    def next_fn(state, value):
      stack = tff.federated_aggregate(tff.federated_map(flatten_fn, value), zero(), append, merge,
                                      report)
      if attack is None:
        return tff.templates.MeasuredProcessOutput(
            state, tff.federated_map(apply_fn, stack), tff.federated_value((), tff.SERVER))
      return tff.templates.MeasuredProcessOutput(
          tff.federated_map(next_round_fn, state), tff.federated_map(attacked_fn, (stack, state)),
          tff.federated_value((), tff.SERVER))

    return tff.templates.AggregationProcess(init_fn, next_fn)
