"""The distributed Skellam mean (`privacy.mechanism='ddp_skellam'`) inside the compiled round.

The mechanism is Agarwal, Kairouz and Liu, "The Skellam Mechanism for
Differentially Private Federated Learning", NeurIPS 2021 (arXiv 2110.04995),
as `fedtff.privacy.ddp.ddp_aggregator` builds it from TFF 0.87's aggregators.
This module computes the same arithmetic, step for step and with TFF's own
functions where TFF has one:

* client: concatenate the update into one vector (`concat_factory`), zero-pad
  it to `d'` (the next power of 2), flip signs by Rademacher variables drawn
  from the rotation seed and apply the fast Walsh-Hadamard transform
  (`HadamardTransformFactory`, TFF's `rotation.sample_rademacher` and
  `hadamard.fast_walsh_hadamard_transform`, unrolled for XLA); clip to L2 norm `C`
  (`clipping_factory`); multiply by the scale `s` and round stochastically
  (`DiscretizationFactory`, `beta=0`: `floor(x) + [u < x - floor(x)]`); assert
  TF Privacy's L1 and L2 bounds and add Skellam noise, `Poisson(l) -
  Poisson(l)` with `2 l` the local variance (`DistributedSkellamSumQuery`);
  reduce into `[-2**(bits-1), 2**(bits-1))` (`ModularClippingSumFactory`);
* server: the modular sum as `SecureModularSumFactory(2**bits,
  symmetric_range=True)` computes it (the sum modulo `2**(bits+1) - 1`,
  shifted into the symmetric range), reduced again into the clipping range;
  divided by `s`, rotated back, cut to `d` coordinates, reshaped, and divided
  by the number of clients (`UnweightedMeanFactory` with a secure count).

The rotation seed is the aggregator's state, as TFF's (`[seed, counter]`, the
counter advancing by one a round), and converts to and from TFF's state: with
the same seed both engines rotate alike. The rounding and the Skellam noise are
drawn by TensorFlow's stateless RNG from the round's noise seed and the
client's index, which the runner derives from a secret drawn from the OS. TFF
seeds its rounding from the clock and fedtff's query draws its noise from the
OS, so neither draw can be repeated here: without noise the engines differ by
the rounding only (at most `1/s` per rotated coordinate and client), and the
noise is checked statistically (tests/test_compiled_ddp.py).
"""

from __future__ import annotations

import collections
import dataclasses
import secrets
from typing import Any, List, NamedTuple, Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.aggregators import rotation

from fedtff.privacy import ddp

_ROUNDING, _NOISE = 0, 1  # Folded into a client's seed: its rounding and its noise draws.


@dataclasses.dataclass(frozen=True)
class Skellam:
  """The distributed Skellam mean's parameters (`fedtff.privacy.ddp.SkellamSumFactory`'s)."""
  params: ddp.SkellamParameters
  clip: float
  bits: int

  @property
  def padded_dim(self) -> int:
    return self.params.padded_dim

  @property
  def clip_range(self):
    """`ModularClippingSumFactory`'s range, `[lower, upper)`."""
    return -(2**(self.bits - 1)), 2**(self.bits - 1)


class Sums(NamedTuple):
  """One round's running sums (the `secure` field of the round's accumulator)."""
  noise_seed: tf.Tensor  # int64 [2]: the round's seed of the rounding and noise draws.
  total: tf.Tensor  # int64 [d']: the clients' modularly clipped integer vectors, summed.
  clipped: tf.Tensor  # int32: the clients `clipping_factory` clipped.


def from_factory(factory: Any) -> Optional[Skellam]:
  """The `Skellam` of `fedtff.privacy.ddp.ddp_aggregator`'s factory, or None for another."""
  if not isinstance(factory, tff.aggregators.UnweightedMeanFactory):
    return None
  value_sum = factory._value_sum_factory  # pylint: disable=protected-access
  if not isinstance(value_sum, ddp.SkellamSumFactory):
    return None
  return Skellam(value_sum.params, value_sum.clip, value_sum.bits)


def initial_state() -> tf.Tensor:
  """A fresh rotation seed `[random, 0]` (TFF draws the first item from the clock)."""
  return tf.constant([secrets.randbits(62), 0], tf.int64)


def initial(skellam: Skellam, noise_seed: tf.Tensor) -> Sums:
  return Sums(tf.convert_to_tensor(noise_seed, tf.int64),
              tf.zeros([skellam.padded_dim], tf.int64), tf.constant(0, tf.int32))


