"""The `compression` aggregator's uniform quantization inside the compiled round.

`fedtff.algorithms.aggregators.build_aggregator` sums with TFF's
`EncodedSumFactory.quantize_above_threshold(quantization_bits, threshold)`
(Suresh et al., "Distributed Mean Estimation with Limited Communication", ICML
2017, arXiv 1611.00429: stochastic uniform quantization). Each client value
(the update, times the client's weight in a weighted mean) is summed tensor by
tensor; a tensor of more than `threshold` elements goes through TF Model
Optimization's `uniform_quantization` encoder (flatten, quantize, bit-pack),
and is decoded before the sum, since the per-client range does not commute
with it:

* `x = (t - min t) / (max t - min t) * (2**bits - 1)` (0 when `max = min`);
* `q = floor(x) + [u < x - floor(x)]` with `u` uniform in `[0, 1)`: randomized
  rounding, unbiased;
* bit-packing and unpacking are lossless on these integers;
* decoded: `q / (2**bits - 1) * (max t - min t) + min t`, reshaped.

These are the encoder's operations in its order. Its `u` comes from TF's
stateful `tf.random.uniform`, seeded by TFF's runtime, which this engine cannot
repeat; here `u` is drawn by TensorFlow's stateless RNG from the round's noise
seed, the client's index and the tensor's index. So each coordinate of one
client's decoded value may differ from TFF's by one quantization step
`(max t - min t) / (2**bits - 1)` of that client's tensor, and the mean by at
most the largest such step; a tensor whose values all lie on the grid (e.g.
two-valued at 1 bit) is quantized exactly alike.
"""

from __future__ import annotations

from typing import List

import numpy as np
import tensorflow as tf


def quantize(tensor: tf.Tensor, bits: int, seed: tf.Tensor) -> tf.Tensor:
  """One tensor encoded and decoded by `uniform_quantization(bits)` (module docstring)."""
  flat = tf.reshape(tensor, [-1])
  min_x, max_x = tf.reduce_min(flat), tf.reduce_max(flat)
  max_value = tf.cast(2**bits - 1, flat.dtype)
  scaled = tf.compat.v1.div_no_nan(flat - min_x, max_x - min_x) * max_value
  floored = tf.floor(scaled)
  uniform = tf.random.stateless_uniform(tf.shape(scaled), seed=seed, dtype=scaled.dtype)
  quantized = floored + tf.cast(uniform < scaled - floored, scaled.dtype)
  return tf.reshape(quantized / max_value * (max_x - min_x) + min_x, tf.shape(tensor))


def encoded_values(values: List[tf.Tensor], *, bits: int, threshold: int,
                   seed: tf.Tensor) -> List[tf.Tensor]:
  """A client's value as `EncodedSumFactory.quantize_above_threshold` sums it: each
  tensor of more than `threshold` elements quantized (seeded by `seed` and its index)."""
  return [quantize(v, bits, tf.random.experimental.stateless_fold_in(seed, i))
          if int(np.prod(v.shape)) > threshold else v for i, v in enumerate(values)]


def quantizes(values: List[tf.TensorSpec], threshold: int) -> bool:
  """Whether any tensor has more than `threshold` elements (then it is quantized)."""
  return any(int(np.prod(v.shape)) > threshold for v in values)
