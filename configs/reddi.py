"""Reddi et al. 2021, Adaptive Federated Optimization (ICLR 2021, arXiv 2003.00295).

`get_config('TASK:ALGO')` gives one cell of the paper's grid: six tasks on
TFF's hosted datasets, each with FedAvg, FedAvgM (server momentum 0.9),
FedAdagrad, FedAdam and FedYogi at the paper's best learning rates (10 to the
power of the table values), one client epoch of SGD, client sampling seed 1,
adaptive optimizers with beta1 0.9, beta2 0.999 and initial accumulator 0
(as the paper reports them; docs/results.md records what runs).

The data is read from the local TFF cache (`data.cache_dir`, default `~/.tff`);
offline without it the run stops with `fedtff.data.DatasetNotCachedError`
naming the file to fetch. `data.synthetic_standin=True` swaps in TFF's tiny
`get_synthetic()` clients (smoke tests only; `SMOKE_OVERRIDES`). Each task
reports the paper's metric (`REPORTED_METRIC`): accuracy, mean squared error
for the EMNIST autoencoder, recall at 5 for Stack Overflow tag prediction.

  python scripts/reproduce.py reddi --seeds 1
  python experiments/train.py --config=configs/reddi.py:emnist_character:fedadam ...
"""

from fedtff.runner import config as config_lib

ALGORITHMS = ('fedadagrad', 'fedadam', 'fedyogi', 'fedavgm', 'fedavg')
SERVER_OPTIMIZER = {'fedadagrad': 'adagrad', 'fedadam': 'adam', 'fedyogi': 'yogi',
                    'fedavgm': 'sgd', 'fedavg': 'sgd'}

# task -> (dataset, model, clients per round, batch size, rounds, max examples per client)
TASKS = {
    'cifar100_image': ('cifar100', 'resnet18_group_norm', 10, 20, 4000, 0),
    'emnist_autoencoder': ('emnist_autoencoder', 'autoencoder', 10, 20, 3000, 0),
    'emnist_character': ('emnist_full', 'emnist_cnn', 10, 20, 1500, 0),
    'shakespeare_character': ('shakespeare', 'char_lstm', 10, 4, 1200, 0),
    'stackoverflow_word': ('stackoverflow_word', 'word_lstm', 50, 16, 1500, 1000),
    'stackoverflow_tag': ('stackoverflow_tag', 'logistic_regression', 10, 100, 1500, 1000),
}
# Stack Overflow: 10,000 most frequent words (both tasks) and 500 most frequent
# tags; at most 1,000 posts per client for tag prediction too, as in Reddi et
# al.'s code (google-research/federated, optimization/README.md:
# so_lr_max_elements_per_user 1000).
VOCAB_SIZE, NUM_TAGS = 10000, 500
# The evaluation metric each task's results are reported in (metrics.csv column).
REPORTED_METRIC = {task: 'eval/accuracy' for task in TASKS}
REPORTED_METRIC.update({'emnist_autoencoder': 'eval/mse', 'stackoverflow_tag': 'eval/recall_at_5'})

# log10 learning rates and epsilons, in ALGORITHMS order (Reddi et al., Table 8 / benchmarks.md).
CLIENT_LR = {
    'cifar100_image': (-1, -1.5, -1.5, -1.5, -1),
    'emnist_autoencoder': (1.5, 1, 1, 0.5, 1),
    'emnist_character': (-1.5, -1.5, -1.5, -1.5, -1),
    'shakespeare_character': (0, 0, 0, 0, 0),
    'stackoverflow_word': (-0.5,) * 5,
    'stackoverflow_tag': (2,) * 5,
}
SERVER_LR = {
    'cifar100_image': (-1, 0, 0, 0, 0.5),
    'emnist_autoencoder': (-1.5, -1.5, -1.5, 0, 0),
    'emnist_character': (-1, -2.5, -2.5, -0.5, 0),
    'shakespeare_character': (-0.5, -2, -2, -0.5, 0),
    'stackoverflow_word': (-1.5, -2, -2, 0, 0),
    'stackoverflow_tag': (1, -0.5, -0.5, 0, 0),
}
EPSILON = {  # Adagrad / Adam / Yogi
    'cifar100_image': (-2, -1, -1),
    'emnist_autoencoder': (-3, -3, -3),
    'emnist_character': (-2, -4, -4),
    'shakespeare_character': (-1, -3, -3),
    'stackoverflow_word': (-4, -5, -5),
    'stackoverflow_tag': (-2, -5, -5),
}
VARIANTS = tuple(f'{task}:{algo}' for task in TASKS for algo in ALGORITHMS)
# What tests/test_configs_smoke.py applies before its one-round run: TFF's
# synthetic stand-in (no cache needed), as many clients as it has, and no XLA,
# whose compilation of these models takes longer than a round or two runs
# (ResNet-18: 88 s against 21 s of CPU; docs/performance.md).
SMOKE_OVERRIDES = {'data.synthetic_standin': True, 'clients_per_round': 2,
                   'data.max_elements': 8, 'jit_compile': False}
# One variant per task for a one-round smoke run: the 30 differ only in
# optimizer settings (all validated by tests/test_benchmarks.py), and a TFF run
# of the LSTMs or the ResNet takes 30-90 s here even on the stand-ins.
SMOKE_VARIANTS = ('cifar100_image:fedavg', 'emnist_autoencoder:fedavg',
                  'emnist_character:fedadam', 'shakespeare_character:fedyogi',
                  'stackoverflow_word:fedavgm', 'stackoverflow_tag:fedadagrad')


def _hyperparameters(task: str, algorithm: str):
  index = ALGORITHMS.index(algorithm)
  client_lr = 10.0 ** CLIENT_LR[task][index]
  server_lr = 10.0 ** SERVER_LR[task][index]
  epsilon = 10.0 ** EPSILON[task][index] if index < 3 else None
  return client_lr, server_lr, epsilon


def get_config(variant: str = 'emnist_character:fedadam'):
  """The config of `variant`, 'TASK:ALGO' (one of `VARIANTS`)."""
  if variant not in VARIANTS:
    raise ValueError(f'Unknown variant {variant!r}; expected TASK:ALGO, one of: '
                     f'{", ".join(VARIANTS)}.')
  task, algorithm = variant.split(':')
  dataset, model, clients_per_round, batch_size, rounds, max_elements = TASKS[task]
  client_lr, server_lr, epsilon = _hyperparameters(task, algorithm)
  config = config_lib.base_config()
  config.data.dataset = dataset
  config.data.batch_size = batch_size
  config.data.client_epochs = 1
  config.data.max_elements = max_elements
  if dataset.startswith('stackoverflow'):
    config.data.vocab_size = VOCAB_SIZE
  if dataset == 'stackoverflow_tag':
    config.data.num_classes = NUM_TAGS
  config.data.shuffle_buffer = 1000
  config.model.name = model
  config.algorithm.name = algorithm
  config.algorithm.weighted = True
  config.client.optimizer = 'sgd'
  config.client.learning_rate = client_lr
  config.server.optimizer = SERVER_OPTIMIZER[algorithm]
  config.server.learning_rate = server_lr
  config.server.momentum = 0.9 if algorithm == 'fedavgm' else 0.0
  config.server.beta_1 = 0.9
  config.server.beta_2 = 0.999
  config.server.initial_accumulator = 0.0
  if epsilon is not None:
    config.server.epsilon = epsilon
  config.total_rounds = rounds
  config.clients_per_round = clients_per_round
  config.rounds_per_eval = 100
  config.rounds_per_checkpoint = 100
  config.seed = 1
  return config
