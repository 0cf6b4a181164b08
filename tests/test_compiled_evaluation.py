"""Held-out evaluation on both engines: equal pooled metrics, per-client
distributions checked against NumPy, and a compiled run that builds no TFF evaluation."""

import collections
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.learning.algorithms import fed_eval

import fedtff
from fedtff.runner import checkpoints
from fedtff.runner import experiment
from fedtff.runner import outputs
from fedtff.research import plots
from fedtff.execution import runtime
from fedtff import tasks
from tests import test_experiment

# Unequal clients, none a multiple of the batch size (padding), one empty.
CLIENT_SIZES = {'a': 3, 'b': 11, 'c': 7, 'd': 0, 'e': 16}
BATCH_SIZE, NUM_FEATURES, NUM_CLASSES = 5, 6, 3
STATS = ('mean', 'std', 'p10', 'p50', 'p90', 'worst')


def _model():
  return tf.keras.Sequential([tf.keras.Input([NUM_FEATURES]),
                              tf.keras.layers.Dense(8, activation='relu'),
                              tf.keras.layers.Dense(NUM_CLASSES)])


def _arrays():
  rng = np.random.default_rng(3)
  return {c: (rng.normal(size=(n, NUM_FEATURES)).astype(np.float32),
              rng.integers(0, NUM_CLASSES, size=n).astype(np.int32))
          for c, n in CLIENT_SIZES.items()}


@pytest.fixture(scope='module')
def setup():
  arrays = _arrays()
  client_data = tff.simulation.datasets.TestClientData(
      {c: collections.OrderedDict(x=x, y=y) for c, (x, y) in arrays.items()}
  ).preprocess(lambda d: d.batch(BATCH_SIZE))
  task = tasks.Task(train_data=client_data, test_data=client_data, model_fn=_model,
                    num_classes=NUM_CLASSES)
  tf.keras.utils.set_random_seed(7)
  model = _model()
  weights = tff.learning.models.ModelWeights(
      trainable=[v.numpy() for v in model.trainable_variables], non_trainable=[])

  class Weights:  # What evaluation_fn asks of a training process.
    get_model_weights = staticmethod(lambda state: state)

  evaluations = {engine: experiment.evaluation_fn(task, Weights, engine=engine, per_client=True)
                 for engine in ('compiled', 'tff')}
  return arrays, model, weights, evaluations


def _numpy_per_client(arrays, model):
  """Each nonempty client's accuracy and mean cross-entropy, computed in NumPy."""
  kernel1, bias1, kernel2, bias2 = [v.numpy().astype(np.float64) for v in model.variables]
  out = {'accuracy': [], 'loss': []}
  for x, y in arrays.values():
    if not len(y):
      continue
    logits = np.maximum(x @ kernel1 + bias1, 0) @ kernel2 + bias2
    log_probs = logits - np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), 1,
                                       keepdims=True)) - logits.max(1, keepdims=True)
    out['accuracy'].append(np.mean(np.argmax(logits, 1) == y))
    out['loss'].append(-np.mean(log_probs[np.arange(len(y)), y]))
  return {k: np.asarray(v) for k, v in out.items()}


