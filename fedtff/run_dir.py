"""A run directory: its files, resuming into it, and its summary.

  config.json      the resolved config
  metrics.csv      one row per round (docs/configs.md lists the columns)
  metrics.jsonl    the same rows as JSON lines
  tensorboard/     the same scalars as TensorBoard events
  checkpoints/     round-<N>.npz server-state checkpoints (fedtff.checkpoints)
  summary.json     final and best metrics, rounds and total time

Rerunning a config on its own run directory resumes it; raising
`total_rounds` extends it; it may continue on the other `backend` or on other
`runtime` workers; any other change of config is refused unless the caller
asks to overwrite.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import Any, Dict, Iterator, List, Optional, Sequence

import ml_collections

from fedtff import config as config_lib
from fedtff import outputs

CONFIG = 'config.json'
METRICS_CSV = 'metrics.csv'
METRICS_JSONL = 'metrics.jsonl'
SUMMARY = 'summary.json'
CHECKPOINTS = 'checkpoints'
TENSORBOARD = 'tensorboard'
# Keys a resumed run may change: more rounds, the backend, other machines to run
# on, or how their workers get the data; none of them changes the results.
_EXTENDABLE_KEYS = ('total_rounds', 'backend', 'runtime.workers', 'runtime.connect_timeout_s',
                    'data.feed', 'data.feed_dir')
# Best value of an evaluation metric: the larger or the smaller.
_BEST = {'accuracy': max, 'loss': min, 'mse': min, 'recall_at_5': max, 'precision_at_5': max}


def _clear(workdir: str) -> None:
  for name in (METRICS_CSV, METRICS_JSONL, SUMMARY):
    if os.path.exists(os.path.join(workdir, name)):
      os.remove(os.path.join(workdir, name))
  for name in (CHECKPOINTS, TENSORBOARD):
    shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)


def prepare(workdir: str, config: ml_collections.ConfigDict, *, overwrite: bool = False) -> None:
  """Makes `workdir` ready for `config`, refusing a different earlier config.

  Raises:
    fedtff.config.ConfigError: If `workdir` holds a run of a config that
      differs in more than `_EXTENDABLE_KEYS` (keys missing from the earlier
      config count as their defaults), and `overwrite` is False.
    OSError: If `workdir` cannot be written.
  """
  outputs.ensure_writable_dir(workdir)
  path = os.path.join(workdir, CONFIG)
  new = json.loads(config_lib.to_json(config))
  if os.path.exists(path) and not overwrite:
    with open(path) as f:
      differences = [d for d in config_lib.differences(_with_defaults(json.load(f)), new)
                     if d.partition(':')[0] not in _EXTENDABLE_KEYS]
    if differences:
      raise config_lib.ConfigError(
          f'{workdir} holds a run with another config ({"; ".join(differences)}); '
          'pass --overwrite to start it over, or choose another --workdir.')
  if overwrite:
    _clear(workdir)
  outputs.atomic_write_text(path, config_lib.to_json(config) + '\n')


def _with_defaults(old_config: Dict[str, Any]) -> Dict[str, Any]:
  """An earlier run's config, with the schema's defaults for keys added since."""
  defaults = json.loads(json.dumps(config_lib.schema_defaults()))  # Tuples as in JSON.
  return dict(defaults, **dict(config_lib.leaves(old_config)))


@contextlib.contextmanager
def metric_writers(workdir: str, columns: Sequence[str], *, last_round: Optional[int],
                   tensorboard: bool = True) -> Iterator[list]:
  """Yields the writers of one row per round; drops rows after `last_round`."""
  writers = [outputs.MetricsCsv(os.path.join(workdir, METRICS_CSV), columns,
                                last_round=last_round).write,
             outputs.JsonLines(os.path.join(workdir, METRICS_JSONL), last_round=last_round).write]
  board = outputs.TensorBoardScalars(os.path.join(workdir, TENSORBOARD)) if tensorboard else None
  if board:
    writers.append(board.write)
  try:
    yield writers
  finally:
    if board:
      board.close()


def best_metrics(rows: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
  """For each `eval/<name>` column with a direction in `_BEST`, its best value and round."""
  best = {}
  for column in rows[0] if rows else ():
    pick = _BEST.get(column.rpartition('/')[2])
    values = [(row[column], row['round']) for row in rows if row.get(column) is not None]
    if column.startswith('eval/') and pick and values:
      value, round_num = pick(values, key=lambda pair: pair[0])
      best[column] = {'value': value, 'round': int(round_num)}
  return best


def write_summary(workdir: str, *, total_time_s: float,
                  extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """Summarizes metrics.csv into summary.json and returns the summary."""
  rows = outputs.read_metrics_csv(os.path.join(workdir, METRICS_CSV))
  final = {k: v for k, v in rows[-1].items() if v is not None} if rows else {}
  summary = {
      'final': final,
      'best': best_metrics(rows),
      'rounds_completed': int(final.get('round', 0)),
      'total_time_s': total_time_s,
      **(extra or {}),
  }
  outputs.write_json(os.path.join(workdir, SUMMARY), summary)
  return summary
