"""One table of algorithm defaults: the builders, the compiled engine, a config and
docs/algorithms.md all give each algorithm the same optimizers."""

import functools
import os
import types

import numpy as np
import pytest
import tensorflow as tf

import fedtff
from fedtff.runner import experiment
from fedtff import compiled
from fedtff import tasks
from fedtff.algorithms import ditto
from fedtff.algorithms import registry
from fedtff.algorithms import scaffold

DOCS = os.path.join(os.path.dirname(__file__), os.pardir, 'docs', 'algorithms.md')
MU = 0.1  # FedProx's proximal strength, given explicitly at every entry point.
Q = 1.0  # q-FedAvg's q, likewise.
LAMBDA = 0.5  # Ditto's λ, likewise.


def config_for(algorithm, **server):
  config = fedtff.runner.config.base_config()
  config.data.num_clients = 6
  config.data.num_test_clients = 2
  config.clients_per_round = 2
  config.algorithm.name = algorithm
  if algorithm == 'fedprox':
    config.algorithm.proximal_strength = MU
  if algorithm == 'qfedavg':
    config.algorithm.q = Q
  if algorithm == 'ditto':
    config.algorithm.ditto_lambda = LAMBDA
  config.server.update(server)
  fedtff.runner.config.validate(config)
  return config


@pytest.fixture(scope='module')
def task():
  return tasks.build_task(config_for('fedavg'))


def client_datasets(task):
  return [task.train_data.create_tf_dataset_for_client(i) for i in task.train_data.client_ids[:2]]


@pytest.fixture(scope='module')
def datasets(task):
  return client_datasets(task)


def leaves(state_field, prefix=''):
  """`{path: value}` of a state field, the same for TFF's and fedtff.compiled's containers."""
  if hasattr(state_field, 'items'):
    items = state_field.items()
  elif isinstance(state_field, (list, tuple)):
    items = enumerate(state_field)
  else:
    return {prefix: np.asarray(state_field)}
  flat = {}
  for key, value in items:
    flat.update(leaves(value, f'{prefix}/{key}'))
  return flat


def assert_same_leaves(a, b, what):
  a, b = leaves(a), leaves(b)
  assert sorted(a) == sorted(b), what
  for path in a:
    np.testing.assert_allclose(a[path], b[path], rtol=1e-7, err_msg=f'{what}: {path}')


def one_round(process, initial, datasets):
  state = process.set_model_weights(process.initialize(), initial)
  if hasattr(process, 'next_with_controls'):  # SCAFFOLD, compiled: every c_i zero.
    num = len(datasets) if isinstance(datasets, list) else int(datasets.num_batches.shape[0])
    rows = np.zeros([num, process.state_size], np.float32)
    return process.get_model_weights(process.next_with_controls(state, datasets, rows)[0].state)
  if isinstance(process, scaffold.ScaffoldProcess):  # SCAFFOLD on TFF: every c_i zero.
    controls = [process.control_template] * len(datasets)
    return process.get_model_weights(process.next(state, datasets, controls).state)
  if isinstance(process, ditto.DittoProcess):  # Ditto on TFF: every client unseen.
    controls = list(np.zeros([len(datasets), process.state_size], np.float32))
    return process.get_model_weights(process.next(state, datasets, controls).state)
  return process.get_model_weights(process.next(state, datasets).state)


def extra_options(algorithm):
  """The options an algorithm requires: FedProx's μ, q-FedAvg's q, SCAFFOLD's N (config_for's
  4 clients)."""
  if algorithm == 'fedprox':
    return dict(proximal_strength=MU)
  if algorithm == 'qfedavg':
    return dict(q=Q)
  if algorithm == 'ditto':
    return dict(ditto_lambda=LAMBDA)
  if registry.REGISTRY[algorithm].stateful_clients:
    return dict(population_size=4)
  return {}


@pytest.fixture(scope='module')
def entry_points(task):
  """The processes of each entry point for an algorithm given only its required
  options, each built once for this file: (builder's, a config's, compiled's)."""
  @functools.lru_cache(maxsize=None)
  def processes(algorithm):
    options = extra_options(algorithm)
    return (fedtff.build_learning_process(task.model_fn, task.element_spec,
                                          algorithm=algorithm, **options),
            experiment.build_process(config_for(algorithm), task),
            compiled.build_compiled_process(task.model_fn, task.element_spec,
                                            algorithm=algorithm, **options))
  return processes


