"""A TFF sum whose partial sums are masked by the sites' pairwise masks.

The aggregation side of Bonawitz et al., "Practical Secure Aggregation for
Privacy-Preserving Machine Learning" (CCS 2017), for sites that each run one
TFF worker (docs/cross_silo.md); the masks come from
`fedtff.execution.secagg`.

Clients flatten their value and quantize it to fixed point: q = round(x·2^s),
an int64, taken mod 2^62. The sum is ONE `tff.federated_aggregate` whose
`zero` reads the site's mask from the relative path `secagg/<stream>.bin`.
Split over workers (`fedtff.execution.distributed`), TFF's mergeable form runs
`zero` once per worker in `up_to_merge` (tensorflow_federated/python/core/
backends/native/mergeable_comp_compiler.py), so each site returns
mask_i + Σ q mod 2^62, uniformly distributed to whoever lacks the site's pair
keys. `merge` adds mod 2^62 (both terms are below 2^62, so their int64 sum
cannot overflow); the masks cancel, and `report` lifts the sum to
[-2^61, 2^61) and divides by 2^s. Each mask has one more element than the
value, a check lane the clients leave at 0: it sums to 0 only if every site of
the round added its mask exactly once, so a site left out of the round (a
worker given no clients) or a stale mask fails the round instead of
corrupting the sum.

Range and error, with the defaults (scale_bits=24, client_bits=16): every
client value must satisfy |x| < 2^(61 - 24 - 16) = 2^21 = 2,097,152 and a
round may hold at most 2^16 clients, so the sum never wraps; anything else
(or a NaN or infinity) fails the round with a `tf.debugging` error naming the
stream, never a wrapped sum. Rounding costs at most 2^-25 ≈ 3.0e-8 per client
value, so a weighted mean of float32 deltas (weights ≥ 1) is within 3e-8 of
the exact one.
"""

from __future__ import annotations

from typing import Dict

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fedtff.execution import secagg


def _flat_tensor_types(value_type) -> list:
  """The TensorTypes of `value_type` in flatten order; raises unless all are float and static."""
  flat = tff.structure.flatten(value_type) if isinstance(value_type, tff.StructType) else [
      value_type]
  for tensor_type in flat:
    if (not isinstance(tensor_type, tff.TensorType)
        or not np.issubdtype(tensor_type.dtype, np.floating)
        or tensor_type.shape is None or None in tensor_type.shape):
      raise TypeError(f'MaskedSumFactory sums structures of floating tensors of static shape; '
                      f'got {value_type}.')
  return flat


def num_elements(value_type) -> int:
  """How many numbers a value of `value_type` flattens to (a stream's mask length)."""
  return int(sum(_size(t) for t in _flat_tensor_types(value_type)))


def _size(tensor_type) -> int:
  return int(np.prod(tensor_type.shape, dtype=np.int64))


