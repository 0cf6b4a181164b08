"""A simulation of pairwise additive masking's arithmetic, as a TFF aggregator.

**This is not secure aggregation.** It reproduces the arithmetic of the
masking layer of Bonawitz, Ivanov, Kreuter, Marcedone, McMahan, Patel, Ramage,
Segal and Seth, "Practical Secure Aggregation for Privacy-Preserving Machine
Learning", CCS 2017 (quantization, modular wrap-around, masks that cancel),
with toy keys and without its dropout recovery, so that experiments can study
the accuracy cost of quantized, masked sums. It protects nothing: the
Diffie-Hellman group (Diffie and Hellman, "New Directions in Cryptography",
IEEE Trans. Inf. Theory 1976) has a 31-bit prime, so a discrete logarithm
(baby-step giant-step, well under a second) recovers any client's secret, its
masks and so its update; the PRG seed has 31 bits; secrets come from
TensorFlow's non-cryptographic PRNG; and TFF's local runtime runs every client
and the server in one process.

One `next` call of the aggregation process runs, inside one federated computation:

1. Key advertisement. Each client draws a secret `a_i` and sends its
   public key `g**a_i mod p` (`p = 2**31 - 1`, `g = 7`). The server collects the
   keys into a sorted table (`tff.federated_aggregate`) and broadcasts it.
2. Positions. TFF clients are anonymous; a client's position is the rank of its
   public key in the table, so every client learns its own position and every
   other client's without the runtime numbering them.
3. Key agreement. Client `i` derives the seed it shares with client `j`,
   `s_ij = pk_j**a_i mod p = g**(a_i a_j) mod p`.
4. Masked input. Client `i` clips its update (the whole update's L2 norm, or
   each coordinate with `norm='linf'`, to `clip`), rounds each coordinate to
   one of the integers `-L..L` (`round(x * L / clip)`), writes them mod `2**b`,
   then adds `PRG(s_ij)` for every `j` after it and subtracts `PRG(s_ij)` for
   every `j` before it, mod `2**b`. The PRG is Philox
   (`tf.random.stateless_uniform`) keyed by `s_ij`.
5. Server. It sums the masked inputs mod `2**b` and counts them. Every pair's
   masks cancel only if every client in the key table sent its input, so the
   server fails the round unless the count equals the number of distinct keys
   (a dropped client, more clients than `max_clients`, or a key collision).
   Then the sum equals the sum of the quantized updates exactly; with
   `L = floor((2**(b-1) - 1) / max_clients)` it cannot wrap, and the server
   decodes it and multiplies by `clip / L`.

Error: each coordinate of each client moves by at most half a step,
`clip / (2 L)`, so the mean of the clipped updates is off by at most
`clip / (2 L)` per coordinate, and by at most `sqrt(d) * clip / (2 L)` in L2
norm over `d` coordinates (plus the final cast to float32). The factory refuses
settings where that L2 bound exceeds `MAX_RELATIVE_ERROR` times the largest
update norm (`clip` in L2, `sqrt(d) * clip` with `norm='linf'`): there, an
update of norm `clip` spread evenly over the coordinates rounds mostly or
entirely to 0 and training stalls without an error.

Not modelled: dropout recovery (Shamir shares and double masking), a server
that lies about the key table or colludes with clients (no authentication),
and what the sum itself reveals. The aggregator sums model updates only: the
`client_work` metrics of the learning process (loss, accuracy, example and
batch counts) are summed in the clear. See docs/privacy.md.
"""

from __future__ import annotations

import collections
import math
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

PRIME = 2**31 - 1
GENERATOR = 7  # A primitive root modulo 2**31 - 1.
EMPTY_SLOT = np.iinfo(np.int64).max
NORMS = ('l2', 'linf')
_MAX_BITS = 62
DEFAULT_MASKING_BITS = 32  # The modulus 2**32, as in Bonawitz et al.
MAX_RELATIVE_ERROR = 0.1  # Largest worst-case quantization error of the mean, over the largest norm.
_PRG_STREAM = 0x6d61736b  # Separates mask streams from any other use of a seed.


