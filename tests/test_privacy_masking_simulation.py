"""The masking simulation: masks cancel exactly, one masked input looks uniform,
dropouts and coarse quantization are refused."""

import numpy as np
import pytest
from scipy import stats
import tensorflow as tf
import tensorflow_federated as tff

import fedtff  # pylint: disable=unused-import  # Installs fedtff's runtime.
from fedtff.privacy import masking_simulation

SIGNIFICANCE = 1e-3


def draw_secrets(seed, num_clients):
  rng = np.random.default_rng(seed)
  return rng.integers(1, masking_simulation.PRIME - 1, size=num_clients, dtype=np.int64)


def key_table(secrets, capacity):
  """The sorted table the server broadcasts, padded with empty slots."""
  keys = np.sort(masking_simulation.public_key(tf.constant(secrets)).numpy())
  return tf.constant(np.pad(keys, (0, capacity - len(keys)),
                            constant_values=masking_simulation.EMPTY_SLOT))


def quantized(values, bound, levels, norm='linf'):
  return masking_simulation.quantize(
      masking_simulation.clip(tf.constant(values), bound, norm), bound, levels)


@pytest.mark.parametrize('num_clients, capacity, bits, norm', [
    (2, 4, 8, 'linf'), (3, 3, 32, 'l2'), (7, 8, 20, 'linf'), (2, 2, 62, 'l2'),
], ids=['2_clients_8_bits', '3_clients_32_bits', '7_clients_20_bits', '2_clients_62_bits'])
def test_masked_inputs_sum_to_the_quantized_sum_exactly(num_clients, capacity, bits, norm):
  levels = masking_simulation.quantization_levels(capacity, bits)
  values = np.random.default_rng(num_clients).uniform(-1.5, 1.5, size=(num_clients, 40))
  integers = [quantized(v, 1.0, levels, norm) for v in values]
  secrets = draw_secrets(bits, num_clients)
  table = key_table(secrets, capacity)
  masked = [masking_simulation.masked_input(masking_simulation.encode(q, bits), tf.constant(s), table, bits)
            for q, s in zip(integers, secrets)]
  masked_sum = masking_simulation.decode(tf.add_n(masked), bits)
  np.testing.assert_array_equal(masked_sum.numpy(), np.sum(integers, axis=0))
  for q, m in zip(integers, masked):
    assert np.mean(masking_simulation.encode(q, bits).numpy() != m.numpy()) > 0.9


masked_input_fn = tf.function(masking_simulation.masked_input)


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
  bits, levels = 32, masking_simulation.quantization_levels(3, 32)
  zeros = masking_simulation.encode(tf.zeros([64], tf.int64), bits)
  extremes = masking_simulation.encode(quantized(np.full(64, 5.0), 1.0, levels), bits)
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
  factory = masking_simulation.MaskingSimulationSumFactory(1.0, 4, bits=16, norm='linf')
  return factory, factory.create(value_type)


def client_values(num_clients):
  rng = np.random.default_rng(num_clients)
  return [[rng.uniform(-1.2, 1.2, size=shape).astype(np.float32) for shape in ((3,), (2, 2))]
          for _ in range(num_clients)]


def expected_sum(values, levels):
  """Dequantized sum of the unmasked quantized values, as the server computes it."""
  flat = [quantized(masking_simulation.flatten(v).numpy(), 1.0, levels) for v in values]
  total = masking_simulation.dequantize(tf.add_n(flat), 1.0, levels)
  return [t.numpy() for t in tf.split(tf.cast(total, tf.float32), [3, 4])]


@pytest.mark.parametrize('num_clients', [2, 4])
def test_tff_process_returns_the_exact_quantized_sum(sum_process, num_clients):
  factory, process = sum_process
  values = client_values(num_clients)
  output = process.next(process.initialize(), values)
  levels = masking_simulation.quantization_levels(4, 16)
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
    masking_simulation.MaskingSimulationSumFactory(settings.pop('clip_bound'),
                                             settings.pop('max_clients'), **settings)


def test_factory_rejects_integer_values():
  factory = masking_simulation.MaskingSimulationSumFactory(1.0, 3)
  with pytest.raises(TypeError, match='sums floating-point tensors'):
    factory.create(tff.TensorType(np.int32, [3]))