@pytest.mark.parametrize('algorithm', registry.ALGORITHMS)
def test_every_entry_point_builds_the_same_optimizers(algorithm, task, datasets, entry_points):
  """The builder's defaults, the compiled engine's defaults and a config that sets
  only algorithm.name give the same server optimizer state (hparams included),
  client optimizer hparams and, after one round from the same weights, the
  same model (the compiled engine too, every algorithm); and the server optimizer
  is the table's."""
  builder_process, config_process, compiled_process = entry_points(algorithm)
  built, configured = builder_process.initialize(), config_process.initialize()
  assert_same_leaves(built.finalizer, configured.finalizer, 'server optimizer state')
  assert_same_leaves(built.client_work, configured.client_work, 'client work state')
  expected = registry.REGISTRY[algorithm].server
  assert np.asarray(built.finalizer['learning_rate']) == pytest.approx(expected.learning_rate)
  assert ('momentum' in built.finalizer) == ('momentum' in expected.hparams)
  initial = builder_process.get_model_weights(built)
  for a, b in zip(one_round(builder_process, initial, datasets).trainable,
                  one_round(config_process, initial, datasets).trainable):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert algorithm in compiled.SUPPORTED_ALGORITHMS
  compiled_state = compiled_process.initialize()
  assert_same_leaves(built.finalizer, compiled_state.finalizer, 'compiled server optimizer state')
  assert_same_leaves(built.client_work, compiled_state.client_work, 'compiled client work state')
  # New dataset objects, cached: these datasets reshuffle on each iteration,
  # and Mime Lite iterates a client's dataset twice on TFF (gradient, training).
  fixed = lambda: [dataset.cache() for dataset in client_datasets(task)]
  compiled_round = one_round(compiled_process, initial, compiled.from_datasets(fixed()))
  for a, b in zip(one_round(builder_process, initial, fixed()).trainable, compiled_round.trainable):
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize('algorithm', registry.ALGORITHMS)
def test_a_config_resolves_to_the_tables_defaults(algorithm):
  options = experiment._process_options(config_for(algorithm), _FakeTask(), None)  # pylint: disable=protected-access
  spec = registry.REGISTRY[algorithm]
  specs = tf.TensorSpec([], tf.float32)
  hparams = lambda opt: {k: float(v) for k, v in opt.get_hparams(opt.initialize(specs)).items()}
  assert hparams(options['server_optimizer']) == hparams(spec.server.build())
  if spec.client is None:
    assert options['client_optimizer'] is None
  else:
    assert hparams(options['client_optimizer']) == hparams(spec.client.build())


class _FakeTask:
  """What `_process_options` reads of a task: its loss and metrics, and its training
  clients (SCAFFOLD's N)."""
  train_data = types.SimpleNamespace(client_ids=['a', 'b'])

  @staticmethod
  def learning_kwargs():
    return dict(loss=None, metrics=None)


def test_fedavgm_from_a_config_uses_server_momentum(entry_points):
  _, process, _ = entry_points('fedavgm')
  assert float(process.initialize().finalizer['momentum']) == pytest.approx(0.9)


def test_fedadam_from_a_config_needs_no_server_optimizer(entry_points):
  finalizer = entry_points('fedadam')[1].initialize().finalizer
  assert float(finalizer['learning_rate']) == pytest.approx(0.01)
  assert float(finalizer['epsilon']) == pytest.approx(1e-3)
  assert 'beta_1' in finalizer


@pytest.mark.parametrize('algorithm, learning_rate',
                         [('fedadagrad', 0.1), ('fedyogi', 0.01), ('fedsgd', 0.1)])
def test_server_learning_rate_defaults(algorithm, learning_rate, entry_points):
  for process in entry_points(algorithm):  # The builder's, a config's and the compiled engine's.
    assert float(process.initialize().finalizer['learning_rate']) == pytest.approx(learning_rate)


def test_an_override_wins_and_a_conflicting_server_optimizer_is_refused(task):
  config = config_for('fedavgm', momentum=0.5, learning_rate=0.3)
  finalizer = experiment.build_process(config, task).initialize().finalizer
  assert float(finalizer['momentum']) == pytest.approx(0.5)
  assert float(finalizer['learning_rate']) == pytest.approx(0.3)
  with pytest.raises(fedtff.runner.config.ConfigError,
                     match=r"^algorithm.name 'fedadam' needs server.optimizer='adam', got 'sgd'.$"):
    config_for('fedadam', optimizer='sgd')


def test_the_written_config_is_resolved():
  resolved = fedtff.runner.config.resolve(config_for('fedyogi'))
  assert (resolved.server.optimizer, resolved.server.learning_rate) == ('yogi', 0.01)
  assert (resolved.client.optimizer, resolved.client.learning_rate) == ('sgd', 0.1)
  assert fedtff.runner.config.resolve(resolved).to_dict() == resolved.to_dict()
  assert '"optimizer": "yogi"' in fedtff.runner.config.to_json(config_for('fedyogi'))


def test_docs_table_is_the_registry():
  with open(DOCS, encoding='utf-8') as f:
    assert registry.markdown_table() in f.read()
