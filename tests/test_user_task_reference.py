"""A user's loss and metrics are the ones that train and are reported, on both
engines, checked against a float64 NumPy FedAvg (fedtff.runner.user_task).

The task is tests/research_fixtures.py's: a linear model (one Dense layer) on 5
training clients of 12 examples, trained with the mean squared error of the
logits on one-hot labels and reported with the mean absolute error on one-hot
labels (`one_hot_mae`) and the mean logit plus a constructor argument,
shift=5 (`mean_logit`); all have closed-form gradients and values. The run's
`data.weight_decay` adds its L2 penalty to the user's model too; the `loss`
metric is the user's loss alone, without it (as TFF records it).
"""

import os

import dp_accounting
import numpy as np
import pytest
import tensorflow as tf

import fedtff
from fedtff.runner import outputs
from tests import research_fixtures as lab
from tests import test_user_task

CLIENT_LR, ROUNDS, BATCH, WEIGHT_DECAY = 0.1, 2, 5, 0.05


def reference_config(engine, total_rounds=ROUNDS):
  """Every training client every round, unshuffled batches: the NumPy run's rounds."""
  config = test_user_task.small_config(total_rounds, engine=engine, clients_per_round=5)
  config.data.shuffle_buffer = 0
  config.data.batch_size = BATCH
  config.data.weight_decay = WEIGHT_DECAY  # Adds WEIGHT_DECAY * |kernel|^2 / 2 to the loss.
  config.client.update(dict(optimizer='sgd', learning_rate=CLIENT_LR, momentum=0.0))
  config.server.update(dict(optimizer='sgd', learning_rate=1.0, momentum=0.0))
  return config


def task():
  train, test = lab.load()
  return fedtff.UserTask(lab.model_fn, train, test, loss_fn=lab.OneHotMeanSquaredError,
                         metrics_fn=lab.one_hot_metrics)


def arrays(client_data):
  """Each client's (x, y) as float64 / int arrays, in dataset order."""
  clients = []
  for client_id in client_data.client_ids:
    rows = list(client_data.create_tf_dataset_for_client(client_id).as_numpy_iterator())
    clients.append((np.array([r['x'] for r in rows], np.float64),
                    np.array([r['y'] for r in rows])))
  return clients


def errors(w, b, x, y):
  """Logits minus one-hot labels."""
  return x @ w + b - np.eye(w.shape[1])[y]


class Sums:
  """Example sums of the squared errors (loss), absolute errors and mean logits + 5."""

  def __init__(self):
    self.loss = self.mae = self.mean_logit = self.count = 0.0

  def add(self, error, y):
    self.loss += np.sum(np.mean(error ** 2, axis=1))
    self.mae += np.sum(np.mean(np.abs(error), axis=1))
    self.mean_logit += np.sum(np.mean(error + np.eye(error.shape[1])[y], axis=1) + 5.0)
    self.count += len(error)

  def metrics(self, prefix):
    return {f'{prefix}/loss': self.loss / self.count,
            f'{prefix}/one_hot_mae': self.mae / self.count,
            f'{prefix}/mean_logit': self.mean_logit / self.count}


def client_update(w, b, x, y, sums):
  """SGD over the client's batches on the batch-mean loss plus the kernel's L2
  penalty; returns its weights."""
  for start in range(0, len(y), BATCH):
    xb, yb = x[start:start + BATCH], y[start:start + BATCH]
    error = errors(w, b, xb, yb)
    sums.add(error, yb)
    grad = 2.0 * error / error.size  # d mean((logits - onehot)^2) / d logits.
    w, b = w - CLIENT_LR * (xb.T @ grad + WEIGHT_DECAY * w), b - CLIENT_LR * grad.sum(axis=0)
  return w, b


