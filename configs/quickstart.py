"""Quickstart: FedAvg on scikit-learn's 8x8 digits, split non-IID over 60 clients.

Fifty clients train; ten more are held out and only evaluated. Run with
  scripts/quickstart.sh
or
  python experiments/train.py --config=configs/quickstart.py --workdir=runs/quickstart
"""

from fedtff import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.data.partition = 'dirichlet'
  config.data.dirichlet_alpha = 0.5
  config.data.client_epochs = 5
  config.model.name = 'mlp'
  config.model.hidden_units = (64,)
  config.client.learning_rate = 0.1
  config.total_rounds = 30
  config.clients_per_round = 10
  config.rounds_per_eval = 5
  return config
