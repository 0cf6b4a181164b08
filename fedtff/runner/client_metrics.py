"""The distribution of an evaluation metric over held-out clients.

Beside the pooled metric (example-weighted over clients, as TFF's federated
evaluation finalizes it), each evaluation round can log how the metric is
spread over the held-out clients: its mean and standard deviation over
clients, the 10th, 50th and 90th percentiles and the worst client. This is the
fairness view of q-FFL (Li et al. 2020, arXiv 1905.10497), Ditto (Li et al.
2021, arXiv 2012.04221) and FedJAX's evaluations (Ro et al. 2021,
arXiv 2108.02117). Every client counts once, whatever its size.

Columns are `eval/<metric>/<statistic>` (e.g. `eval/accuracy/p10`), for every
metric but the counters `num_examples` and `num_batches`. A client without
examples has no metric value and is left out. The standard deviation is the
population one (NumPy's `ddof=0`); percentiles interpolate linearly (NumPy's
default). `worst` is the minimum of a metric whose larger value is better and
the maximum of one whose smaller value is better (`fedtff.runner.outputs.better`);
a metric without a known direction has no `worst` column.
"""

from __future__ import annotations

import collections
from typing import Dict, Mapping, Sequence

import numpy as np

from fedtff.runner import outputs

STATISTICS = ('mean', 'std', 'p10', 'p50', 'p90', 'worst')
COUNTERS = ('num_examples', 'num_batches')
_PERCENTILES = {'p10': 10, 'p50': 50, 'p90': 90}


def _statistics(name: str) -> Sequence[str]:
  return STATISTICS if outputs.better(name) else STATISTICS[:-1]


def column_names(metric_names: Sequence[str], prefix: str = 'eval') -> list:
  """The per-client columns of `metric_names` (without prefix), in order."""
  return [f'{prefix}/{name}/{stat}' for name in metric_names if name not in COUNTERS
          for stat in _statistics(name)]


def distribution(per_client: Mapping[str, np.ndarray], num_examples: np.ndarray, *,
                 prefix: str = 'eval') -> Dict[str, float]:
  """The per-client statistics of every metric, as `{prefix}/<metric>/<statistic>`.

  Args:
    per_client: `{metric: [num_clients] values}`, each client's own metric.
    num_examples: `[num_clients]`: each client's examples; clients with none
      are left out.
    prefix: The column prefix.

  Returns:
    The statistics; empty for a metric if no client has examples.
  """
  keep = np.asarray(num_examples) > 0
  out = collections.OrderedDict()
  for name, values in per_client.items():
    if name in COUNTERS:
      continue
    values = np.asarray(values, np.float64)[keep]
    if not values.size:
      continue
    stats = dict(mean=np.mean(values), std=np.std(values),
                 **{k: np.percentile(values, q) for k, q in _PERCENTILES.items()})
    best = outputs.better(name)
    if best:
      stats['worst'] = np.min(values) if best is max else np.max(values)
    for stat in _statistics(name):
      out[f'{prefix}/{name}/{stat}'] = float(stats[stat])
  return out