class MaskedSumFactory(tff.aggregators.UnweightedAggregationFactory):
  """Sums client values in fixed point, each site's partial sum masked (see module docstring).

  Args:
    stream: The mask stream; the site's mask is read from `secagg/<stream>.bin`
      relative to its worker's working directory. Give each aggregation of a
      round its own stream.
    scale_bits: Fixed-point scale 2^scale_bits.
    client_bits: At most 2^client_bits clients per round.
    modulus_bits: The masks and sums live mod 2^modulus_bits (62: the sum of
      two such values fits in an int64).
  """

  def __init__(self, stream: str, *, scale_bits: int = 24, client_bits: int = 16,
               modulus_bits: int = 62):
    if not 2 <= modulus_bits <= 62:
      raise ValueError(f'modulus_bits must be in [2, 62], got {modulus_bits}.')
    if scale_bits < 0 or client_bits < 0 or scale_bits + client_bits > modulus_bits - 1:
      raise ValueError(f'scale_bits ({scale_bits}) and client_bits ({client_bits}) must be '
                       f'nonnegative with a sum of at most modulus_bits - 1 ({modulus_bits - 1}).')
    secagg.check_streams({stream: 1})
    self.stream = stream
    self.path = f'{secagg.MASK_DIR}/{stream}.bin'
    self.scale_bits, self.client_bits, self.modulus_bits = scale_bits, client_bits, modulus_bits
    self.bound = 2.0 ** (modulus_bits - 1 - client_bits - scale_bits)

  def stream_length(self, value_type) -> int:
    """The number of int64 mask elements this stream needs for `value_type`.

    One per number of the flattened value, plus a check lane that clients
    leave alone: the masks alone sum there, to 0 exactly when every site of
    the round added its mask once (else the round fails, see `_dequantize`).
    """
    return num_elements(value_type) + 1

  def create(self, value_type) -> tff.templates.AggregationProcess:
    length = num_elements(value_type)
    quantize, zero, accumulate, merge, report = self._computations(value_type, length)

    @tff.federated_computation()
    def init_fn():
      return tff.federated_value((), tff.SERVER)

    @tff.federated_computation(init_fn.type_signature.result,
                               tff.FederatedType(value_type, tff.CLIENTS))
    def next_fn(state, value):
      summed = tff.federated_aggregate(tff.federated_map(quantize, value), zero(), accumulate,
                                       merge, report)
      return tff.templates.MeasuredProcessOutput(state, summed,
                                                 tff.federated_value((), tff.SERVER))

    return tff.templates.AggregationProcess(init_fn, next_fn)

  def _computations(self, value_type, length: int):
    flat_types = _flat_tensor_types(value_type)
    modulus_mask = (1 << self.modulus_bits) - 1
    # (masked sums, check lane, client count); see `stream_length`.
    accumulator_type = (tff.TensorType(np.int64, [length]), tff.TensorType(np.int64),
                        tff.TensorType(np.int64))

    @tff.tensorflow.computation(value_type)
    def quantize(value):
      flat = [value] if isinstance(value_type, tff.TensorType) else tff.structure.flatten(value)
      joined = tf.concat([tf.reshape(tf.cast(t, tf.float64), [-1]) for t in flat], 0)
      return self._fixed_point(joined, modulus_mask)

    @tff.tensorflow.computation
    def zero():
      mask = self._read_mask(length + 1, modulus_mask)
      return mask[:length], mask[length], tf.constant(0, tf.int64)

    @tff.tensorflow.computation(accumulator_type, accumulator_type[0])
    def accumulate(accumulator, quantized):
      summed, check, count = accumulator
      return tf.bitwise.bitwise_and(summed + quantized, modulus_mask), check, count + 1

    @tff.tensorflow.computation(accumulator_type, accumulator_type)
    def merge(a, b):
      return (tf.bitwise.bitwise_and(a[0] + b[0], modulus_mask),
              tf.bitwise.bitwise_and(a[1] + b[1], modulus_mask), a[2] + b[2])

    @tff.tensorflow.computation(accumulator_type)
    def report(accumulator):
      values = self._dequantize(*accumulator, modulus_mask)
      parts = tf.split(values, [_size(t) for t in flat_types])
      flat = [tf.cast(tf.reshape(p, t.shape), t.dtype) for p, t in zip(parts, flat_types)]
      if isinstance(value_type, tff.TensorType):
        return flat[0]
      return tff.types.type_to_py_container(tff.structure.pack_sequence_as(value_type, flat),
                                            value_type)

    return quantize, zero, accumulate, merge, report

  def _fixed_point(self, values: tf.Tensor, modulus_mask: int) -> tf.Tensor:
    """round(values·2^s) mod 2^modulus_bits; fails unless every |value| < bound."""
    in_range = tf.debugging.Assert(tf.reduce_all(tf.abs(values) < self.bound), [
        f'MaskedSumFactory stream={self.stream}: a client value is NaN, infinite or not '
        f'below {self.bound:g} in magnitude, which the fixed point (scale 2^{self.scale_bits}, '
        f'mod 2^{self.modulus_bits}) cannot sum; largest magnitude:',
        tf.reduce_max(tf.abs(values))], name='masked_sum_range')
    with tf.control_dependencies([in_range]):
      scaled = tf.cast(tf.round(values * 2.0 ** self.scale_bits), tf.int64)
    return tf.bitwise.bitwise_and(scaled, modulus_mask)

  def _read_mask(self, length: int, modulus_mask: int) -> tf.Tensor:
    """The site's mask, read when the round runs (never folded into the graph)."""
    # tf.timestamp() is stateful, so Grappler cannot fold the read into a
    # constant that the worker would then reuse in later rounds.
    path = tf.strings.join([self.path, tf.strings.substr(tf.strings.as_string(tf.timestamp()),
                                                         0, 0)])
    present = tf.debugging.Assert(tf.size(tf.io.matching_files(path)) > 0, [
        f'MaskedSumFactory stream={self.stream}: this worker has no mask {self.path} in its '
        'working directory (the trainer must have every site write its masks first: '
        'fedtff.execution.secagg.SecureRounds.prepare_round).'], name='masked_sum_mask_present')
    with tf.control_dependencies([present]):
      raw = tf.io.read_file(path)
    right_size = tf.debugging.Assert(tf.equal(tf.strings.length(raw), 8 * length), [
        f'MaskedSumFactory stream={self.stream}: mask {self.path} must hold {length} int64 '
        'values; its bytes:', tf.strings.length(raw)], name='masked_sum_mask_size')
    with tf.control_dependencies([right_size]):
      mask = tf.reshape(tf.io.decode_raw(raw, tf.int64, little_endian=True), [length])
    return tf.bitwise.bitwise_and(mask, modulus_mask)

  def _dequantize(self, summed: tf.Tensor, check: tf.Tensor, count: tf.Tensor,
                  modulus_mask: int) -> tf.Tensor:
    """The unmasked sum lifted to [-2^(m-1), 2^(m-1)) and divided by 2^s, as float64.

    Fails unless the check lane is 0 (every site's mask, each once) and the
    round had at most 2^client_bits clients.
    """
    complete = tf.debugging.Assert(tf.equal(check, 0), [
        f'MaskedSumFactory stream={self.stream}: the masks do not cancel, so the sum would be '
        'wrong: a site of the round did not add its mask (every site must run the aggregation '
        'each round, even with no clients) or holds a mask of another round.'],
        name='masked_sum_masks_cancel')
    few_enough = tf.debugging.Assert(count <= 2 ** self.client_bits, [
        f'MaskedSumFactory stream={self.stream}: more than 2^{self.client_bits} clients in a '
        'round; clients:', count], name='masked_sum_client_count')
    with tf.control_dependencies([complete, few_enough]):
      summed = tf.bitwise.bitwise_and(summed, modulus_mask)
    half = tf.constant(1 << (self.modulus_bits - 1), tf.int64)
    centered = tf.where(summed >= half, summed - 2 * half, summed)
    return tf.cast(centered, tf.float64) / 2.0 ** self.scale_bits