def test_both_engines_give_equal_metrics_with_unequal_padded_clients(setup):
  _, _, weights, evaluations = setup
  compiled, tff_ = (evaluations[e](weights, 1) for e in ('compiled', 'tff'))
  assert evaluations['compiled'].metric_names == evaluations['tff'].metric_names
  assert list(compiled) == list(tff_) == evaluations['compiled'].metric_names
  for name in compiled:
    assert compiled[name] == pytest.approx(tff_[name], abs=1e-5), name
  assert compiled['eval/num_examples'] == sum(CLIENT_SIZES.values())
  assert compiled['eval/num_batches'] == sum(-(-n // BATCH_SIZE) for n in CLIENT_SIZES.values())


def test_pooled_metrics_are_example_weighted_over_clients(setup):
  arrays, model, weights, evaluations = setup
  reference = _numpy_per_client(arrays, model)
  sizes = np.asarray([n for n in CLIENT_SIZES.values() if n])
  for engine in ('compiled', 'tff'):
    metrics = evaluations[engine](weights, 1)
    for name in ('accuracy', 'loss'):
      expected = np.sum(reference[name] * sizes) / sizes.sum()
      assert metrics[f'eval/{name}'] == pytest.approx(expected, abs=1e-5), (engine, name)


@pytest.mark.parametrize('engine', ['compiled', 'tff'])
def test_per_client_statistics_equal_numpy_over_independent_client_metrics(setup, engine):
  arrays, model, weights, evaluations = setup
  reference = _numpy_per_client(arrays, model)  # The empty client 'd' is left out.
  metrics = evaluations[engine](weights, 1)
  for name, values in reference.items():
    expected = dict(mean=np.mean(values), std=np.std(values), p10=np.percentile(values, 10),
                    p50=np.percentile(values, 50), p90=np.percentile(values, 90),
                    worst=np.min(values) if name == 'accuracy' else np.max(values))
    for stat in STATS:
      assert metrics[f'eval/{name}/{stat}'] == pytest.approx(expected[stat], abs=1e-5), (
          name, stat)
  assert not any(k.startswith(('eval/num_examples/', 'eval/num_batches/')) for k in metrics)


def _refuse(*args, **kwargs):
  raise AssertionError('the compiled engine built or ran a TFF computation')


@pytest.fixture(scope='module')
def compiled_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('compiled_eval_run'))
  with pytest.MonkeyPatch.context() as patch:
    # Any TFF evaluation build, pooled or per client, fails the run; and with
    # the mean aggregator, so does building the TFF learning process.
    patch.setattr(tff.learning.algorithms, 'build_fed_eval', _refuse)
    patch.setattr(fed_eval, '_build_local_evaluation', _refuse)
    patch.setattr(fedtff.algorithms, 'build_learning_process', _refuse)
    # No TFF computation runs either: a TFF call would start (stub) a worker.
    patch.setattr(runtime.LocalWorkerConnection, 'stub', _refuse)
    summary = fedtff.run_experiment(
        test_experiment.small_config(engine='compiled', total_rounds=2, rounds_per_eval=1,
                                     per_client_eval=True), workdir)
  return workdir, summary


def test_a_fast_run_builds_no_tff_process_and_logs_client_percentiles(compiled_run):
  workdir, summary = compiled_run
  rows = outputs.read_metrics_csv(os.path.join(workdir, 'metrics.csv'))
  assert [r['round'] for r in rows] == [1, 2]
  for stat in STATS:
    assert rows[-1][f'eval/accuracy/{stat}'] is not None
    assert rows[-1][f'eval/loss/{stat}'] is not None
  assert rows[-1]['eval/accuracy/p10'] <= rows[-1]['eval/accuracy/p50'] <= rows[-1][
      'eval/accuracy/p90']
  assert rows[-1]['eval/accuracy/worst'] <= rows[-1]['eval/accuracy/p10']
  assert summary['final']['eval/accuracy/p90'] == rows[-1]['eval/accuracy/p90']


def test_summary_records_the_client_distribution_at_the_best_round(compiled_run):
  workdir, _ = compiled_run
  rows = outputs.read_metrics_csv(os.path.join(workdir, 'metrics.csv'))
  with open(os.path.join(workdir, 'summary.json')) as f:
    best = json.load(f)['best']
  assert set(best) == {'eval/accuracy', 'eval/loss'}  # No per-client column is a "best".
  for column, entry in best.items():
    row = next(r for r in rows if r['round'] == entry['round'])
    assert entry['clients'] == {stat: row[f'{column}/{stat}'] for stat in STATS}


def test_plot_shades_the_percentile_band(compiled_run):
  workdir, _ = compiled_run
  rows = outputs.read_metrics_csv(os.path.join(workdir, 'metrics.csv'))
  figure = plots.plot_runs([workdir], metrics=['eval/accuracy'])
  (band,) = figure.axes[0].collections
  ys = band.get_paths()[0].vertices[:, 1]
  assert min(ys) == pytest.approx(min(r['eval/accuracy/p10'] for r in rows))
  assert max(ys) == pytest.approx(max(r['eval/accuracy/p90'] for r in rows))
  assert not plots.plot_runs([workdir], metrics=['eval/accuracy'],
                             client_band=False).axes[0].collections


# (algorithm, weighted, config changes): the mean, and aggregators whose TFF state holds tensors.
LAYOUT_CASES = {
    'fedavg_unweighted_mean': ('fedavg', False, {}),
    'fedsgd_mean': ('fedsgd', True, {}),
    'fedprox_mean': ('fedprox', True, {}),
    'fedadam_mean': ('fedadam', True, {}),
    'fedavg_dp': ('fedavg', False, {'aggregator.kind': 'dp', 'aggregator.clip_norm': 1.0,
                                     'aggregator.noise_multiplier': 0.5}),
    'fedavg_adaptive_dp': ('fedavg', False, {'aggregator.kind': 'dp',
                                             'aggregator.noise_multiplier': 0.5}),
    'fedavg_dp_ftrl': ('fedavg', False, {'aggregator.kind': 'dp', 'aggregator.clip_norm': 1.0,
                                         'aggregator.noise_multiplier': 0.5,
                                         'privacy.mechanism': 'dp_ftrl'}),
    'fedavg_ddp_skellam': ('fedavg', False, {'aggregator.kind': 'dp', 'aggregator.clip_norm': 1.0,
                                             'aggregator.noise_multiplier': 0.5,
                                             'privacy.mechanism': 'ddp_skellam'}),
    'fedprox_adaptive_robust': ('fedprox', True, {'aggregator.kind': 'robust',
                                                  'aggregator.zeroing': True}),
    'fedsgd_compression': ('fedsgd', True, {'aggregator.kind': 'compression',
                                            'aggregator.quantization_threshold': 0}),
    'mimelite_secure': ('mimelite', True, {'aggregator.kind': 'secure'}),
    'fedavg_masking': ('fedavg', False, {'aggregator.kind': 'masking_simulation',
                                        'aggregator.clip_norm': 1.0}),
    'fedavg_krum_attacked': ('fedavg', False, {'aggregator.kind': 'krum',
                                              'attack.kind': 'sign_flipping',
                                              'attack.fraction': 0.2}),
}


@pytest.mark.parametrize('case', LAYOUT_CASES)
def test_compiled_state_layout_is_the_tff_process_state(case):
  """The checkpoint layout a compiled run writes without building the TFF process is
  that process's state, leaf for leaf, and so are its specs."""
  algorithm, weighted, changes = LAYOUT_CASES[case]
  config = test_experiment.small_config(engine='compiled')
  config.algorithm.name, config.algorithm.weighted = algorithm, weighted
  config.algorithm.proximal_strength = 0.1 if algorithm == 'fedprox' else 0.0
  for key, value in changes.items():
    group, _, name = key.partition('.')
    config[group][name] = value
  config = fedtff.runner.config.resolve(config)
  task = tasks.build_task(config)
  options = experiment._process_options(  # pylint: disable=protected-access
      config, task, experiment.noise_multiplier(config, task))
  layout = experiment._state_layout(  # pylint: disable=protected-access
      config, experiment.build_compiled_process(config, task, options=options), options)
  assert layout.calls_tff == (changes.get('aggregator.kind', 'mean') != 'mean')
  ours = layout.initialize()
  tff_process = experiment.build_process(config, task, options=options)
  theirs = tff_process.initialize()
  if layout.calls_tff:  # (With the mean both hold no leaf, nested differently: () or ((), ()).)
    tf.nest.assert_same_structure(ours.aggregator, theirs.aggregator)
  assert [(np.shape(a), np.asarray(a).dtype) for a in tf.nest.flatten(ours)] == [
      (np.shape(b), np.asarray(b).dtype) for b in tf.nest.flatten(theirs)]
  for field in ('client_work', 'aggregator', 'finalizer'):  # Weights are drawn afresh by each.
    if field == 'aggregator' and 'ddp_skellam' in case:
      continue  # Its state holds a seed drawn (from the clock) at initialize().
    for a, b in zip(tf.nest.flatten(getattr(ours, field)), tf.nest.flatten(getattr(theirs, field))):
      np.testing.assert_array_equal(a, b)
  assert [str(s) for s in tf.nest.flatten(layout.state_specs(ours))] == [
      str(s) for s in tf.nest.flatten(checkpoints.state_specs(tff_process))]