def test_a_dropped_client_fails_the_round_instead_of_corrupting_the_sum():
  bits, capacity = 32, 3
  levels = masking_simulation.quantization_levels(capacity, bits)
  secrets = draw_secrets(7, 3)
  table = key_table(secrets, capacity)
  values = np.random.default_rng(7).uniform(-1, 1, size=(3, 16))
  masked = [masking_simulation.masked_input(
      masking_simulation.encode(quantized(v, 1.0, levels), bits), tf.constant(s), table, bits)
            for v, s in zip(values, secrets)]
  survivors = masking_simulation.encode(tf.add_n(masked[:2]), bits)  # The third sends nothing.
  # Without the check, the third client's uncancelled masks make the sum uniform
  # noise over the whole range (+-3 clip norms here), far from the survivors' sum.
  garbage = masking_simulation.dequantize(masking_simulation.decode(survivors, bits), 1.0, levels)
  assert np.abs(garbage.numpy() - values[:2].sum(0)).max() > 1.0
  unmask = lambda masked_sum, count: masking_simulation.unmask(
      masked_sum, table, tf.constant(count, tf.int32), bits=bits, bound=1.0, levels=levels)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match='a client advertised a key but sent no masked input'):
    unmask(survivors, 2)
  total = unmask(masking_simulation.encode(tf.add_n(masked), bits), 3)
  np.testing.assert_allclose(total.numpy(), values.sum(0), atol=3 / (2 * levels))


@pytest.mark.parametrize('bits, refused', [(8, True), (16, False)])
def test_quantization_too_coarse_for_the_model_is_refused(bits, refused):
  # 10 clients, a 4,810-coordinate update (the model): at 8 bits L = 12,
  # so the mean may be off by sqrt(4810) / 24 = 2.9 clip norms, and a unit-norm
  # update spread evenly (|x| = 0.0144 < half a step, 0.042) rounds to 0.
  factory = masking_simulation.MaskingSimulationSumFactory(1.0, 10, bits=bits)
  value_type = tff.TensorType(np.float32, [4810])
  levels = masking_simulation.quantization_levels(10, bits)
  spread = np.full(4810, 1 / np.sqrt(4810))
  zeros = np.mean(quantized(spread, 1.0, levels, norm='l2').numpy() == 0)
  if refused:
    assert zeros == 1.0
    with pytest.raises(ValueError, match=r'^Masking with bits=8 for 10 clients quantizes to 12 '
                       r'levels per clip norm: on 4810 coordinates the mean may be off by 2.89 '
                       r'times the largest update norm \(the limit is 0.1\)'):
      factory.create(value_type)
  else:
    assert zeros == 0.0
    factory.create(value_type)


def test_the_config_kind_masks_at_32_bits_whatever_quantization_bits_says():
  spec = fedtff.AggregatorSpec('masking_simulation', clip_norm=1.0, clients_per_round=10)
  assert spec.masking_bits == 32 and spec.quantization_bits == 8
  factory = fedtff.algorithms.aggregators.build_aggregator(spec, weighted=False)
  process = factory.create(tff.TensorType(np.float32, [4810]))
  rng = np.random.default_rng(3)
  updates = [u / np.linalg.norm(u) for u in rng.normal(size=(10, 4810)).astype(np.float32)]
  output = process.next(process.initialize(), updates)
  levels = masking_simulation.quantization_levels(10, 32)
  np.testing.assert_allclose(output.result, np.mean(updates, 0), atol=1 / (2 * levels) + 1e-6)
  assert np.count_nonzero(output.result) == 4810


def test_the_old_names_are_refused_in_one_line():
  message = ("Aggregator kind 'pairwise_masking' is now 'masking_simulation': it simulates the "
             'arithmetic of pairwise masking with toy 31-bit keys and no dropout recovery, and '
             'protects nothing (docs/privacy.md).')
  with pytest.raises(ValueError) as info:
    fedtff.AggregatorSpec('pairwise_masking', clip_norm=1.0)
  assert str(info.value) == message
  config = fedtff.runner.config.base_config()
  config.aggregator.kind = 'pairwise_masking'
  with pytest.raises(fedtff.runner.config.ConfigError) as info:
    fedtff.runner.config.validate(config)
  assert str(info.value) == f'Config key aggregator.kind: {message}'
  with pytest.raises(AttributeError, match='masking_aggregator is now masking_simulation_aggregator'):
    fedtff.privacy.masking_aggregator  # pylint: disable=pointless-statement


def test_config_refuses_masking_bits_too_few_for_the_clients():
  config = fedtff.runner.config.base_config()
  config.algorithm.weighted = False
  config.aggregator.update(dict(kind='masking_simulation', clip_norm=1.0, masking_bits=4))
  with pytest.raises(fedtff.runner.config.ConfigError,
                     match=r'^Config key aggregator.masking_bits: bits must be an integer with '
                           r'2\*\*\(bits-1\) > max_clients and at most 62; got bits=4 for '
                           r'max_clients=10.$'):
    fedtff.runner.config.validate(config)
