"""Pairwise masking: masks cancel exactly, and one masked input reveals nothing."""

import numpy as np
import pytest
from scipy import stats
import tensorflow as tf
import tensorflow_federated as tff

import fedtff  # pylint: disable=unused-import  # Installs fedtff's runtime.
from fedtff.privacy import secure_masking

SIGNIFICANCE = 1e-3


def draw_secrets(seed, num_clients):
  rng = np.random.default_rng(seed)
  return rng.integers(1, secure_masking.PRIME - 1, size=num_clients, dtype=np.int64)


def key_table(secrets, capacity):
  """The sorted table the server broadcasts, padded with empty slots."""
  keys = np.sort(secure_masking.public_key(tf.constant(secrets)).numpy())
  return tf.constant(np.pad(keys, (0, capacity - len(keys)), constant_values=secure_masking.EMPTY_SLOT))


def quantized(values, bound, levels, norm='linf'):
  return secure_masking.quantize(secure_masking.clip(tf.constant(values), bound, norm), bound, levels)


@pytest.mark.parametrize('num_clients, capacity, bits, norm', [
    (2, 4, 8, 'linf'), (3, 3, 32, 'l2'), (7, 8, 20, 'linf'), (2, 2, 62, 'l2'),
], ids=['2_clients_8_bits', '3_clients_32_bits', '7_clients_20_bits', '2_clients_62_bits'])
def test_masked_inputs_sum_to_the_quantized_sum_exactly(num_clients, capacity, bits, norm):
  levels = secure_masking.quantization_levels(capacity, bits)
  values = np.random.default_rng(num_clients).uniform(-1.5, 1.5, size=(num_clients, 40))
  integers = [quantized(v, 1.0, levels, norm) for v in values]
  secrets = draw_secrets(bits, num_clients)
  table = key_table(secrets, capacity)
  masked = [secure_masking.masked_input(secure_masking.encode(q, bits), tf.constant(s), table, bits)
            for q, s in zip(integers, secrets)]
  masked_sum = secure_masking.decode(tf.add_n(masked), bits)
  np.testing.assert_array_equal(masked_sum.numpy(), np.sum(integers, axis=0))
  for q, m in zip(integers, masked):
    assert np.mean(secure_masking.encode(q, bits).numpy() != m.numpy()) > 0.9


masked_input_fn = tf.function(secure_masking.masked_input)


def masked_samples(residues, first_seed, trials, bits=32):
  """Client 0's masked input among 3 clients over `trials` independent key draws."""
  samples = []
  for trial in range(trials):
    secrets = draw_secrets(first_seed + trial, 3)
    table = key_table(secrets, 3)
    samples.append(masked_input_fn(residues, tf.constant(secrets[0]), table, bits))
  return np.concatenate([s.numpy() for s in samples])


def uniformity_p_values(samples, bits=32, bin_bits=4):
  """Chi-square p-values of the top and the bottom `bin_bits` bits against uniform."""
  top = samples >> (bits - bin_bits)
  bottom = samples & (2**bin_bits - 1)
  return [stats.chisquare(np.bincount(b, minlength=2**bin_bits)).pvalue for b in (top, bottom)]


def test_a_masked_input_is_uniform_whatever_the_update():
  bits, levels = 32, secure_masking.quantization_levels(3, 32)
  zeros = secure_masking.encode(tf.zeros([64], tf.int64), bits)
  extremes = secure_masking.encode(quantized(np.full(64, 5.0), 1.0, levels), bits)
  masked_zeros = masked_samples(zeros, 0, 100)
  masked_extremes = masked_samples(extremes, 1000, 100)
  for samples in (masked_zeros, masked_extremes):
    assert min(uniformity_p_values(samples)) > SIGNIFICANCE
  assert stats.ks_2samp(masked_zeros, masked_extremes).pvalue > SIGNIFICANCE
  # The same test tells the unmasked inputs apart at once.
  assert stats.ks_2samp(np.tile(zeros.numpy(), 100),
                        np.tile(extremes.numpy(), 100)).pvalue < 1e-12


@pytest.fixture(scope='module')
def sum_process():
  value_type = tff.types.StructWithPythonType(
      [tff.TensorType(np.float32, [3]), tff.TensorType(np.float32, [2, 2])], list)
  factory = secure_masking.PairwiseMaskingSumFactory(1.0, 4, bits=16, norm='linf')
  return factory, factory.create(value_type)


def client_values(num_clients):
  rng = np.random.default_rng(num_clients)
  return [[rng.uniform(-1.2, 1.2, size=shape).astype(np.float32) for shape in ((3,), (2, 2))]
          for _ in range(num_clients)]


def expected_sum(values, levels):
  """Dequantized sum of the unmasked quantized values, as the server computes it."""
  flat = [quantized(secure_masking.flatten(v).numpy(), 1.0, levels) for v in values]
  total = secure_masking.dequantize(tf.add_n(flat), 1.0, levels)
  return [t.numpy() for t in tf.split(tf.cast(total, tf.float32), [3, 4])]


@pytest.mark.parametrize('num_clients', [2, 4])
def test_tff_process_returns_the_exact_quantized_sum(sum_process, num_clients):
  factory, process = sum_process
  values = client_values(num_clients)
  output = process.next(process.initialize(), values)
  levels = secure_masking.quantization_levels(4, 16)
  vector, matrix = expected_sum(values, levels)
  np.testing.assert_array_equal(output.result[0], vector)
  np.testing.assert_array_equal(output.result[1].reshape(-1), matrix)
  assert output.measurements['masked_clients'] == num_clients
  exact = np.sum([np.clip(v[0], -1, 1) for v in values], axis=0)
  assert np.abs(output.result[0] - exact).max() <= num_clients * factory.error_bound + 1e-6


def test_tff_process_fails_with_more_clients_than_it_was_built_for(sum_process):
  _, process = sum_process
  with pytest.raises(Exception, match='one distinct public key per client'):
    process.next(process.initialize(), client_values(5))


@pytest.mark.parametrize('kwargs, message', [
    (dict(clip_bound=0.0), 'clip_bound must be positive'),
    (dict(norm='l1'), "norm must be one of \\('l2', 'linf'\\)"),
    (dict(bits=4, max_clients=10), r'2\*\*\(bits-1\) > max_clients'),
    (dict(bits=64), 'at most 62'),
], ids=['zero_clip', 'unknown_norm', 'too_few_bits', 'too_many_bits'])
def test_factory_rejects_bad_settings(kwargs, message):
  settings = dict(clip_bound=1.0, max_clients=3) | kwargs
  with pytest.raises(ValueError, match=message):
    secure_masking.PairwiseMaskingSumFactory(settings.pop('clip_bound'),
                                             settings.pop('max_clients'), **settings)


def test_factory_rejects_integer_values():
  factory = secure_masking.PairwiseMaskingSumFactory(1.0, 3)
  with pytest.raises(TypeError, match='sums floating-point tensors'):
    factory.create(tff.TensorType(np.int32, [3]))
