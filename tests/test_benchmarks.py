"""Benchmark configs resolve to the papers' settings; hosted tasks run on stand-ins.

Settings from the papers: Reddi et al. 2021 (arXiv 2003.00295), Li et al. 2020
(FedProx, arXiv 1812.06127), McMahan et al. 2017 (arXiv 1602.05629); docs/results.md
lists what each suite reproduces.
"""

import math
import os

import numpy as np
import pytest
import tensorflow as tf

import fedtff
from fedtff.research import benchmarks
from fedtff.research import sweeps
from fedtff import tasks
from tests import conftest

reddi = benchmarks.load_module('reddi')
fedprox = benchmarks.load_module('fedprox')
mcmahan = benchmarks.load_module('mcmahan_digits')


def test_reddi_has_the_thirty_variants_and_they_validate():
  assert len(reddi.VARIANTS) == 30
  for variant in reddi.VARIANTS:
    config = reddi.get_config(variant)
    fedtff.runner.config.validate(config)
    assert config.seed == 1 and config.data.client_epochs == 1
    assert config.client.optimizer == 'sgd'


@pytest.mark.parametrize('variant, client_lr, server_lr, epsilon', [
    ('emnist_character:fedadam', -1.5, -2.5, -4),
    ('emnist_character:fedavg', -1, 0, None),
    ('cifar100_image:fedadagrad', -1, -1, -2),
    ('shakespeare_character:fedyogi', 0, -2, -3),
    ('stackoverflow_word:fedavgm', -0.5, 0, None),
    ('stackoverflow_tag:fedadam', 2, -0.5, -5),
    ('emnist_autoencoder:fedyogi', 1, -1.5, -3),
])
def test_reddi_learning_rates_are_powers_of_ten_of_the_table(variant, client_lr, server_lr,
                                                             epsilon):
  config = reddi.get_config(variant)
  assert math.isclose(config.client.learning_rate, 10 ** client_lr)
  assert math.isclose(config.server.learning_rate, 10 ** server_lr)
  if epsilon is not None:
    assert math.isclose(config.server.epsilon, 10 ** epsilon)
    assert (config.server.beta_1, config.server.beta_2) == (0.9, 0.999)
    assert config.server.initial_accumulator == 0.0


def test_reddi_task_settings():
  config = reddi.get_config('stackoverflow_word:fedyogi')
  assert (config.clients_per_round, config.data.batch_size, config.total_rounds) == (50, 16, 1500)
  assert config.data.max_elements == 1000 and config.server.optimizer == 'yogi'
  config = reddi.get_config('cifar100_image:fedavgm')
  assert (config.clients_per_round, config.data.batch_size, config.total_rounds) == (10, 20, 4000)
  assert config.server.momentum == 0.9 and config.model.name == 'resnet18_group_norm'
  config = reddi.get_config('shakespeare_character:fedavg')
  assert (config.data.batch_size, config.total_rounds, config.model.name) == (4, 1200, 'char_lstm')


def test_fedprox_configs_follow_the_paper_recipe():
  assert len(fedprox.VARIANTS) == 8
  config = fedprox.get_config('synthetic_0.5_0.5:fedprox')
  assert (config.data.synthetic_alpha, config.data.synthetic_beta) == (0.5, 0.5)
  assert config.algorithm.proximal_strength == 1.0
  assert (config.data.client_epochs, config.data.batch_size, config.client.learning_rate) == (
      20, 10, 0.01)
  assert (config.clients_per_round, config.total_rounds, config.data.weight_decay) == (
      10, 200, 1e-3)
  assert fedprox.get_config('synthetic_iid:fedavg').data.dataset == 'synthetic_iid'
  assert fedprox.get_config('synthetic_1_1:fedavg').algorithm.name == 'fedavg'


def test_mcmahan_configs():
  config = mcmahan.get_config('noniid:fedavg_e5_b10')
  assert (config.data.partition, config.data.num_clients, config.clients_per_round) == (
      'shards', 50, 5)
  assert (config.data.client_epochs, config.data.batch_size) == (5, 10)
  assert mcmahan.get_config('iid:fedsgd').algorithm.name == 'fedsgd'


