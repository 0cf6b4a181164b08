"""Per-round callbacks, early stopping, and how a stopped run is recorded and extended.

A callback is any callable taking a `fedtff.runner.training.RoundEnd` (the round
number, its metrics row, the server model weights and the run's rows so far)
and returning None to go on, or a reason (one sentence) to stop the run after
that round:

  def stop_if_tiny(end):
    if np.abs(end.model_weights.trainable[0]).max() < 1e-3:
      return f'the first kernel vanished at round {end.round_num}'

  fedtff.run_experiment(config, workdir, callbacks=[stop_if_tiny])

Two are built in, and selectable from the config (`config.stop`):

* `TargetStop`: stop at the first round whose metric reaches a target, e.g.
  `eval/accuracy` >= 0.9; `summary.json` records that round as
  `rounds_to_target`, the number of rounds McMahan et al. (2017, Table 2)
  report to compare algorithms.
* `PlateauStop`: stop when the metric has not improved on its best by more
  than `min_delta` for `patience` consecutive values (as Keras's
  `EarlyStopping`).

Both are functions of `RoundEnd.history` only, so a resumed run stops exactly
where an uninterrupted one does. Each fires at the one round its condition
first holds (the first round reaching the target; the round the count of
values without improvement reaches `patience`), never again after it.

A stopped run (docs/runner.md): its last checkpoint is the stop round's, and
records the stop; `summary.json` has `stopped` (round and reason). Rerunning
the same config returns that summary and runs nothing. Changing
`total_rounds` or a `stop.*` key extends it: rounds continue from the stop
round, and the event that stopped it does not fire again (the target was
reached already), so `rounds_to_target` keeps its value.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import ml_collections

from fedtff.runner import outputs
from fedtff.runner import run_dir
from fedtff.runner import training

RoundEnd = training.RoundEnd
Callback = training.Callback
# The checkpoint metadata key of the stop record (fedtff.runner.checkpoints).
STOP_METADATA = 'stop'
MODES = outputs.DIRECTION_MODES
direction = outputs.direction


def _reaches(value: float, target: float, way: str) -> bool:
  return value >= target if way == 'max' else value <= target


def _values(history: Sequence[Mapping[str, Any]], metric: str) -> List[tuple]:
  return [(row['round'], row[metric]) for row in history if row.get(metric) is not None]


def rounds_to_target(rows: Sequence[Mapping[str, Any]], metric: str, target: float, *,
                     mode: str = 'auto') -> Optional[int]:
  """The first round whose `metric` reaches `target` (>= for 'max', <= for 'min'), or None."""
  way = direction(metric, mode)
  reached = [r for r, value in _values(rows, metric) if _reaches(value, target, way)]
  return int(reached[0]) if reached else None


class TargetStop:
  """Stops at the first round whose `metric` reaches `target`.

  Args:
    metric: A metrics column, e.g. 'eval/accuracy' (present only in
      evaluated rounds) or 'train/loss'.
    target: The value to reach: at least it for a metric that improves
      upwards, at most it for one that improves downwards.
    mode: 'max', 'min' or 'auto' (from the metric's name, `direction`).
  """

  def __init__(self, metric: str, target: float, *, mode: str = 'auto'):
    self.metric, self.target, self.mode = metric, float(target), mode
    self._way = _check_direction(metric, mode)

  def __call__(self, end: RoundEnd) -> Optional[str]:
    first = rounds_to_target(end.history, self.metric, self.target, mode=self.mode)
    if first is None or first != end.round_num:
      return None
    value = end.metrics[self.metric]
    sign = '>=' if self._way == 'max' else '<='
    return f'{self.metric} reached the target: {value:.6g} {sign} {self.target:g}'


class PlateauStop:
  """Stops when `metric` has not improved for `patience` consecutive values.

  A value improves if it beats the best so far by more than `min_delta`;
  rounds without the metric (e.g. not evaluated) do not count.

  Args:
    metric: A metrics column, e.g. 'eval/loss'.
    patience: How many values in a row without improvement stop the run
      (at least 1).
    min_delta: The smallest change that counts as an improvement (>= 0).
    mode: 'max', 'min' or 'auto' (from the metric's name, `direction`).
  """

  def __init__(self, metric: str, patience: int, *, min_delta: float = 0.0, mode: str = 'auto'):
    if patience < 1 or min_delta < 0:
      raise ValueError(f'PlateauStop needs patience >= 1 and min_delta >= 0, got patience='
                       f'{patience}, min_delta={min_delta}.')
    self.metric, self.patience, self.min_delta = metric, patience, float(min_delta)
    self._way = _check_direction(metric, mode)

  def __call__(self, end: RoundEnd) -> Optional[str]:
    if end.metrics.get(self.metric) is None:
      return None
    best, best_round, wait = None, None, 0
    for round_num, value in _values(end.history, self.metric):
      gain = None if best is None else (value - best if self._way == 'max' else best - value)
      if gain is None or gain > self.min_delta:
        best, best_round, wait = value, round_num, 0
      else:
        wait += 1
    if wait != self.patience:
      return None
    return (f'{self.metric} has not improved on {best:.6g} (round {int(best_round)}) by more '
            f'than {self.min_delta:g} for {self.patience} values')


def _check_direction(metric: str, mode: str) -> str:
  if mode not in MODES:
    raise ValueError(f'mode must be one of {", ".join(MODES)}, got {mode!r}.')
  way = direction(metric, mode)
  if way is None:
    raise ValueError(f'Which way {metric!r} improves is not known; pass mode=\'max\' or \'min\'.')
  return way


def from_config(stop: Mapping[str, Any]) -> List[Callback]:
  """The built-in callbacks that `config.stop` selects (validated by fedtff.runner.config)."""
  found: List[Callback] = []
  if stop['target'] is not None:
    found.append(TargetStop(stop['metric'], stop['target'], mode=stop['mode']))
  if stop['patience']:
    found.append(PlateauStop(stop['metric'], stop['patience'], min_delta=stop['min_delta'],
                             mode=stop['mode']))
  return found


class Stopping:
  """The runner's side of callbacks: which run, why it stopped, and its summary.

  Args:
    config: The run's (validated) config.
    callbacks: The user's callbacks; `config.stop`'s built-in ones run first.
    metric_names: The run's training metric columns (`train/<name>`); the
      evaluation columns are the same names as `eval/<name>`.

  Raises:
    fedtff.runner.config.ConfigError: If `stop.metric` is not one of the run's columns.
  """

  def __init__(self, config: ml_collections.ConfigDict, callbacks: Sequence[Callback],
               metric_names: Sequence[str]):
    from fedtff.runner import config as config_lib  # pylint: disable=g-import-not-at-top
    self._stop = config.stop.to_dict()
    self._total_rounds = config.total_rounds
    names = [n.partition('/')[2] for n in metric_names]
    columns = [f'{prefix}/{n}' for prefix in ('train', 'eval') for n in names]
    if self._stop['metric'] and self._stop['metric'] not in columns:
      raise config_lib.ConfigError(
          f"Config key stop.metric is {self._stop['metric']!r}, not a metric of this run; "
          f'expected one of: {", ".join(columns)}.')
    self.callbacks = [self._recording(c) for c in from_config(self._stop) + list(callbacks)]
    self.stopped: Optional[Dict[str, Any]] = None
    self._columns: Optional[Sequence[str]] = None

  def publish_only(self, columns: Sequence[str]) -> None:
    """Callbacks see only these metric columns (a DP run's published ones)."""
    self._columns = list(columns)

  def _published(self, end: RoundEnd) -> RoundEnd:
    if self._columns is None:
      return end
    keep = lambda row: {k: v for k, v in row.items() if k in self._columns}
    return end._replace(metrics=keep(end.metrics), history=tuple(keep(r) for r in end.history))

  def _recording(self, callback: Callback) -> Callback:
    def record(end: RoundEnd) -> Optional[str]:
      reason = callback(self._published(end))
      if reason and not isinstance(reason, str):
        reason = f'{getattr(callback, "__name__", type(callback).__name__)} asked to stop'
      if reason:
        self.stopped = {'round': end.round_num, 'reason': reason}
      return reason
    return record

  def checkpoint_metadata(self, round_num: int) -> Dict[str, str]:
    """The stop record for round `round_num`'s checkpoint, if the run stops there."""
    if not self.stopped or self.stopped['round'] != round_num:
      return {}
    return {STOP_METADATA: json.dumps(dict(self.stopped, total_rounds=self._total_rounds,
                                           stop=self._stop), sort_keys=True)}

  def resume(self, last_round: int, metadata: Mapping[str, str]) -> bool:
    """Whether the checkpoint of `last_round` ends the run: it records a stop
    under the same `total_rounds` and `stop.*` (a changed one extends the run)."""
    record = json.loads(metadata[STOP_METADATA]) if STOP_METADATA in metadata else None
    if (record and record['round'] == last_round and record['total_rounds'] == self._total_rounds
        and record['stop'] == self._stop):
      self.stopped = {'round': record['round'], 'reason': record['reason']}
      return True
    return False

  def summary(self, workdir: str) -> Dict[str, Any]:
    """`summary.json`'s `stopped` and `rounds_to_target` entries, if any."""
    extra: Dict[str, Any] = {}
    if self.stopped:
      extra['stopped'] = dict(self.stopped)
    if self._stop['target'] is not None:
      rows = outputs.read_metrics_csv(os.path.join(workdir, run_dir.METRICS_CSV))
      metric, target = self._stop['metric'], self._stop['target']
      extra['rounds_to_target'] = {
          'metric': metric, 'target': target,
          'round': rounds_to_target(rows, metric, target, mode=self._stop['mode'])}
    return extra
