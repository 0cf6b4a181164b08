"""Li et al. 2020, Federated Optimization in Heterogeneous Networks (FedProx, MLSys 2020, arXiv 1812.06127).

FedAvg (mu = 0) against FedProx (mu = 1) on the paper's Synthetic(alpha, beta)
data and its IID variant (`fedtff.data.synthetic_fedprox`; 30 users, 60
features, 10 classes, each user's samples split 90% train / 10% test) with the
paper's recipe (arXiv 1812.06127; docs/results.md): multinomial logistic
regression with L2 1e-3, client SGD lr 0.01, E = 20 local epochs, batch 10, 10
clients per round, 200 rounds, updates weighted by sample count. The data
generator's seed is `config.seed`, so every seed is a new draw of the data.

`get_config('DATA:ALGO')`, DATA one of synthetic_0_0, synthetic_0.5_0.5,
synthetic_1_1, synthetic_iid and ALGO fedavg or fedprox. `SHORTENED` is the
documented shortened suite that `scripts/reproduce.py fedprox --shortened` runs.

  python scripts/reproduce.py fedprox --seeds 0,1,2
"""

from fedtff.runner import config as config_lib

DATASETS = {'synthetic_0_0': (0.0, 0.0), 'synthetic_0.5_0.5': (0.5, 0.5),
            'synthetic_1_1': (1.0, 1.0), 'synthetic_iid': None}
ALGORITHMS = {'fedavg': 0.0, 'fedprox': 1.0}  # name -> mu
VARIANTS = tuple(f'{d}:{a}' for d in DATASETS for a in ALGORITHMS)
# The shortened suite: fewer rounds than the paper's 200 (same E, batch, lr).
SHORTENED = {'total_rounds': 15}
# What tests/test_configs_smoke.py applies: one local epoch instead of 20.
SMOKE_OVERRIDES = {'data.client_epochs': 1}
# The variants it runs a round of: both data generators and both algorithms (the
# others differ from these in alpha and beta only; it validates them and builds their data).
SMOKE_VARIANTS = ('synthetic_1_1:fedprox', 'synthetic_iid:fedavg')


def get_config(variant: str = 'synthetic_1_1:fedprox'):
  """The config of `variant`, 'DATA:ALGO' (one of `VARIANTS`)."""
  if variant not in VARIANTS:
    raise ValueError(f'Unknown variant {variant!r}; expected one of: {", ".join(VARIANTS)}.')
  dataset, algorithm = variant.split(':')
  config = config_lib.base_config()
  if DATASETS[dataset] is None:
    config.data.dataset = 'synthetic_iid'
  else:
    config.data.dataset = 'synthetic_fedprox'
    config.data.synthetic_alpha, config.data.synthetic_beta = DATASETS[dataset]
  config.data.batch_size = 10
  config.data.client_epochs = 20
  config.data.shuffle_buffer = 1000
  config.data.weight_decay = 1e-3
  config.model.name = 'logistic_regression'
  config.algorithm.name = algorithm
  config.algorithm.weighted = True
  config.algorithm.proximal_strength = ALGORITHMS[algorithm]
  config.client.optimizer = 'sgd'
  config.client.learning_rate = 0.01
  config.server.optimizer = 'sgd'
  config.server.learning_rate = 1.0
  config.total_rounds = 200
  config.clients_per_round = 10
  config.rounds_per_eval = 1
  config.rounds_per_checkpoint = 50
  config.seed = 0
  return config