def test_weight_decay_adds_the_l2_penalty():
  config = fedprox.get_config('synthetic_iid:fedavg')
  model = tasks._model_fn(config.model, (60,), 10, 1e-3)()  # pylint: disable=protected-access
  kernel = model.layers[-1].kernel
  assert math.isclose(float(tf.add_n(model.losses)), 1e-3 * float(tf.nn.l2_loss(kernel)),
                      rel_tol=1e-5)


def test_masked_loss_and_accuracy_ignore_pad_and_eos():
  y_true = tf.constant([[1, 2, 0]])
  logits = tf.one_hot([[1, 0, 2]], 4) * 10.0
  accuracy = tasks.MaskedAccuracy(masked_ids=(0, 3))
  accuracy.update_state(y_true, logits)
  assert float(accuracy.result()) == 0.5
  loss = float(tasks.MaskedSparseCrossEntropy()(y_true, logits))
  unmasked = tf.keras.losses.sparse_categorical_crossentropy(y_true, logits, from_logits=True)
  assert math.isclose(loss, float(tf.reduce_sum(unmasked[0, :2])) / 2, rel_tol=1e-5)


def test_hosted_task_without_cache_names_the_file(tmp_path):
  config = reddi.get_config('emnist_character:fedavg')
  config.data.cache_dir = str(tmp_path)
  with pytest.raises(fedtff.data.DatasetNotCachedError, match='emnist_all.sqlite'):
    tasks.build_task(config)


def _standin(variant):
  config = sweeps.point_config(reddi.get_config(variant), reddi.SMOKE_OVERRIDES)
  config.total_rounds = 2
  return config


# configs/reddi.py's smoke variants but CIFAR-100 (see below): one per task, and
# together every server optimizer. tests/test_configs_smoke.py leaves them to this test.
STANDIN_VARIANTS = tuple(v for v in reddi.SMOKE_VARIANTS if not v.startswith('cifar100'))


@pytest.mark.parametrize('variant', STANDIN_VARIANTS)
def test_hosted_task_runs_two_rounds_on_its_standin(variant, tmp_path):
  summary = fedtff.run_experiment(_standin(variant), str(tmp_path))
  assert summary['rounds_completed'] == 2
  assert summary['final']['train/num_examples'] > 0
  assert np.isfinite(summary['final']['eval/loss'])
  # The metric the paper reports reaches metrics.csv and summary.json's best.
  metric = reddi.REPORTED_METRIC[variant.split(':')[0]]
  assert np.isfinite(summary['final'][metric]) and summary['best'][metric]['round'] == 2
  header = (tmp_path / 'metrics.csv').read_text().splitlines()[0].split(',')
  assert {metric, 'train/' + metric.split('/')[1]} <= set(header)


def test_cifar100_standin_task_feeds_the_resnet():
  """CIFAR-100's two-round run takes ~90 s here; check its data and model instead."""
  task = tasks.build_task(_standin('cifar100_image:fedavg'))
  batch = next(iter(task.train_data.create_tf_dataset_for_client(task.train_data.client_ids[0])))
  assert batch['x'].shape[1:] == (24, 24, 3)
  assert task.model_fn()(batch['x']).shape[-1] == 100


def test_sequence_task_loss_and_metrics_build_a_process():
  task = tasks.build_task(_standin('shakespeare_character:fedavg'))
  kwargs = task.learning_kwargs()
  assert isinstance(kwargs['loss'], tasks.MaskedSparseCrossEntropy)
  process = fedtff.build_learning_process(task.model_fn, task.element_spec, **kwargs)
  assert process.initialize() is not None


def test_reproduce_runs_a_tiny_suite_and_writes_its_table(tmp_path, capsys):
  path = os.path.join(conftest.REPO_ROOT, 'scripts', 'reproduce.py')
  module = conftest.load_module(path)
  argv = ['mcmahan_digits', '--seeds', '0', '--root', str(tmp_path), '--rounds', '2',
          '--variants', 'iid:fedavg_e1_b10']
  assert module.main(argv) == 0
  table = (tmp_path / 'mcmahan_digits' / 'results.md').read_text()
  assert '| iid:fedavg_e1_b10 | 1 complete | >2 | >2 |' in table and 'SHORTENED' in table
  assert (tmp_path / 'mcmahan_digits' / 'iid.png').is_file()
  assert 'iid:fedavg_e1_b10' in capsys.readouterr().out
  assert module.main(argv) == 0  # Resumable: the complete run is skipped.
  assert 'skipped, already complete' in capsys.readouterr().out
