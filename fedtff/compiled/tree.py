"""DP-FTRL's tree-aggregated noise on the compiled engine.

DP-FTRL (Kairouz, McMahan, Song, Thakkar, Thakurta and Xu, "Practical and
Private (Deep) Learning without Sampling or Shuffling", ICML 2021, arXiv
2103.00039) releases noised prefix sums of the rounds' clipped update sums,
the noise of each prefix sum drawn from a binary tree of Gaussian nodes. TFF
runs it as `tff.aggregators.DifferentiallyPrivateFactory.tree_aggregation`:
TF Privacy's `TreeResidualSumQuery` (noise per node `noise_multiplier *
clip`, Honaker's efficient tree by default) inside a `NormalizedQuery` that
divides by `clients_per_round`. A round's result is

    ((sum of clipped updates + cumsum_t) - cumsum_{t-1}) / clients_per_round

where `cumsum_t` is the tree's noise for the prefix sum of round `t`.

The tree's noise does not depend on the clients' updates, so the compiled
engine advances the tree outside its XLA-compiled round (`advance`), by TF
Privacy's own tree aggregator on TF Privacy's state: the nodes are drawn by
`tf.random.stateless_normal` from the seeds in that state, so given the same
state the noise, and the new state, are TFF's bit for bit. The round graph
receives `(cumsum_t, cumsum_{t-1})` (`RoundNoise`) in place of the
aggregator state, clips and sums the updates as DP-FedAvg does
(`fedtff.compiled.aggregation`), and adds them in TFF's order (`mean`).

The compiled state's `aggregator` field is the query's global state
(`TreeResidualSumQuery.GlobalState`: the tree's level buffers, whose leading
dimension is the number of stored levels and changes from round to round, the
noise seeds and standard deviation, the clip norm and the previous
`cumsum`), the `numerator_state` of TFF's aggregator state.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, List, NamedTuple, Optional, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
import tensorflow_privacy as tfp
from tensorflow_federated.python.aggregators import sum_factory


class RoundNoise(NamedTuple):
  """What a round adds to its clipped sum: TFF's `cumsum_t - cumsum_{t-1}`."""
  cumsum: List[tf.Tensor]
  previous: List[tf.Tensor]


@dataclasses.dataclass(frozen=True)
class TreeAggregation:
  """A `DifferentiallyPrivateFactory.tree_aggregation`, as the compiled engine runs it.

  Attributes:
    query: TF Privacy's `TreeResidualSumQuery` of the factory (its tree
      aggregator advances the noise; its initial state starts a tree).
    denominator: `clients_per_round`, what the noised sum is divided by.
    clip_norm: The L2 clip norm of each update.
    noise_stddev: The standard deviation of each tree node.
  """
  query: Any
  denominator: float
  clip_norm: float
  noise_stddev: float

  def initial_state(self) -> Any:
    """A new tree: TF Privacy's initial global state (seeded by the factory's
    `noise_seed`, which `fedtff.privacy.ftrl.ftrl_aggregator` draws from the OS)."""
    return _tensors(self.query.initial_global_state())

  @functools.cached_property
  def advance(self):
    """`state -> (RoundNoise, state after the round)`, built once (`build_advance`)."""
    return build_advance(self)

  def round_noise_template(self, state: Any) -> RoundNoise:
    """A `RoundNoise` of the shapes every round's has (from a state)."""
    zeros = [tf.zeros_like(p) for p in state.previous_tree_noise]
    return RoundNoise(zeros, zeros)


def _tensors(structure: Any) -> Any:
  return tf.nest.map_structure(tf.convert_to_tensor, structure)