def masked_mean_factory(*, value_stream: str = 'value', weight_stream: str = 'weight',
                        **kwargs) -> tff.aggregators.MeanFactory:
  """A weighted mean whose value and weight sums are masked, on distinct streams.

  Args:
    value_stream: The stream of the weighted values' sum.
    weight_stream: The stream of the weights' sum.
    **kwargs: `MaskedSumFactory` options, for both sums.
  """
  if value_stream == weight_stream:
    raise ValueError(f'The value and weight sums need distinct streams, got {value_stream!r} '
                     'for both (a mask used twice leaks the difference of the two sums).')
  return tff.aggregators.MeanFactory(
      value_sum_factory=MaskedSumFactory(value_stream, **kwargs),
      weight_sum_factory=MaskedSumFactory(weight_stream, **kwargs))


def mean_stream_lengths(factory: tff.aggregators.MeanFactory, value_type) -> Dict[str, int]:
  """{stream: mask length} of a `masked_mean_factory()` for values of `value_type`.

  The trainer passes this to `fedtff.execution.secagg.SecureRounds.prepare_round`.
  """
  value_sum = factory._value_sum_factory  # pylint: disable=protected-access
  weight_sum = factory._weight_sum_factory  # pylint: disable=protected-access
  return {value_sum.stream: value_sum.stream_length(value_type),
          weight_sum.stream: weight_sum.stream_length(tff.TensorType(np.float32))}
