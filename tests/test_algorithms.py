"""Every algorithm: the same process as raw TFF, and it trains."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

import fedtff
from tests import conftest

NUM_FEATURES = 8
opt = tff.learning.optimizers


def keras_model():
  return fedtff.models.mlp((NUM_FEATURES,), 3, hidden_units=(6,))


def raw_model_fn(element_spec):
  def model_fn():
    return tff.learning.models.from_keras_model(
        keras_model(), input_spec=element_spec,
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name='accuracy')])
  return model_fn


SCHEDULE = fedtff.Schedule('inv_sqrt_decay', learning_rate=0.2, decay_rate=1.0, decay_steps=1)

# name -> (fedtff options, raw TFF builder taking the raw model_fn)
CASES = {
    'fedavg': (dict(algorithm='fedavg'),
               lambda mf: tff.learning.algorithms.build_weighted_fed_avg(
                   mf, opt.build_sgdm(0.1), opt.build_sgdm(1.0))),
    'fedavg_unweighted': (dict(algorithm='fedavg', weighted=False),
                          lambda mf: tff.learning.algorithms.build_unweighted_fed_avg(
                              mf, opt.build_sgdm(0.1), opt.build_sgdm(1.0))),
    'fedavgm': (dict(algorithm='fedavgm'),
                lambda mf: tff.learning.algorithms.build_weighted_fed_avg(
                    mf, opt.build_sgdm(0.1), opt.build_sgdm(1.0, momentum=0.9))),
    'fedadagrad': (dict(algorithm='fedadagrad'),
                   lambda mf: tff.learning.algorithms.build_weighted_fed_avg(
                       mf, opt.build_sgdm(0.1),
                       opt.build_adagrad(0.1, initial_preconditioner_value=0.0, epsilon=1e-3))),
    'fedadam': (dict(algorithm='fedadam'),
                lambda mf: tff.learning.algorithms.build_weighted_fed_avg(
                    mf, opt.build_sgdm(0.1),
                    opt.build_adam(0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-3))),
    'fedyogi': (dict(algorithm='fedyogi'),
                lambda mf: tff.learning.algorithms.build_weighted_fed_avg(
                    mf, opt.build_sgdm(0.1),
                    opt.build_yogi(0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-3,
                                   initial_preconditioner_value=0.0))),
    # fedtff corrects the sign of TFF 0.87's proximal term, so the two agree
    # only at mu = 0; tests/test_fed_prox.py checks mu > 0 against a reference.
    'fedprox': (dict(algorithm='fedprox', proximal_strength=0.0),
                lambda mf: tff.learning.algorithms.build_weighted_fed_prox(
                    mf, 0.0, opt.build_sgdm(0.1), opt.build_sgdm(1.0))),
    'fedsgd': (dict(algorithm='fedsgd', server_optimizer=fedtff.build_optimizer('sgd', 0.5)),
               lambda mf: tff.learning.algorithms.build_fed_sgd(mf, opt.build_sgdm(0.5))),
    'mimelite': (dict(algorithm='mimelite'),
                 lambda mf: tff.learning.algorithms.build_weighted_mime_lite(
                     mf, opt.build_sgdm(0.1, momentum=0.9), opt.build_sgdm(1.0))),
    'fedavg_schedule': (dict(algorithm='fedavg', client_learning_rate_schedule=SCHEDULE),
                        lambda mf: tff.learning.algorithms.build_weighted_fed_avg_with_optimizer_schedule(
                            mf, SCHEDULE, lambda lr: opt.build_sgdm(lr), opt.build_sgdm(1.0))),
}


@pytest.fixture(scope='module')
def client_datasets():
  features, labels = conftest.tiny_classification_arrays(num_features=NUM_FEATURES)
  client_data = fedtff.data.from_arrays(features, labels, np.array_split(np.arange(90), 3))
  return [client_data.create_tf_dataset_for_client(i).batch(8) for i in client_data.client_ids]


def run(process, initial_weights, datasets, num_rounds):
  state = process.set_model_weights(process.initialize(), initial_weights)
  weights, losses = [], []
  for _ in range(num_rounds):
    output = process.next(state, datasets)
    state = output.state
    weights.append(process.get_model_weights(state))
    losses.append(output.metrics['client_work']['train']['loss'])
  return weights, losses


@pytest.mark.parametrize('name', sorted(CASES))
def test_matches_raw_tff_and_trains(name, client_datasets):
  options, build_raw = CASES[name]
  spec = client_datasets[0].element_spec
  ours = fedtff.build_learning_process(keras_model, spec, **options)
  raw = build_raw(raw_model_fn(spec))
  assert ours.next.type_signature == raw.next.type_signature
  initial = raw.get_model_weights(raw.initialize())
  raw_weights, _ = run(raw, initial, client_datasets, 2)
  our_weights, our_losses = run(ours, initial, client_datasets, 5)
  for a, b in zip(raw_weights[1].trainable, our_weights[1].trainable):
    np.testing.assert_allclose(a, b, atol=1e-6)
  assert our_losses[-1] < our_losses[0], our_losses


AGGREGATORS = {
    'robust_fixed': fedtff.AggregatorSpec('robust', clip_norm=0.5, zeroing=True, zeroing_norm=100.0),
    'robust_adaptive': fedtff.AggregatorSpec('robust', zeroing=True),
    'compression': fedtff.AggregatorSpec('compression', quantization_bits=8,
                                         quantization_threshold=0),
    'secure': fedtff.AggregatorSpec('secure', clip_norm=1.0),
    'passthrough': tff.aggregators.MeanFactory(),
}


@pytest.mark.parametrize('name', sorted(AGGREGATORS))
def test_aggregators_train_with_weighted_fed_avg(name, client_datasets):
  process = fedtff.build_learning_process(
      keras_model, client_datasets[0], algorithm='fedavg', aggregator=AGGREGATORS[name],
      client_optimizer=fedtff.build_optimizer('sgd', 0.3))
  _, losses = run(process, process.get_model_weights(process.initialize()), client_datasets, 4)
  assert losses[-1] < losses[0], losses


def test_robust_fixed_clipping_bounds_the_update(client_datasets):
  clip = 1e-3
  process = fedtff.build_learning_process(
      keras_model, client_datasets[0], aggregator=fedtff.AggregatorSpec('robust', clip_norm=clip),
      client_optimizer=fedtff.build_optimizer('sgd', 1.0))
  initial = process.get_model_weights(process.initialize())
  weights, _ = run(process, initial, client_datasets, 1)
  delta = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(weights[0].trainable, initial.trainable)))
  assert 0 < delta <= clip * (1 + 1e-4)


def test_compression_quantizes_but_stays_close(client_datasets):
  spec = client_datasets[0].element_spec
  plain = fedtff.build_learning_process(keras_model, spec)
  coarse = fedtff.build_learning_process(
      keras_model, spec,
      aggregator=fedtff.AggregatorSpec('compression', quantization_bits=2, quantization_threshold=0))
  initial = plain.get_model_weights(plain.initialize())
  exact, _ = run(plain, initial, client_datasets, 1)
  quantized, _ = run(coarse, initial, client_datasets, 1)
  diffs = [np.abs(a - b).max() for a, b in zip(exact[0].trainable, quantized[0].trainable)]
  assert 0 < max(diffs) < 0.5


def test_dp_aggregator_with_unweighted_fed_avg(client_datasets):
  spec = client_datasets[0].element_spec
  dp = fedtff.AggregatorSpec('dp', noise_multiplier=0.0, clients_per_round=3, clip_norm=1e6)
  process = fedtff.build_learning_process(keras_model, spec, weighted=False, aggregator=dp)
  plain = fedtff.build_learning_process(keras_model, spec, weighted=False)
  initial = plain.get_model_weights(plain.initialize())
  private, _ = run(process, initial, client_datasets, 2)
  expected, _ = run(plain, initial, client_datasets, 2)
  for a, b in zip(private[1].trainable, expected[1].trainable):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize(
    'options, error, message',
    [
        (dict(algorithm='fedsgdd'), ValueError, "Unknown algorithm 'fedsgdd'; expected one of fedavg"),
        (dict(algorithm='fedavg', proximal_strength=0.1), ValueError, 'proximal_strength'),
        (dict(algorithm='fedprox'), ValueError, 'required by fedprox'),
        (dict(algorithm='fedsgd', client_optimizer=fedtff.build_optimizer('sgd', 0.1)), ValueError,
         'fedsgd has no client optimizer'),
        (dict(algorithm='fedadam', server_optimizer=fedtff.build_optimizer('sgd', 1.0)), ValueError,
         'fedadam uses a adam server optimizer, got sgd'),
        (dict(algorithm='mimelite', client_learning_rate_schedule=SCHEDULE), ValueError,
         'schedules combine with the FedAvg family'),
        (dict(weighted=True, aggregator=fedtff.AggregatorSpec('dp', noise_multiplier=1.0,
                                                              clients_per_round=3)),
         ValueError, 'dp aggregator is unweighted'),
        (dict(weighted=False, aggregator=tff.aggregators.MeanFactory()), TypeError,
         'weighted=False needs a tff.aggregators.UnweightedAggregationFactory'),
        (dict(client_learning_rate_schedule=SCHEDULE, client_optimizer=fedtff.build_optimizer('sgd', 0.1)),
         TypeError, 'as a function of the learning rate'),
        (dict(client_optimizer=tf.keras.optimizers.Adam()), TypeError,
         'client optimizer is a Keras optimizer'),
    ],
    ids=['unknown_algorithm', 'mu_without_fedprox', 'fedprox_without_mu', 'fedsgd_client_opt',
         'fedadam_with_sgd', 'schedule_with_mime', 'dp_weighted', 'weighting_mismatch',
         'schedule_needs_optimizer_fn', 'keras_optimizer'])
def test_options_that_do_not_combine_are_refused(options, error, message, client_datasets):
  with pytest.raises(error, match=message):
    fedtff.build_learning_process(keras_model, client_datasets[0], **options)


def test_unknown_aggregator_kind():
  with pytest.raises(ValueError, match="Unknown aggregator 'fedmedian'; expected one of mean, robust"):
    fedtff.AggregatorSpec('fedmedian')


@pytest.mark.parametrize(
    'name, rounds_and_rates',
    [
        ('constant', [(0, 0.5), (100, 0.5)]),
        ('exp_decay', [(0, 0.5), (10, 0.05), (5, 0.5 * 0.1 ** 0.5)]),
        ('inv_lin_decay', [(0, 0.5), (10, 0.25)]),
        ('inv_sqrt_decay', [(0, 0.5), (30, 0.25)]),
    ])
def test_schedules_follow_their_formulas(name, rounds_and_rates):
  decay_rate = {'exp_decay': 0.1, 'inv_lin_decay': 1.0, 'inv_sqrt_decay': 1.0}.get(name, 0.1)
  decay_steps = 10
  schedule = fedtff.Schedule(name, learning_rate=0.5, decay_rate=decay_rate, decay_steps=decay_steps)
  for round_num, rate in rounds_and_rates:
    assert float(schedule(round_num)) == pytest.approx(rate, rel=1e-5)


def test_warmup_rises_linearly_then_decays():
  schedule = fedtff.Schedule('inv_lin_decay', learning_rate=1.0, decay_rate=1.0, decay_steps=1,
                             warmup_rounds=4)
  assert [float(schedule(t)) for t in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 0.5])


def test_staircase_exp_decay_steps():
  schedule = fedtff.Schedule('exp_decay', learning_rate=1.0, decay_rate=0.5, decay_steps=3,
                             staircase=True)
  assert [float(schedule(t)) for t in (0, 2, 3, 5, 6)] == pytest.approx([1, 1, 0.5, 0.5, 0.25])


def test_adaptive_optimizers_use_reddi_defaults():
  assert fedtff.algorithms.optimizers.ADAPTIVE_DEFAULTS['yogi'] == {
      'beta_1': 0.9, 'beta_2': 0.999, 'epsilon': 1e-3, 'initial_accumulator': 0.0}
  with pytest.raises(ValueError, match="'adam' starts its accumulators at 0"):
    fedtff.build_optimizer('adam', 0.1, initial_accumulator=0.5)
