"""Quickstart: FedAvg with server momentum on scikit-learn's 8x8 digits.

The 1,797 digits are split over 60 clients with Dirichlet(0.5) label skew
(NIID-Bench style); 50 clients train, 10 per round, and 10 are held out for
testing. One local epoch of SGD per round; the server applies the averaged
update with momentum 0.9 (FedAvgM, Hsu et al. 2019, arXiv 1909.06335).

  scripts/quickstart.sh
  python experiments/train.py --config=configs/quickstart.py --workdir=runs/quickstart
"""

from fedtff.runner import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.data.dataset = 'digits'
  config.data.num_clients = 60
  config.data.num_test_clients = 10
  config.data.partition = 'dirichlet'
  config.data.dirichlet_alpha = 0.5
  config.data.batch_size = 10
  config.data.client_epochs = 1
  config.model.name = 'mlp'
  config.model.hidden_units = (64,)
  config.client.optimizer = 'sgd'
  config.client.learning_rate = 0.1
  config.server.optimizer = 'sgd'
  config.server.learning_rate = 1.0
  config.server.momentum = 0.9
  config.total_rounds = 100
  config.clients_per_round = 10
  config.rounds_per_eval = 10
  config.seed = 0
  return config
