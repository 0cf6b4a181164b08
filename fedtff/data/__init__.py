"""Federated datasets: sources, partitions, splits, preprocessing and `ClientData`.

Sources: arrays in memory (`from_arrays`, `FederatedArrays`), per-client
`.npz` files (`from_npz_dir`), TFF's hosted datasets from the local cache
(`load_tff_dataset`), FedProx's synthetic data (`synthetic_fedprox`) and
scikit-learn's digits (`load_digits`). Training clients whose shuffle and
augmentation are seeded by `(seed, round, client)`: `RoundClientData`. See
docs/data.md.
"""

from fedtff.data.client_data import FederatedArrays
from fedtff.data.client_data import client_dataset_fn
from fedtff.data.client_data import FEEDS
from fedtff.data.client_data import from_arrays
from fedtff.data.hosted import DatasetNotCachedError
from fedtff.data.hosted import TFF_DATASETS
from fedtff.data.hosted import default_cache_dir
from fedtff.data.hosted import load_stackoverflow_tags
from fedtff.data.hosted import load_stackoverflow_vocab
from fedtff.data.hosted import load_tff_dataset
from fedtff.data.hosted import tff_dataset_path
from fedtff.data.npz import from_npz_dir
from fedtff.data.npz import load_npz_dir
from fedtff.data.partition import check_labels
from fedtff.data.partition import CLASS_ASSIGNMENTS
from fedtff.data.partition import continuous
from fedtff.data.partition import dirichlet_per_class
from fedtff.data.partition import dirichlet_prior
from fedtff.data.partition import distribution
from fedtff.data.partition import exponential
from fedtff.data.partition import flower_distribution_shares
from fedtff.data.partition import GROUP_MODES
from fedtff.data.partition import grouped_natural_id
from fedtff.data.partition import id_to_size
from fedtff.data.partition import iid
from fedtff.data.partition import inner_dirichlet
from fedtff.data.partition import label_histograms
from fedtff.data.partition import linear
from fedtff.data.partition import natural_id
from fedtff.data.partition import pathological
from fedtff.data.partition import quantity_skew
from fedtff.data.partition import shards
from fedtff.data.partition import skewed_sizes
from fedtff.data.partition import square
from fedtff.data.preprocessing import ClientPreprocessing
from fedtff.data.preprocessing import cifar_map
from fedtff.data.preprocessing import emnist_autoencoder_map
from fedtff.data.preprocessing import emnist_map
from fedtff.data.preprocessing import shakespeare_preprocess
from fedtff.data.preprocessing import shakespeare_special_tokens
from fedtff.data.preprocessing import stackoverflow_special_tokens
from fedtff.data.preprocessing import stackoverflow_tag_preprocess
from fedtff.data.preprocessing import stackoverflow_word_preprocess
from fedtff.data.rounds import RoundClientData
from fedtff.data.rounds import client_seed
from fedtff.data.rounds import round_client_id
from fedtff.data.rounds import round_client_ids
from fedtff.data.sources import load_digits
from fedtff.data.splits import Split
from fedtff.data.splits import holdout_client_examples
from fedtff.data.splits import holdout_examples
from fedtff.data.splits import split
from fedtff.data.splits import split_client_data
from fedtff.data.splits import split_client_ids
from fedtff.data.sql_files import serialize_example
from fedtff.data.sql_files import write_sql_client_data
from fedtff.data.synthetic import SyntheticData
from fedtff.data.synthetic import synthetic_fedprox
from fedtff.data.synthetic import synthetic_fedprox_iid
