"""The compiled engine's distributed Skellam mean against TFF's (fedtff.privacy.ddp).

The deterministic steps are compared with TFF's own functions and processes:
the Walsh-Hadamard transform bit for bit, the modular clipping and secure
modular sum on integers exactly. End to end, 3 rounds of both engines from the
same state and rotation seed without noise differ by the stochastic rounding
only, which TFF seeds from the clock: each rotated coordinate of a client's
update moves by less than one quantization step `1/s`, so the mean moves by at
most `sqrt(d') / s` in L2 a round, the tolerance here (about 1e-5 at the
default 20 bits). With noise, both engines' error has the mechanism's standard
deviation `z C / m` (checked statistically).
"""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.aggregators import hadamard
from tensorflow_federated.python.aggregators import modular_clipping

import fedtff
from fedtff import compiled
from fedtff.compiled import aggregation
from fedtff.compiled import ddp as compiled_ddp
from fedtff.privacy import ddp
from tests import conftest
from tests import test_compiled_aggregators
from tests import test_compiled_engine

ROUNDS = 3
MODEL_DIM = 75  # test_compiled_engine.keras_model: 8*6 + 6 + 6*3 + 3.


@pytest.fixture(scope='module')
def datasets():
  return test_compiled_engine.client_datasets(
      *conftest.tiny_classification_arrays(num_features=test_compiled_engine.NUM_FEATURES))


def rounding_tolerance(factory) -> float:
  """`sqrt(d') / s` a round (module docstring), over `ROUNDS` rounds."""
  params = factory._value_sum_factory.params  # pylint: disable=protected-access
  return ROUNDS * math.sqrt(params.padded_dim) / params.scale


def run_both(factory, datasets):
  """Yields (TFF output, TFF weights, compiled metrics, compiled weights) per round; the
  compiled engine starts from TFF's initial state, rotation seed included."""
  options = dict(weighted=False, client_optimizer=fedtff.build_optimizer('sgd', 0.5),
                 aggregator=factory)
  tff_process = fedtff.build_learning_process(test_compiled_engine.keras_model, datasets[0],
                                              **options)
  compiled_process = compiled.build_compiled_process(test_compiled_engine.keras_model,
                                                     datasets[0], **options)
  tff_state = tff_process.initialize()
  compiled_state = compiled_process.from_tff_state(tff_state)
  for output, compiled_state, compiled_metrics in test_compiled_engine.step_both(
      tff_process, compiled_process, tff_state, compiled_state, datasets, ROUNDS):
    tff_state = output.state
    np.testing.assert_array_equal(tff_state.aggregator[0][1], compiled_state.aggregator)
    yield (output.metrics, tff_process.get_model_weights(tff_state), compiled_metrics,
           compiled_process.get_model_weights(compiled_state))


@pytest.mark.parametrize('clip, bits', [(0.3, 20), (5.0, 20), (0.3, 12)],
                         ids=['clipped', 'unclipped', 'bits_12'])
def test_matches_tff_without_noise_within_the_rounding(clip, bits, datasets):
  factory = ddp.ddp_aggregator(0.0, 3, clip=clip, dim=MODEL_DIM, bits=bits)
  tolerance = rounding_tolerance(factory)
  for tff_metrics, tff_weights, compiled_metrics, compiled_weights in run_both(factory, datasets):
    test_compiled_engine.assert_weights_close(tff_weights, compiled_weights, atol=tolerance)
    test_compiled_aggregators.assert_measurements_close(tff_metrics['aggregator'],
                                                        compiled_metrics['aggregator'])
    assert compiled_metrics['client_work']['train']['loss'] == pytest.approx(
        tff_metrics['client_work']['train']['loss'], abs=tolerance)
  clipped = compiled_metrics['aggregator']['mean_value']['hd']['clipped_count']
  assert clipped == (3 if clip == 0.3 else 0)


def test_the_walsh_hadamard_transform_is_tffs_bit_for_bit():
  vector = tf.random.stateless_normal([256], seed=[1, 2])
  expected = hadamard.fast_walsh_hadamard_transform(vector[tf.newaxis])[0]
  np.testing.assert_array_equal(compiled_ddp.walsh_hadamard(vector).numpy(), expected.numpy())


def test_rotating_back_recovers_the_update():
  update = [tf.random.stateless_normal([8, 6], seed=[3, 4]), tf.ones([27])]
  seed = tf.constant([123, 7], tf.int64)
  specs = [tf.TensorSpec(v.shape, v.dtype) for v in update]
  back = compiled_ddp.rotate_back(compiled_ddp.rotate(update, seed, 128), seed, specs)
  for expected, actual in zip(update, back):
    np.testing.assert_allclose(actual, expected, atol=1e-6)


