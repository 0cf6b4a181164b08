"""McMahan et al. 2017, Communication-Efficient Learning of Deep Networks from
Decentralized Data (AISTATS 2017, arXiv 1602.05629), Table 2, scaled to digits.

The paper trains on MNIST over 100 clients, IID or pathological non-IID (2
label-sorted shards per client), with C = 0.1, and counts the rounds FedSGD
and FedAvg at several (E, B) need to reach a target test accuracy. Offline,
this uses scikit-learn's 1,797 8x8 digits (`fedtff.data.load_digits`) over 50
clients (IID, or 2 label-sorted shards of about 18 digits each), C = 0.1 (5
clients per round), the 2NN (hidden layers 200, 200) and each client's
held-out 20% as test data. B = inf is full batch (batch 10,000). The targets
are 80% and 90% test accuracy (`TARGET_ACCURACIES`), reachable here; the
paper's 99% on MNIST is not comparable.

`get_config('SPLIT:ALGO')`: SPLIT iid or noniid, ALGO fedsgd or fedavg_eE_bB.

  python scripts/reproduce.py mcmahan_digits --seeds 0,1
"""

from fedtff.runner import config as config_lib

TARGET_ACCURACIES = (0.80, 0.90)
FULL_BATCH = 10000
SPLITS = {'iid': 'iid', 'noniid': 'shards'}
# name -> (E, B); B = None is full batch.
# E > 1 with B = inf is left out: fedtff (like TFF's baselines) repeats a client's
# data E times before batching, so a full batch then holds all E copies and E = 5
# gives the same single step as E = 1 (measured: identical losses).
ALGORITHMS = {'fedsgd': (1, None), 'fedavg_e1_binf': (1, None),
              'fedavg_e1_b10': (1, 10), 'fedavg_e5_b10': (5, 10)}
VARIANTS = tuple(f'{s}:{a}' for s in SPLITS for a in ALGORITHMS)
# The shortened suite: 30 rounds instead of 100, evaluated every 2 rounds (rounds to the
# target are then even numbers; runs that miss it show '>30').
SHORTENED = {'total_rounds': 30, 'rounds_per_eval': 2}
SMOKE_OVERRIDES = {}
# The variants tests/test_configs_smoke.py runs a round of: both splits, FedSGD on a
# full batch and FedAvg with E = 5, B = 10 (the others differ in E and B only; it
# validates them and builds their data).
SMOKE_VARIANTS = ('iid:fedsgd', 'noniid:fedavg_e5_b10')
CLIENT_LR = 0.1
FEDSGD_LR = 0.5


def get_config(variant: str = 'noniid:fedavg_e5_b10'):
  """The config of `variant`, 'SPLIT:ALGO' (one of `VARIANTS`)."""
  if variant not in VARIANTS:
    raise ValueError(f'Unknown variant {variant!r}; expected one of: {", ".join(VARIANTS)}.')
  split, algorithm = variant.split(':')
  epochs, batch = ALGORITHMS[algorithm]
  config = config_lib.base_config()
  config.data.dataset = 'digits'
  config.data.num_clients = 50
  config.data.num_test_clients = 0
  config.data.test_fraction = 0.2
  config.data.partition = SPLITS[split]
  config.data.shards_per_client = 2
  config.data.batch_size = batch or FULL_BATCH
  config.data.client_epochs = epochs
  config.model.name = 'mlp'
  config.model.hidden_units = (200, 200)
  config.client.optimizer = 'sgd'
  config.client.learning_rate = CLIENT_LR
  config.server.optimizer = 'sgd'
  if algorithm == 'fedsgd':
    config.algorithm.name = 'fedsgd'
    config.server.learning_rate = FEDSGD_LR
  else:
    config.algorithm.name = 'fedavg'
    config.server.learning_rate = 1.0
  config.update(dict(total_rounds=100, clients_per_round=5, rounds_per_eval=1,
                     rounds_per_checkpoint=50, seed=0))
  return config