def from_factory(factory: Any) -> Optional[TreeAggregation]:
  """The `TreeAggregation` of a `tree_aggregation` factory, or None for any other.

  Raises:
    ValueError: For a tree aggregation the compiled engine does not run
      (another record aggregation factory than the plain sum).
  """
  if not isinstance(factory, tff.aggregators.DifferentiallyPrivateFactory):
    return None
  query = factory._query  # pylint: disable=protected-access
  numerator = getattr(query, '_numerator', None)
  if not (isinstance(query, tfp.NormalizedQuery)
          and isinstance(numerator, tfp.TreeResidualSumQuery)):
    return None
  if type(factory._record_aggregation_factory) is not sum_factory.SumFactory:  # pylint: disable=protected-access
    raise ValueError('The compiled engine runs DP-FTRL tree aggregation with the plain sum of '
                     "records only; use engine='tff'.")
  generator = numerator._tree_aggregator.value_generator  # pylint: disable=protected-access
  if not isinstance(generator, tfp.tree_aggregation.GaussianNoiseGenerator):
    raise ValueError("The compiled engine runs DP-FTRL with Gaussian tree noise only; use "
                     "engine='tff'.")
  return TreeAggregation(
      query=numerator, denominator=float(query._denominator),  # pylint: disable=protected-access
      clip_norm=float(numerator._clip_value),  # pylint: disable=protected-access
      noise_stddev=float(generator._noise_std))  # pylint: disable=protected-access


def _state_signature(tree: TreeAggregation) -> Any:
  """The specs of every tree state: the level buffers' leading dimension varies."""
  state = tree.query.initial_global_state()
  spec = lambda t: tf.TensorSpec.from_tensor(tf.convert_to_tensor(t))
  levels = lambda t: tf.TensorSpec([None] + list(t.shape[1:]), t.dtype)
  tree_state = state.tree_state
  return tf.nest.map_structure(spec, state)._replace(tree_state=tf.nest.map_structure(
      spec, tree_state)._replace(
          level_buffer=[levels(t) for t in tree_state.level_buffer],
          level_buffer_idx=levels(tree_state.level_buffer_idx)))


def build_advance(tree: TreeAggregation):
  """`state -> (RoundNoise, state after the round)`: TF Privacy's tree step, as a
  `tf.function` that is not XLA-compiled (the level buffers change shape)."""
  aggregator = tree.query._tree_aggregator  # pylint: disable=protected-access

  @tf.function(autograph=False, input_signature=[_state_signature(tree)])
  def advance(state):
    cumsum, tree_state = aggregator.get_cumsum_and_update(state.tree_state)
    noise = RoundNoise(list(cumsum), list(state.previous_tree_noise))
    return noise, state._replace(tree_state=tree_state, previous_tree_noise=list(cumsum))

  return advance


def mean(tree: TreeAggregation, value_sum: List[tf.Tensor], noise: RoundNoise
        ) -> List[tf.Tensor]:
  """The noised mean: `TreeResidualSumQuery.get_noised_result`'s `a + b - c`, then
  `NormalizedQuery`'s division by `clients_per_round`."""
  return [tf.truediv(s + b - c, tf.cast(tree.denominator, s.dtype))
          for s, b, c in zip(value_sum, noise.cumsum, noise.previous)]


def measurements(tree: TreeAggregation) -> collections.OrderedDict:
  """TFF's DP measurements of tree aggregation (the query's clip)."""
  return collections.OrderedDict(
      dp_query_metrics=collections.OrderedDict(
          tree_agg_dpftrl_clip=tf.constant(tree.clip_norm, tf.float32)),
      dp=())


def to_tff_state(state: Any, template: Any) -> Any:
  """TFF's aggregator state `template` (a `DPAggregatorState`) holding `state`."""
  query_state = template.query_state
  numpy = tf.nest.map_structure(
      lambda t: t.numpy() if tf.is_tensor(t) else np.asarray(t), state)
  return template._replace(query_state=query_state._replace(numerator_state=numpy))


def from_tff_state(tree: TreeAggregation, tff_state: Any) -> Any:
  """The compiled state's tree state from TFF's aggregator state."""
  numerator = tff_state.query_state.numerator_state
  template = tree.query.initial_global_state()
  if len(tf.nest.flatten(numerator)) != len(tf.nest.flatten(template)):
    raise ValueError('The TFF aggregator state does not hold this DP-FTRL tree state.')
  leaves = [tf.convert_to_tensor(np.asarray(leaf), like.dtype) for like, leaf in zip(
      tf.nest.flatten(template), tf.nest.flatten(numerator))]
  return tf.nest.pack_sequence_as(template, leaves)