def quantization_levels(max_clients: int, bits: int) -> int:
  """`L`: the largest level such that `max_clients` sums of `-L..L` fit `bits` bits."""
  return (2**(bits - 1) - 1) // max_clients


def relative_error_bound(size: int, levels: int, norm: str) -> float:
  """The worst-case L2 quantization error of the mean over the largest update norm.

  Each of the `size` coordinates of the mean is off by at most half a step,
  `clip / (2 L)`, so the error's L2 norm is at most `sqrt(size) * clip / (2 L)`;
  an update's L2 norm is at most `clip` (`norm='l2'`) or `sqrt(size) * clip`
  (`norm='linf'`).
  """
  return (1.0 if norm == 'linf' else math.sqrt(size)) / (2 * levels)


def clip(values: tf.Tensor, bound: float, norm: str) -> tf.Tensor:
  """Scales `values` to L2 norm at most `bound`, or clips each coordinate."""
  if norm == 'linf':
    return tf.clip_by_value(values, -bound, bound)
  return values * tf.minimum(tf.constant(1.0, values.dtype), bound / tf.norm(values))


def quantize(values: tf.Tensor, bound: float, levels: int) -> tf.Tensor:
  """Rounds `values` in `[-bound, bound]` to the integers `-levels..levels` (int64)."""
  scaled = tf.round(tf.cast(values, tf.float64) * (levels / bound))
  return tf.cast(tf.clip_by_value(scaled, -levels, levels), tf.int64)


def dequantize(integers: tf.Tensor, bound: float, levels: int) -> tf.Tensor:
  """Maps summed levels back to float64 values."""
  return tf.cast(integers, tf.float64) * (bound / levels)


def encode(integers: tf.Tensor, bits: int) -> tf.Tensor:
  """Signed int64 values as residues mod `2**bits`."""
  return tf.bitwise.bitwise_and(integers, tf.constant(2**bits - 1, tf.int64))


def decode(residues: tf.Tensor, bits: int) -> tf.Tensor:
  """Residues mod `2**bits` back to signed values in `[-2**(bits-1), 2**(bits-1))`."""
  residues = encode(residues, bits)
  return tf.where(residues >= 2**(bits - 1), residues - 2**bits, residues)


def mod_pow(base: tf.Tensor, exponent: tf.Tensor) -> tf.Tensor:
  """`base**exponent mod PRIME` elementwise, for an exponent below `2**31`."""
  result = tf.ones_like(base)
  power = base % PRIME
  for bit in range(31):
    take = tf.equal(tf.bitwise.bitwise_and(tf.bitwise.right_shift(exponent, bit), 1), 1)
    result = tf.where(take, result * power % PRIME, result)
    power = power * power % PRIME
  return result


def new_secret() -> tf.Tensor:
  """A fresh Diffie-Hellman secret in `[1, PRIME - 2]` (TensorFlow's PRNG)."""
  return tf.random.uniform([], minval=1, maxval=PRIME - 1, dtype=tf.int64)


def public_key(secret: tf.Tensor) -> tf.Tensor:
  """`GENERATOR**secret mod PRIME`."""
  return mod_pow(tf.constant(GENERATOR, tf.int64), secret)


