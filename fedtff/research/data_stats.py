"""Per-client statistics of a config's federated data: sizes and label skew."""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Union

import ml_collections
import numpy as np

from fedtff import data
from fedtff import tasks


def client_stats(arrays: data.FederatedArrays, num_classes: Optional[int] = None) -> Dict:
  """Client count, examples per client (min, median, max) and label skew.

  Label skew is summarized by the number of distinct labels per client
  (min, median, max), the mean share of each client's most common label and
  the mean total-variation distance between a client's label distribution
  and the overall one (0 = IID, 1 = disjoint).
  """
  histograms = data.label_histograms(arrays.labels, arrays.partition, num_classes)
  sizes = histograms.sum(axis=1)
  nonempty = histograms[sizes > 0] / sizes[sizes > 0, None]
  overall = histograms.sum(axis=0) / histograms.sum()
  classes = (histograms > 0).sum(axis=1)
  return {
      'num_clients': int(len(sizes)),
      'examples_min': int(sizes.min()), 'examples_median': float(np.median(sizes)),
      'examples_max': int(sizes.max()),
      'classes_min': int(classes.min()), 'classes_median': float(np.median(classes)),
      'classes_max': int(classes.max()),
      'dominant_label_share': float(nonempty.max(axis=1).mean()),
      'mean_tv_distance': float(0.5 * np.abs(nonempty - overall).sum(axis=1).mean()),
      'histograms': histograms,
  }


def config_stats(config: ml_collections.ConfigDict) -> Dict[str, Dict]:
  """`client_stats` of the training and evaluation clients that `config` builds."""
  train, evaluation = tasks.arrays(config.data, config.seed)
  num_classes = int(max(np.max(train.labels), np.max(evaluation.labels))) + 1
  return {'train': client_stats(train, num_classes), 'eval': client_stats(evaluation, num_classes)}


def partition_stats(config: ml_collections.ConfigDict,
                    names: Optional[Sequence[str]] = None) -> Dict[str, Union[Dict, str]]:
  """The training clients' `client_stats` under each partition in `names`.

  `names` defaults to every `tasks.PARTITIONS`; the rest of `config` (its
  parameters such as `data.classes_per_client`) is kept. A partition the data
  refuses maps to its one-line error instead.
  """
  results = {}
  for name in tasks.PARTITIONS if names is None else names:
    variant = config.copy_and_resolve_references()
    variant.data.partition = name
    try:
      results[name] = config_stats(variant)['train']
    except ValueError as e:
      results[name] = str(e)
  return results


def plot_label_distributions(histograms: np.ndarray, path: str, title: str) -> None:
  """Saves a stacked bar chart of each client's label counts as a PNG."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  figure, axes = pyplot.subplots(figsize=(max(6, len(histograms) * 0.15), 4))
  bottom = np.zeros(len(histograms))
  for label in range(histograms.shape[1]):
    axes.bar(np.arange(len(histograms)), histograms[:, label], bottom=bottom, label=str(label))
    bottom += histograms[:, label]
  axes.set(xlabel='client', ylabel='examples', title=title)
  axes.legend(title='label', fontsize='small', ncol=2, loc='upper right')
  figure.tight_layout()
  figure.savefig(path)
  pyplot.close(figure)
