"""Accuracy and loss against round, for one run directory or several.

`plot_runs(run_dirs)` reads each run's metrics.csv and draws one panel per kind
of metric (accuracy, loss): one colour per run, training metrics dashed and
evaluation metrics solid, and a figure legend of the run names (`run_names`).
Rounds without evaluation (empty cells) are left out of the evaluation lines.
The figure is a plain `matplotlib.figure.Figure`, rendered by Agg; nothing
touches pyplot's global state.
"""

from __future__ import annotations

import os
from typing import List, Sequence, Tuple

import matplotlib
import matplotlib.figure
import matplotlib.lines

from fedtff.runner import outputs
from fedtff.runner import run_dir

DEFAULT_METRICS = ('train/accuracy', 'eval/accuracy', 'train/loss', 'eval/loss')
COMPARISON_OUTPUT = 'metrics_comparison.png'
_TRAIN_STYLE = dict(linestyle='--', linewidth=1.2)
_EVAL_STYLE = dict(linestyle='-', linewidth=1.8, marker='o', markersize=3)


def run_names(run_dirs: Sequence[str]) -> List[str]:
  """The runs' directory names, with parent directories added to tell duplicates apart.

  `a/run` and `b/run` become `a/run` and `b/run`; the same directory given
  twice becomes `run` and `run (2)`.
  """
  parts = [os.path.abspath(d).strip(os.sep).split(os.sep) for d in run_dirs]
  names = [p[-1] for p in parts]
  for depth in range(2, max(len(p) for p in parts) + 1):
    paths = {}
    for name, part in zip(names, parts):
      paths.setdefault(name, set()).add(tuple(part))
    duplicated = {name for name, dirs in paths.items() if len(dirs) > 1}
    names = [os.path.join(*p[-depth:]) if n in duplicated else n for n, p in zip(names, parts)]
  return [n if names[:i].count(n) == 0 else f'{n} ({names[:i].count(n) + 1})'
          for i, n in enumerate(names)]


def default_output(run_dirs: Sequence[str]) -> str:
  """`<run>/metrics.png` for one run, `./metrics_comparison.png` for several."""
  if len(run_dirs) == 1:
    return os.path.join(run_dirs[0], 'metrics.png')
  return COMPARISON_OUTPUT


def read_metrics(workdir: str, metrics: Sequence[str]) -> List[dict]:
  """The rows of `<workdir>/metrics.csv`, checked to have `metrics` as columns.

  Raises:
    FileNotFoundError: If there is no metrics.csv.
    ValueError: If it has no rows yet, or lacks one of `metrics`.
  """
  path = os.path.join(workdir, run_dir.METRICS_CSV)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} does not exist; is {workdir} a run directory?')
  rows = outputs.read_metrics_csv(path)
  if not rows:
    raise ValueError(f'{path} has no rounds yet.')
  missing = [m for m in metrics if m not in rows[0]]
  if missing:
    raise ValueError(f'{path} has no column {missing[0]}; its columns are: {", ".join(rows[0])}.')
  return rows


def _series(rows: Sequence[dict], metric: str) -> Tuple[list, list]:
  points = [(row['round'], row[metric]) for row in rows if row[metric] is not None]
  return [p[0] for p in points], [p[1] for p in points]


def _kind(metric: str) -> str:
  return metric.rpartition('/')[2]


def _style(metric: str) -> dict:
  return _TRAIN_STYLE if metric.startswith('train/') else _EVAL_STYLE


def _style_legend(axes, metrics: Sequence[str]) -> None:
  """A key on the first panel: which line style is training, which evaluation."""
  prefixes = sorted({m.partition('/')[0] for m in metrics}, key=lambda p: p != 'train')
  handles = [matplotlib.lines.Line2D([], [], color='black', **_style(f'{p}/')) for p in prefixes]
  axes.legend(handles, prefixes, loc='best', fontsize='small')


def _client_band(axes, rows: Sequence[dict], metric: str, colour) -> None:
  """Shades the 10th-90th percentile over held-out clients of an evaluation metric,
  if the run logged them (`per_client_eval`, `fedtff.runner.client_metrics`)."""
  low, high = f'{metric}/p10', f'{metric}/p90'
  if not metric.startswith('eval/') or low not in rows[0] or high not in rows[0]:
    return
  points = [(r['round'], r[low], r[high]) for r in rows
            if r[low] is not None and r[high] is not None]
  if points:
    rounds, lows, highs = zip(*points)
    axes.fill_between(rounds, lows, highs, color=colour, alpha=0.2, linewidth=0,
                      label=f'{metric} p10-p90 over clients')


def plot_runs(run_dirs: Sequence[str], *,
              metrics: Sequence[str] = DEFAULT_METRICS,
              client_band: bool = True) -> matplotlib.figure.Figure:
  """Draws `metrics` against round for each run, one panel per kind of metric.

  Args:
    run_dirs: Run directories holding a metrics.csv.
    metrics: Columns of metrics.csv, e.g. `eval/accuracy`; those ending in the
      same name (`accuracy`) share a panel.
    client_band: Shade, around each evaluation metric of a run that logged
      per-client evaluation (`eval/<name>/p10` and `/p90` columns), the band
      from its 10th to its 90th percentile over held-out clients.

  Returns:
    The figure; save it with `figure.savefig(path)`.

  Raises:
    FileNotFoundError, ValueError: See `read_metrics`.
  """
  runs = [read_metrics(d, metrics) for d in run_dirs]
  kinds = list(dict.fromkeys(_kind(m) for m in metrics))
  figure = matplotlib.figure.Figure(figsize=(5 * len(kinds), 4.2), layout='constrained')
  axes = figure.subplots(1, len(kinds), squeeze=False)[0]
  colours = matplotlib.rcParams['axes.prop_cycle'].by_key()['color']
  handles = []
  for index, rows in enumerate(runs):
    colour = colours[index % len(colours)]
    for metric in metrics:
      axes[kinds.index(_kind(metric))].plot(*_series(rows, metric), color=colour, **_style(metric))
      if client_band:
        _client_band(axes[kinds.index(_kind(metric))], rows, metric, colour)
    handles.append(matplotlib.lines.Line2D([], [], color=colour, linewidth=1.8))
  for ax, kind in zip(axes, kinds):
    ax.set(xlabel='round', ylabel=kind)
    ax.grid(alpha=0.3)
  _style_legend(axes[0], metrics)
  figure.legend(handles, run_names(run_dirs), loc='outside lower center',
                ncols=min(len(runs), 4))
  return figure