def pairwise_mask(secret: tf.Tensor, key_table: tf.Tensor, size: int, bits: int) -> tf.Tensor:
  """The sum mod `2**bits` of `+PRG(s_ij)` over later keys and `-PRG(s_ij)` over earlier ones.

  Args:
    secret: This client's secret `a_i`.
    key_table: Every client's public key; `EMPTY_SLOT` entries are ignored.
    size: The mask length.
    bits: The modulus is `2**bits`.
  """
  own_key = public_key(secret)
  filled = tf.not_equal(key_table, EMPTY_SLOT)
  seeds = mod_pow(tf.where(filled, key_table, 1), secret)
  signs = tf.where(filled, tf.sign(key_table - own_key), 0)

  def add_mask(total, seed_and_sign):
    seed, sign = seed_and_sign
    stream = tf.random.stateless_uniform(
        [size], seed=tf.stack([seed, tf.constant(_PRG_STREAM, tf.int64)]),
        minval=None, maxval=None, dtype=tf.int64)
    return encode(total + sign * encode(stream, bits), bits)

  return tf.foldl(add_mask, (seeds, signs), initializer=tf.zeros([size], tf.int64))


def masked_input(residues: tf.Tensor, secret: tf.Tensor, key_table: tf.Tensor,
                 bits: int) -> tf.Tensor:
  """What a client sends: its residues plus its pairwise mask, mod `2**bits`."""
  size = residues.shape[0]
  return encode(residues + pairwise_mask(secret, key_table, size, bits), bits)


def flatten(value: Any) -> tf.Tensor:
  """A structure of tensors as one float64 vector."""
  return tf.concat([tf.reshape(tf.cast(t, tf.float64), [-1]) for t in tf.nest.flatten(value)], 0)


def unflatten(vector: tf.Tensor, specs: Any) -> Any:
  """The inverse of `flatten` for tensors shaped and typed like `specs`."""
  flat_specs = tf.nest.flatten(specs)
  pieces = tf.split(vector, [s.shape.num_elements() for s in flat_specs])
  tensors = [tf.cast(tf.reshape(p, s.shape), s.dtype) for p, s in zip(pieces, flat_specs)]
  return tf.nest.pack_sequence_as(specs, tensors)


def unmask(masked_sum: tf.Tensor, key_table: tf.Tensor, contributors: tf.Tensor, *,
           bits: int, bound: float, levels: int) -> tf.Tensor:
  """The server's step: checks who contributed, then decodes the sum (float64).

  Args:
    masked_sum: The masked inputs summed mod `2**bits`.
    key_table: The broadcast key table.
    contributors: How many masked inputs were summed (int32).
    bits: The modulus is `2**bits`.
    bound: The clip bound.
    levels: `L`.

  Raises:
    tf.errors.InvalidArgumentError: If a client in the key table sent no masked
      input (its masks do not cancel), or there are fewer distinct keys than
      inputs (more clients than the table holds, or a key collision).
  """
  with tf.control_dependencies(_check_contributors(key_table, contributors)):
    integers = decode(masked_sum, bits)
  return dequantize(integers, bound, levels)