@pytest.mark.parametrize('bits', [4, 8])
def test_the_modular_sum_is_tffs(bits):
  # Client integers far outside the range, so that both wrap-arounds happen.
  rng = np.random.default_rng(bits)
  values = [rng.integers(-5 * 2**bits, 5 * 2**bits, size=64).astype(np.int32) for _ in range(5)]
  lower, upper = -(2**(bits - 1)), 2**(bits - 1)
  process = modular_clipping.ModularClippingSumFactory(
      lower, upper, tff.aggregators.SecureModularSumFactory(2**bits, symmetric_range=True)
  ).create(tff.TensorType(np.int32, (64,)))
  expected = process.next(process.initialize(), values).result
  skellam = compiled_ddp.Skellam(None, 1.0, bits)
  total = sum(compiled_ddp.modular_clip(tf.constant(v, tf.int64), lower, upper) for v in values)
  np.testing.assert_array_equal(compiled_ddp.modular_sum(skellam, total).numpy(), expected)


def noise_of_zero_updates(z, m, clip, dim, engine):
  """The mean of `m` clients' zero updates (rounding is exact: pure noise)."""
  factory = ddp.ddp_aggregator(z, m, clip=clip, dim=dim)
  if engine == 'tff':
    process = factory.create(tff.TensorType(np.float32, (dim,)))
    return np.asarray(process.next(process.initialize(), [np.zeros(dim, np.float32)] * m).result)
  agg = aggregation.from_spec(factory, weighted=False)
  zeros = [tf.zeros([dim])]
  acc = aggregation.initial(zeros, agg, tf.constant([5, 6], tf.int64))
  state = agg.initial_state()
  for _ in range(m):
    acc = aggregation.accumulate(agg, acc, zeros, tf.constant(1.0), state)
  (mean,), _ = aggregation.result(agg, acc, tf.constant([5, 6], tf.int64), state)
  return mean.numpy()


@pytest.mark.parametrize('engine', ['tff', 'compiled'])
def test_both_engines_add_the_mechanisms_noise(engine):
  z, m, clip, dim = 1.5, 3, 0.5, 8000
  noise = noise_of_zero_updates(z, m, clip, dim, engine)
  params = ddp.skellam_parameters(z, m, clip, ddp.DEFAULT_BITS, dim)
  expected = math.sqrt(params.variance) / params.scale / m  # = z C / m.
  assert expected == pytest.approx(z * clip / m, rel=1e-3)
  # 8000 coordinates: the sample std's relative error is about 1 / sqrt(16000) = 0.8%.
  assert noise.std() == pytest.approx(expected, rel=0.04)
  assert abs(noise.mean()) < 4 * expected / math.sqrt(dim)


def test_two_fresh_tff_processes_draw_independent_noise():
  # Two processes built alike, each from its initial state, on the same zero
  # updates: were the noise a function of anything public (the state, the
  # inputs, a fixed seed) the two means would be equal.
  first, second = (noise_of_zero_updates(1.5, 3, 0.5, 2000, 'tff') for _ in range(2))
  assert not np.array_equal(first, second)
  assert abs(np.corrcoef(first, second)[0, 1]) < 0.1  # ~N(0, 1/sqrt(2000)) when independent.


def test_a_noised_round_adds_the_mechanisms_noise_to_the_weights(datasets):
  # Same state and rotation; the noised mean differs by z C / m per coordinate
  # (FedAvg's server SGD at rate 1 adds it to the weights). 75 coordinates: ~10%.
  z, m, clip = 2.0, 3, 0.3
  weights = {}
  for noise in (0.0, z):
    factory = ddp.ddp_aggregator(noise, m, clip=clip, dim=MODEL_DIM)
    process = compiled.build_compiled_process(test_compiled_engine.keras_model, datasets[0],
                                              weighted=False, aggregator=factory)
    state = process.initialize()
    if noise == 0.0:
      initial = state
    state = state._replace(global_model_weights=initial.global_model_weights,
                           aggregator=initial.aggregator)
    state, _ = process.next(state, compiled.from_datasets(datasets))
    weights[noise] = np.concatenate([np.ravel(w) for w in process.get_model_weights(state).trainable])
  difference = weights[z] - weights[0.0]
  assert difference.std() == pytest.approx(z * clip / m, rel=0.35)


def test_the_rotation_seed_converts_to_and_from_the_tff_state(datasets):
  factory = ddp.ddp_aggregator(0.0, 3, clip=0.3, dim=MODEL_DIM)
  process = compiled.build_compiled_process(test_compiled_engine.keras_model, datasets[0],
                                            weighted=False, aggregator=factory)
  tff_process = fedtff.build_learning_process(test_compiled_engine.keras_model, datasets[0],
                                              weighted=False, aggregator=factory)
  state, _ = process.next(process.initialize(), compiled.from_datasets(datasets))
  tff_state = process.to_tff_state(state, tff_process)
  np.testing.assert_array_equal(tff_state.aggregator[0][1], state.aggregator)
  assert not tff_state.aggregator[0][0]['inner_agg']['inner_agg_process'].is_init_state
  np.testing.assert_array_equal(process.from_tff_state(tff_state).aggregator, state.aggregator)
  tff_process.next(tff_state, datasets)  # TFF takes the converted state.


def test_weighting_is_refused_as_tff_refuses_it(datasets):
  with pytest.raises(TypeError, match=r'^The distributed Skellam mean with weighted=True needs '):
    compiled.build_compiled_process(test_compiled_engine.keras_model, datasets[0], weighted=True,
                                    aggregator=ddp.ddp_aggregator(0.0, 3, clip=0.3,
                                                                  dim=MODEL_DIM))