def _check_size(skellam: Skellam, update: List[tf.Tensor]) -> None:
  size = sum(int(np.prod(v.shape)) for v in update)
  if size != skellam.params.dim:
    raise ValueError(f'The distributed Skellam sum was accounted for {skellam.params.dim} '
                     f'coordinates, but the update has {size}.')


def walsh_hadamard(vector: tf.Tensor) -> tf.Tensor:
  """TFF's `hadamard.fast_walsh_hadamard_transform` of one vector, step for step, with
  the steps unrolled (XLA refuses TFF's `tf.cond` between ranks 2 and 3)."""
  dim = int(vector.shape[0])
  if dim == 1:
    return vector
  h_2x2 = tf.constant([[1.0, 1.0], [1.0, -1.0]], dtype=vector.dtype)
  x = tf.reshape(vector, [-1, 2, dim // 2])
  for _ in range(dim.bit_length() - 1):
    x = tf.reshape(tf.matmul(tf.reshape(x, [-1, 2]), h_2x2), [-1, dim // 2, 2])
    x = tf.transpose(x, perm=[0, 2, 1])
  return tf.reshape(x, [dim]) / tf.sqrt(tf.cast(dim, vector.dtype))


def rotate(update: List[tf.Tensor], rotation_seed: tf.Tensor, padded_dim: int) -> tf.Tensor:
  """`concat_factory` then `HadamardTransformFactory`'s client transform (the zero
  padding of a static length, which XLA needs, rather than TFF's computed one)."""
  vector = tf.concat([tf.reshape(tf.cast(v, tf.float32), [-1]) for v in update], axis=0)
  vector = tf.concat([vector, tf.zeros([padded_dim - vector.shape[0]], tf.float32)], axis=0)
  vector *= rotation.sample_rademacher(tf.shape(vector), vector.dtype, rotation_seed)
  return walsh_hadamard(vector)


def rotate_back(vector: tf.Tensor, rotation_seed: tf.Tensor, specs: List[tf.TensorSpec]
               ) -> List[tf.Tensor]:
  """`HadamardTransformFactory`'s server transform, then `concat_factory`'s split."""
  vector = walsh_hadamard(vector)
  vector *= rotation.sample_rademacher(tf.shape(vector), vector.dtype, rotation_seed)
  sizes = [int(np.prod(s.shape)) for s in specs]
  pieces = tf.split(vector[:sum(sizes)], sizes)
  return [tf.cast(tf.reshape(p, s.shape), s.dtype) for p, s in zip(pieces, specs)]


def _clip(vector: tf.Tensor, clip: float):
  """`clipping_factory`'s clip of one tensor (TFF's `robust._clip_by_global_l2_norm`):
  (clipped, whether clipped)."""
  norm = tf.math.sqrt(tf.reduce_sum(tf.stack([tf.norm(vector, ord=2)**2])))
  clip = tf.constant(clip, tf.float32)
  clipped = tf.cond(norm > clip, lambda: vector / (norm / clip), lambda: vector)
  return clipped, tf.cast(norm > clip, tf.int32)


def discretize(vector: tf.Tensor, scale: float, seed: tf.Tensor) -> tf.Tensor:
  """`DiscretizationFactory` with `stochastic=True, beta=0`: scale, round at random, int32."""
  scaled = vector * tf.constant(np.float32(scale))
  floored = tf.floor(scaled)
  uniform = tf.random.stateless_uniform(tf.shape(scaled), seed=seed, maxval=1,
                                        dtype=scaled.dtype)
  return tf.cast(floored + tf.cast(uniform < scaled - floored, scaled.dtype), tf.int32)


def _checked(params: ddp.SkellamParameters, record: tf.Tensor) -> tf.Tensor:
  """`DistributedSkellamSumQuery.preprocess_record`'s asserts of the L1 and L2 bounds."""
  checks = [
      tf.debugging.assert_less_equal(tf.norm(record, ord=1), tf.constant(params.l1_bound,
                                                                         tf.int32),
                                     message=f'L1 norm exceeds {params.l1_bound}.'),
      tf.debugging.assert_less_equal(tf.linalg.global_norm([tf.cast(record, tf.float32)]),
                                     tf.constant(params.l2_bound, tf.float32),
                                     message=f'Global L2 norm exceeds {params.l2_bound}.')]
  with tf.control_dependencies(checks):
    return tf.identity(record)


def add_noise(params: ddp.SkellamParameters, record: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Skellam noise of standard deviation `params.local_stddev`, as two Poisson draws."""
  if params.local_stddev == 0:
    return record
  stddev = tf.constant(np.float32(params.local_stddev), tf.float64)
  lam = 0.5 * stddev * stddev
  poissons = tf.random.stateless_poisson(tf.concat([tf.shape(record), [2]], axis=0),
                                         seed=seed, lam=[lam, lam], dtype=tf.int64)
  return record + tf.cast(poissons[..., 0] - poissons[..., 1], record.dtype)


def modular_clip(value: tf.Tensor, lower: int, upper: int) -> tf.Tensor:
  """`modular_clipping.modular_clip_by_value` on integers: into `[lower, upper)`."""
  width = tf.constant(upper - lower, value.dtype)
  return tf.math.floormod(value - lower, width) + lower


def accumulate(skellam: Skellam, sums: Sums, update: List[tf.Tensor], index: tf.Tensor,
               rotation_seed: tf.Tensor) -> Sums:
  """Adds client `index`'s integer vector (the module docstring's client steps)."""
  _check_size(skellam, update)
  client_seed = tf.random.experimental.stateless_fold_in(sums.noise_seed,
                                                         tf.cast(index, tf.int64))
  vector, clipped = _clip(rotate(update, rotation_seed, skellam.padded_dim), skellam.clip)
  record = discretize(vector, skellam.params.scale,
                      tf.random.experimental.stateless_fold_in(client_seed, _ROUNDING))
  record = add_noise(skellam.params, _checked(skellam.params, record),
                     tf.random.experimental.stateless_fold_in(client_seed, _NOISE))
  record = modular_clip(record, *skellam.clip_range)
  return Sums(sums.noise_seed, sums.total + tf.cast(record, tf.int64), sums.clipped + clipped)


def modular_sum(skellam: Skellam, total: tf.Tensor) -> tf.Tensor:
  """The server's sum: `SecureModularSumFactory(2**bits, symmetric_range=True)`, then the
  modular clip of the aggregate (int32)."""
  modulus = 2**skellam.bits
  wrapped = tf.math.floormod(total, 2 * modulus - 1)
  wrapped -= (2 * modulus - 1) * tf.cast(wrapped >= modulus, wrapped.dtype)
  return tf.cast(modular_clip(wrapped, *skellam.clip_range), tf.int32)


def result(skellam: Skellam, sums: Sums, count: tf.Tensor, rotation_seed: tf.Tensor,
           specs: List[tf.TensorSpec]):
  """The mean of the round and the next rotation seed (TFF's counter plus one)."""
  summed = tf.cast(modular_sum(skellam, sums.total), tf.float32) / tf.constant(
      np.float32(skellam.params.scale))
  mean = [tf.math.divide(v, tf.cast(count, v.dtype))
          for v in rotate_back(summed, rotation_seed, specs)]
  return mean, rotation_seed + tf.constant([0, 1], tf.int64)


def measurements(skellam: Skellam, sums: Sums) -> collections.OrderedDict:
  """The measurements of `ddp_aggregator`'s process, in its nesting."""
  discretize_ = collections.OrderedDict(
      discretize=collections.OrderedDict(dp_query_metrics=collections.OrderedDict(),
                                         dp=collections.OrderedDict(modclip=())))
  clipping = collections.OrderedDict(clipping=discretize_,
                                     clipping_norm=tf.constant(skellam.clip, tf.float32),
                                     clipped_count=sums.clipped)
  zero = tf.constant(0, tf.int32)
  count = collections.OrderedDict(  # SecureSumFactory(1, 0) over the clients' ones.
      secure_upper_clipped_count=zero, secure_lower_clipped_count=zero,
      secure_upper_threshold=tf.constant(1, tf.int32), secure_lower_threshold=zero)
  return collections.OrderedDict(mean_value=collections.OrderedDict(hd=clipping),
                                 mean_count=count)


def to_tff_state(rotation_seed: Any, template: Any) -> Any:
  """TFF's aggregator state `template` with the rotation seed written in.

  The state is `((hadamard inner state, seed), count state)`; after a round
  (counter above 0) the DP query's state is no longer its initial one.
  """
  (inner, _), count_state = template
  seed = np.asarray(rotation_seed, np.int64)
  if seed[1] > 0:
    dp_state = inner['inner_agg']['inner_agg_process']
    inner = _replace_dp_state(inner, dp_state._replace(is_init_state=False))
  return ((inner, seed), count_state)


def _replace_dp_state(inner: Any, dp_state: Any) -> Any:
  discretization = collections.OrderedDict(inner['inner_agg'])
  discretization['inner_agg_process'] = dp_state
  inner = collections.OrderedDict(inner)
  inner['inner_agg'] = discretization
  return inner


def from_tff_state(tff_state: Any) -> tf.Tensor:
  """The rotation seed of TFF's aggregator state."""
  (_, seed), _ = tff_state
  return tf.constant(np.asarray(seed, np.int64), tf.int64)