class MaskingSimulationSumFactory(tff.aggregators.UnweightedAggregationFactory):
  """Sums client updates with simulated pairwise masking; see the module docstring.

  A simulation of the arithmetic only: its 31-bit keys protect nothing. The
  process has empty state and reports `masked_clients`, the number of clients
  whose masked inputs were summed. If a client in the key table sent no input,
  more than `max_clients` clients take part, or two draw the same key, the
  server's check fails the round instead of returning a wrong sum.
  """

  def __init__(self, clip_bound: float, max_clients: int, *,
               bits: int = DEFAULT_MASKING_BITS, norm: str = 'l2'):
    """Initializes the factory.

    Args:
      clip_bound: Updates are clipped to this L2 norm (`norm='l2'`) or
        coordinate bound (`norm='linf'`) before quantization.
      max_clients: The most clients one round may have (e.g. clients_per_round).
      bits: The modulus is `2**bits` (at most 62; int64 arithmetic).
      norm: 'l2' or 'linf'.
    """
    if not clip_bound > 0:
      raise ValueError(f'clip_bound must be positive, got {clip_bound}.')
    if norm not in NORMS:
      raise ValueError(f'norm must be one of {NORMS}, got {norm!r}.')
    if not (isinstance(max_clients, int) and max_clients >= 1):
      raise ValueError(f'max_clients must be a positive integer, got {max_clients!r}.')
    if not (isinstance(bits, int) and bits <= _MAX_BITS
            and quantization_levels(max_clients, bits) >= 1):
      raise ValueError(f'bits must be an integer with 2**(bits-1) > max_clients and at most '
                       f'{_MAX_BITS}; got bits={bits!r} for max_clients={max_clients}.')
    self._clip_bound = float(clip_bound)
    self._max_clients = max_clients
    self._bits = bits
    self._norm = norm
    self._levels = quantization_levels(max_clients, bits)

  @property
  def error_bound(self) -> float:
    """The largest quantization error per coordinate of the mean: `clip / (2 L)`."""
    return self._clip_bound / (2 * self._levels)

  def check_quantization(self, size: int) -> None:
    """Refuses `size` coordinates if `relative_error_bound` exceeds `MAX_RELATIVE_ERROR`."""
    error = relative_error_bound(size, self._levels, self._norm)
    if error > MAX_RELATIVE_ERROR:
      raise ValueError(
          f'Masking with bits={self._bits} for {self._max_clients} clients quantizes to '
          f'{self._levels} levels per clip norm: on {size} coordinates the mean may be off by '
          f'{error:.3g} times the largest update norm (the limit is {MAX_RELATIVE_ERROR}), and '
          f'an evenly spread update rounds mostly to 0; raise the bits (default '
          f'{DEFAULT_MASKING_BITS}).')

  def create(self, value_type: tff.types.Type) -> tff.templates.AggregationProcess:
    _check_value_type(value_type)
    specs = tff.types.type_to_tf_tensor_specs(value_type)
    size = sum(s.shape.num_elements() for s in tf.nest.flatten(specs))
    self.check_quantization(size)
    keys = _key_table_ops(self._max_clients)
    mask_fn = self._client_mask_fn(value_type, keys.table_type)
    sum_ops = _modular_sum_ops(size, self._bits)
    unmask_fn = self._server_unmask_fn(specs, size, keys.table_type)
    new_secret_fn = tff.tensorflow.computation(value_type)(lambda value: new_secret())
    public_key_fn = tff.tensorflow.computation(tf.int64)(public_key)
    one_fn = tff.tensorflow.computation(tff.TensorType(np.int64, [size]))(
        lambda masked: tf.constant(1, tf.int32))

    @tff.federated_computation()
    def init_fn():
      return tff.federated_value((), tff.SERVER)

    @tff.federated_computation(init_fn.type_signature.result,
                               tff.FederatedType(value_type, tff.CLIENTS))
    def next_fn(state, value):
      secret = tff.federated_map(new_secret_fn, value)
      table = tff.federated_aggregate(tff.federated_map(public_key_fn, secret), *keys.ops)
      masked = tff.federated_map(mask_fn, (value, secret, tff.federated_broadcast(table)))
      masked_sum = tff.federated_aggregate(masked, *sum_ops)
      contributors = tff.federated_sum(tff.federated_map(one_fn, masked))
      result = tff.federated_map(unmask_fn, (masked_sum, table, contributors))
      measurements = tff.federated_zip(collections.OrderedDict(masked_clients=contributors))
      return tff.templates.MeasuredProcessOutput(state, result, measurements)

    return tff.templates.AggregationProcess(init_fn, next_fn)

  def _client_mask_fn(self, value_type, table_type) -> tff.Computation:

    @tff.tensorflow.computation(value_type, tf.int64, table_type)
    def mask_fn(value, secret, key_table):
      clipped = clip(flatten(value), self._clip_bound, self._norm)
      residues = encode(quantize(clipped, self._clip_bound, self._levels), self._bits)
      return masked_input(residues, secret, key_table, self._bits)

    return mask_fn

  def _server_unmask_fn(self, specs, size: int, table_type) -> tff.Computation:

    @tff.tensorflow.computation(tff.TensorType(np.int64, [size]), table_type, tf.int32)
    def unmask_fn(masked_sum, key_table, contributors):
      total = unmask(masked_sum, key_table, contributors, bits=self._bits,
                     bound=self._clip_bound, levels=self._levels)
      return unflatten(total, specs)

    return unmask_fn


