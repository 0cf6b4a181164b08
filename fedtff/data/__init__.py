"""Federated datasets: sources, partitions and `ClientData` construction."""

from fedtff.data.client_data import from_arrays
from fedtff.data.partition import dirichlet_per_class
from fedtff.data.partition import iid
from fedtff.data.partition import label_histograms
from fedtff.data.sources import load_digits
