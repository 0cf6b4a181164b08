"""Cohorts of any size, including none, in a round compiled for a few shapes.

Poisson sampling (each client joins a round independently with probability
`q`; McMahan et al., "Learning Differentially Private Recurrent Language
Models", ICLR 2018, arXiv 1710.06963) gives cohorts of every size, and
sometimes an empty one. An XLA-compiled round compiles once per shape of its
inputs, so `pad` rounds the number of clients up to a power of two with
padding clients, marked by `num_batches == PADDING` and placed after the
real ones. The round graph stops at the first padding client
(`num_clients`): a padding client is neither trained nor aggregated nor
counted, so the round's result is that of its real clients alone. A round
with no real client runs the aggregation and the server step on nothing, as
TFF's process does with an empty list of clients (its DP aggregator sums no
records to zeros, then adds the round's noise and advances its state).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from fedtff.compiled import batches as batches_lib

PADDING = -1  # `num_batches` of a padding client.


def padded_size(num_clients: int) -> int:
  """The smallest power of two at least `num_clients` (1 for an empty cohort)."""
  return 1 << max(num_clients - 1, 0).bit_length()


def pad(batches: batches_lib.ClientBatches) -> batches_lib.ClientBatches:
  """`batches` with padding clients appended up to `padded_size` clients."""
  real = int(batches.num_batches.shape[0])
  extra = padded_size(real) - real
  if not extra:
    return batches
  first = np.concatenate([np.asarray(batches.first_batch), np.zeros([extra], np.int32)])
  count = np.concatenate([np.asarray(batches.num_batches), np.full([extra], PADDING, np.int32)])
  return batches._replace(first_batch=tf.constant(first, tf.int32),
                          num_batches=tf.constant(count, tf.int32))


def num_clients(batches: batches_lib.ClientBatches) -> tf.Tensor:
  """In the round graph: the number of real clients (those before the padding)."""
  return tf.reduce_sum(tf.cast(batches.num_batches != PADDING, tf.int32))


def empty(element_spec) -> batches_lib.ClientBatches:
  """The `ClientBatches` of an empty cohort of datasets with `element_spec`: no
  client, and one unused batch (XLA refuses to gather from an empty tensor)."""
  zeros = lambda spec: tf.zeros([1, 1] + spec.shape[1:].as_list(), spec.dtype)
  return batches_lib.ClientBatches(
      tf.nest.map_structure(zeros, element_spec), tf.zeros([1, 1], tf.bool),
      tf.zeros([0], tf.int32), tf.zeros([0], tf.int32))