def masking_simulation_aggregator(clip_bound: float, clients_per_round: int, *,
                                  bits: int = DEFAULT_MASKING_BITS,
                                  norm: str = 'l2') -> tff.aggregators.UnweightedAggregationFactory:
  """An unweighted mean whose sum is `MaskingSimulationSumFactory`, for unweighted FedAvg.

  A simulation of masking arithmetic, not secure aggregation (module
  docstring). The count of clients it divides by is summed in the clear (the
  server learns it from the key table anyway).
  """
  return tff.aggregators.UnweightedMeanFactory(
      value_sum_factory=MaskingSimulationSumFactory(clip_bound, clients_per_round, bits=bits,
                                                    norm=norm))


KeyTableOps = collections.namedtuple('KeyTableOps', ['table_type', 'ops'])


def _key_table_ops(capacity: int) -> KeyTableOps:
  """`federated_aggregate` arguments collecting up to `capacity` keys, sorted."""
  table_type = tff.TensorType(np.int64, [capacity])

  @tff.tensorflow.computation
  def empty_table():
    return tf.fill([capacity], tf.constant(EMPTY_SLOT, tf.int64))

  @tff.tensorflow.computation(table_type, tf.int64)
  def insert(table, key):
    return tf.sort(tf.concat([table, [key]], 0))[:capacity]

  @tff.tensorflow.computation(table_type, table_type)
  def merge(table, other):
    return tf.sort(tf.concat([table, other], 0))[:capacity]

  report = tff.tensorflow.computation(table_type)(lambda table: table)
  return KeyTableOps(table_type, (empty_table(), insert, merge, report))


def _modular_sum_ops(size: int, bits: int) -> tuple:
  """`federated_aggregate` arguments summing int64 vectors mod `2**bits`."""
  vector_type = tff.TensorType(np.int64, [size])
  zeros = tff.tensorflow.computation(lambda: tf.zeros([size], tf.int64))
  add = tff.tensorflow.computation(vector_type, vector_type)(lambda a, b: encode(a + b, bits))
  report = tff.tensorflow.computation(vector_type)(lambda total: total)
  return zeros(), add, add, report


def _check_contributors(key_table: tf.Tensor, contributors: tf.Tensor) -> list:
  """Asserts one distinct key per masked input: no dropout, overflow or collision."""
  filled = tf.not_equal(key_table, EMPTY_SLOT)
  repeats = tf.logical_and(filled[1:], tf.equal(key_table[1:], key_table[:-1]))
  distinct = tf.reduce_sum(tf.cast(filled, tf.int32)) - tf.reduce_sum(tf.cast(repeats, tf.int32))
  return [
      tf.debugging.assert_less_equal(
          distinct, contributors,
          message='Masking simulation: a client advertised a key but sent no masked input '
                  '(a dropout); its masks do not cancel and this simulation has no dropout '
                  'recovery, so the round fails instead of returning a wrong sum.'),
      tf.debugging.assert_greater_equal(
          distinct, contributors,
          message='Masking simulation needs one distinct public key per client: more clients '
                  'than max_clients took part, or two clients drew the same key.'),
  ]


def _check_value_type(value_type: tff.types.Type) -> None:
  if not (isinstance(value_type, (tff.TensorType, tff.types.StructWithPythonType))
          and tff.types.is_structure_of_floats(value_type)):
    raise TypeError(f'The masking simulation sums floating-point tensors or Python structures of '
                    f'them, got {value_type}.')
  if not all(s.shape.is_fully_defined() for s in
             tf.nest.flatten(tff.types.type_to_tf_tensor_specs(value_type))):
    raise TypeError(f'The masking simulation needs fully defined shapes, got {value_type}.')

