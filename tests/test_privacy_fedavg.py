"""fedtff.privacy aggregators inside unweighted FedAvg on a tiny model."""

import numpy as np
import pytest
import tensorflow_federated as tff

import fedtff
from fedtff import privacy
from fedtff.algorithms import tff_model
from tests import conftest

NUM_FEATURES = 8
NUM_CLIENTS = 3


def keras_model():
  return fedtff.models.mlp((NUM_FEATURES,), 3, hidden_units=(6,))


@pytest.fixture(scope='module')
def client_datasets():
  features, labels = conftest.tiny_classification_arrays(num_features=NUM_FEATURES)
  client_data = fedtff.data.from_arrays(
      features, labels, np.array_split(np.arange(len(labels)), NUM_CLIENTS))
  return [client_data.create_tf_dataset_for_client(i).batch(8) for i in client_data.client_ids]


@pytest.fixture(scope='module')
def plain_process(client_datasets):
  return fedtff.build_fed_avg(keras_model, client_datasets[0], weighted=False)


@pytest.fixture(scope='module')
def initial_weights():
  """Seeded: TFF's `initialize()` draws unseeded weights, and from some draws the
  masking run's loss fell by less than `test_masking_aggregator_trains` asks
  (0.805 of the first round's; 0.69-0.75 from seeds 0-5)."""
  return tff_model.initial_weights(keras_model, seed=0)


def private_process(client_datasets, model_aggregator):
  """The process raw TFF builds for unweighted FedAvg with `model_aggregator`."""
  return tff.learning.algorithms.build_unweighted_fed_avg(
      tff_model.tff_model_fn(keras_model, client_datasets[0]),
      fedtff.build_optimizer('sgd', 0.1), fedtff.build_optimizer('sgd', 1.0),
      model_aggregator=model_aggregator)


def run_rounds(process, initial_weights, datasets, num_rounds):
  state = process.set_model_weights(process.initialize(), initial_weights)
  outputs = []
  for _ in range(num_rounds):
    outputs.append(process.next(state, datasets))
    state = outputs[-1].state
  return process.get_model_weights(state).trainable, outputs


def max_difference(weights_a, weights_b):
  return max(np.abs(a - b).max() for a, b in zip(weights_a, weights_b))


@pytest.fixture(scope='module')
def plain_round(plain_process, initial_weights, client_datasets):
  weights, _ = run_rounds(plain_process, initial_weights, client_datasets, 1)
  return weights


def test_dp_without_noise_and_huge_clip_equals_plain_unweighted_fed_avg(
    plain_process, initial_weights, client_datasets):
  process = private_process(client_datasets, privacy.dp_aggregator(0.0, NUM_CLIENTS, clip=1e6))
  dp_weights, _ = run_rounds(process, initial_weights, client_datasets, 2)
  plain_weights, _ = run_rounds(plain_process, initial_weights, client_datasets, 2)
  assert max_difference(dp_weights, plain_weights) < 1e-6
  assert max_difference(dp_weights, initial_weights.trainable) > 1e-3


@pytest.mark.parametrize('clipping, kwargs', [
    ('fixed', dict(clip=0.5)),
    ('adaptive', dict(clip=0.1, target_unclipped_quantile=0.5)),
], ids=['fixed', 'adaptive'])
def test_dp_with_noise_runs_and_moves_the_model(initial_weights, client_datasets, clipping, kwargs):
  # Adaptive clipping needs noise_multiplier < 0.1 * clients_per_round.
  aggregator = privacy.dp_aggregator(0.2, NUM_CLIENTS, clipping=clipping, **kwargs)
  weights, outputs = run_rounds(private_process(client_datasets, aggregator), initial_weights,
                                client_datasets, 3)
  assert max_difference(weights, initial_weights.trainable) > 1e-3
  dp_metrics = outputs[-1].metrics['aggregator']['dp_query_metrics']
  if clipping == 'adaptive':
    assert dp_metrics['clip'] != pytest.approx(0.1)  # The clip norm adapted.


def test_masking_equals_plain_within_quantization_bound(
    plain_round, initial_weights, client_datasets):
  clip_bound = 1.0
  plain_update = max_difference(plain_round, initial_weights.trainable)
  assert plain_update < clip_bound  # So clipping changes nothing and only quantization differs.
  factory = privacy.MaskingSimulationSumFactory(clip_bound, NUM_CLIENTS, bits=16, norm='linf')
  process = private_process(client_datasets, tff.aggregators.UnweightedMeanFactory(factory))
  weights, outputs = run_rounds(process, initial_weights, client_datasets, 1)
  assert max_difference(weights, plain_round) <= factory.error_bound + 1e-6
  assert outputs[0].metrics['aggregator']['mean_value']['masked_clients'] == NUM_CLIENTS


def test_masking_aggregator_trains(initial_weights, client_datasets):
  process = private_process(client_datasets, privacy.masking_simulation_aggregator(5.0, NUM_CLIENTS))
  _, outputs = run_rounds(process, initial_weights, client_datasets, 5)
  losses = [output.metrics['client_work']['train']['loss'] for output in outputs]
  assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize('bits, tolerance', [(None, 1e-6), (16, 1.0 / (2 * (2**15 - 1)) + 1e-6)],
                         ids=['float32_quantization', '16_bits'])
def test_tff_secure_sum_equals_plain_within_quantization(
    plain_round, initial_weights, client_datasets, bits, tolerance):
  aggregator = privacy.secure_sum_aggregator(1.0, bits=bits)
  weights, _ = run_rounds(private_process(client_datasets, aggregator), initial_weights,
                          client_datasets, 1)
  assert max_difference(weights, plain_round) <= tolerance


@pytest.mark.parametrize('kwargs, message', [
    (dict(), "clipping='fixed' needs the L2 clip norm"),
    (dict(clip=1.0, target_unclipped_quantile=0.5), "apply to clipping='adaptive' only"),
    (dict(clipping='median'), "clipping must be one of ('fixed', 'adaptive')"),
], ids=['fixed_without_clip', 'quantile_with_fixed', 'unknown_clipping'])
def test_dp_aggregator_rejects_misuse(kwargs, message):
  with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
    privacy.dp_aggregator(1.0, 10, **kwargs)


def test_secure_sum_bits_need_a_bound():
  with pytest.raises(ValueError, match='bits needs a fixed, positive bound'):
    privacy.secure_sum_aggregator(bits=16)