def numpy_fed_avg(weights, train, test, rounds):
  """Weighted FedAvg (server SGD, learning rate 1) in float64; rows per round."""
  w, b = (np.asarray(v, np.float64) for v in weights)
  rows = []
  for round_num in range(1, rounds + 1):
    sums, updates = Sums(), []
    for x, y in train:
      updates.append((client_update(w, b, x, y, sums), len(y)))
    total = sum(n for _, n in updates)
    w = sum(n * cw for (cw, _), n in updates) / total
    b = sum(n * cb for (_, cb), n in updates) / total
    evaluated = Sums()
    for x, y in test:
      evaluated.add(errors(w, b, x, y), y)
    rows.append({'round': round_num, **sums.metrics('train'), **evaluated.metrics('eval')})
  return rows, (w, b)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """`{engine: workdir}` of the 2-round user-task run on each engine."""
  workdirs = {}
  for engine in ('tff', 'compiled'):
    workdirs[engine] = str(tmp_path_factory.mktemp(engine))
    fedtff.run_experiment(reference_config(engine), workdirs[engine], task=task())
  return workdirs


@pytest.fixture(scope='module')
def reference():
  tf.keras.utils.set_random_seed(0)  # config.seed: the runner's seeded initial weights.
  initial = lab.model_fn().get_weights()
  train, test = lab.load()
  return numpy_fed_avg(initial, arrays(train), arrays(test), ROUNDS)


@pytest.mark.parametrize('engine', ['tff', 'compiled'])
def test_the_user_loss_trains_the_weights_of_a_numpy_fed_avg(runs, reference, engine):
  _, (w, b) = reference
  kernel, bias = test_user_task.final_weights(runs[engine], ROUNDS)[:2]
  np.testing.assert_allclose(kernel, w, atol=1e-5)
  np.testing.assert_allclose(bias, b, atol=1e-5)


@pytest.mark.parametrize('engine', ['tff', 'compiled'])
def test_the_user_metric_and_loss_are_reported_as_numpy_computes_them(runs, reference, engine):
  expected_rows, _ = reference
  rows = outputs.read_metrics_csv(os.path.join(runs[engine], 'metrics.csv'))
  assert 'eval/accuracy' not in rows[0]  # The user's metrics replace the default.
  assert [r['round'] for r in rows] == [1, 2]
  for row, expected in zip(rows, expected_rows):
    for key, value in expected.items():
      assert row[key] == pytest.approx(value, abs=1e-5), (engine, key)


def dp_config(engine):
  """Unweighted DP-FedAvg, clip 1, noise multiplier 1, 3 of the 5 training clients."""
  config = test_user_task.small_config(2, engine=engine, clients_per_round=3)
  config.algorithm.weighted = False
  config.aggregator.update(dict(kind='dp', clip_norm=1.0, noise_multiplier=1.0))
  return config


def independent_epsilon(rounds, delta):
  """dp_accounting's RDP epsilon of `rounds` DP-FedAvg rounds sampling 3 of 5
  clients without replacement (replace-one: a Gaussian of z/2 per round), as
  tests/test_privacy_run.py composes built-in runs."""
  accountant = dp_accounting.rdp.RdpAccountant(
      neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
  accountant.compose(dp_accounting.SelfComposedDpEvent(
      dp_accounting.SampledWithoutReplacementDpEvent(5, 3, dp_accounting.GaussianDpEvent(0.5)),
      rounds))
  return accountant.get_epsilon(delta)


@pytest.mark.parametrize('engine', ['tff', 'compiled'])
def test_a_dp_user_task_accounts_epsilon_and_withholds_training_metrics(tmp_path, engine):
  summary = fedtff.run_experiment(dp_config(engine), str(tmp_path), task=task())
  assert summary['engine'] == engine
  delta = summary['privacy']['delta']
  assert summary['privacy']['epsilon'] == pytest.approx(independent_epsilon(2, delta), rel=1e-9)
  rows = outputs.read_metrics_csv(os.path.join(tmp_path, 'metrics.csv'))
  assert [row['privacy/epsilon'] for row in rows] == pytest.approx(
      [independent_epsilon(r, delta) for r in (1, 2)], rel=1e-9)
  with open(os.path.join(tmp_path, 'metrics.csv')) as f:
    header = f.readline().strip().split(',')
  assert header == ['round', 'eval/one_hot_mae', 'eval/mean_logit', 'eval/loss', 'eval/num_examples',
                    'eval/num_batches', 'privacy/epsilon']
  assert summary['privacy']['client_metrics'] == 'withheld'
