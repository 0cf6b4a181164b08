"""Benchmark suites that reproduce published results: run, tabulate and plot.

A suite is a config module in configs/ (`reddi`, `fedprox`, `mcmahan_digits`)
run for each of its variants and each seed, one run directory per pair:
`<root>/<suite>/<variant>/seed=<seed>`. Runs go through
`fedtff.run_experiment`, so a partly run one resumes from its checkpoint and a
complete one (`fedtff.research.sweeps.is_complete`) is skipped; a run whose loss becomes
NaN is recorded as diverged (`diverged.txt`, so a rerun skips it too) and the
suite goes on. `<root>/<suite>/results.md`
holds the table, one row per variant with the mean and spread over seeds, and
`<root>/<suite>/*.png` the curves (`fedtff.research.plots`).

References:
  McMahan et al. 2017, arXiv 1602.05629 (FedAvg; rounds to a target accuracy).
  Li et al. 2020, arXiv 1812.06127 (FedProx on Synthetic(alpha, beta)).
  Reddi et al. 2021, arXiv 2003.00295 (adaptive federated optimization).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import statistics
from typing import Any, Callable, Dict, List, Optional, Sequence

import ml_collections

from fedtff.runner import config as config_lib
from fedtff.runner import experiment
from fedtff.runner import outputs
from fedtff.research import plots
from fedtff.runner import run_dir
from fedtff.research import sweeps
from fedtff.runner import training

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUITES = ('reddi', 'fedprox', 'mcmahan_digits')
RESULTS_MD = 'results.md'
DIVERGED = 'diverged.txt'


@dataclasses.dataclass(frozen=True)
class Run:
  """One (variant, seed) run of a suite and its outcome."""
  variant: str
  seed: int
  workdir: str
  status: str  # 'complete', 'diverged' or 'refused'
  rows: List[Dict[str, Any]]
  total_time_s: Optional[float]
  message: str = ''


def load_module(suite: str):
  """The config module `configs/<suite>.py`."""
  if suite not in SUITES:
    raise ValueError(f'Unknown suite {suite!r}; expected one of: {", ".join(SUITES)}.')
  return load_config_file(os.path.join(REPO_ROOT, 'configs', f'{suite}.py'))


def load_config_file(path: str):
  """The config module at `path` (a `configs/*.py` file), loaded fresh."""
  name = 'configs_' + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def suite_config(module, variant: str, seed: int, *, shortened: bool = False,
                 overrides: Optional[Dict[str, Any]] = None) -> ml_collections.ConfigDict:
  """The variant's config with `seed`, the module's `SHORTENED` and `overrides` applied."""
  point = dict(getattr(module, 'SHORTENED', {}) if shortened else {})
  point.update(overrides or {})
  point['seed'] = seed
  return sweeps.point_config(module.get_config(variant), point)


def run_name(variant: str) -> str:
  return variant.replace(':', '-')


def _finished(workdir: str, status: str, variant: str, seed: int, message: str = '') -> Run:
  path = os.path.join(workdir, run_dir.METRICS_CSV)
  rows = outputs.read_metrics_csv(path) if os.path.isfile(path) else []
  total = sweeps.run_results(workdir, 'complete')['total_time_s'] if status == 'complete' else None
  return Run(variant, seed, workdir, status, rows, total, message)


def _diverged_before(workdir: str, config: ml_collections.ConfigDict) -> Optional[str]:
  """The message of an earlier divergence of this very config in `workdir`, if any."""
  marker, config_path = os.path.join(workdir, DIVERGED), os.path.join(workdir, run_dir.CONFIG)
  if not (os.path.isfile(marker) and os.path.isfile(config_path)):
    return None
  with open(config_path) as f:
    if config_lib.differences(json.load(f), json.loads(config_lib.to_json(config))):
      return None
  with open(marker) as f:
    return f.read().strip()


def run_one(config: ml_collections.ConfigDict, workdir: str, variant: str,
            log: Callable[[str], None] = print) -> Run:
  """Runs (or skips, if complete or diverged before) one config; records divergence."""
  if sweeps.is_complete(workdir, config):
    log(f'{variant} seed={config.seed}: skipped, already complete')
    return _finished(workdir, 'complete', variant, config.seed)
  message = _diverged_before(workdir, config)
  if message is not None:
    log(f'{variant} seed={config.seed}: skipped, diverged before')
    return _finished(workdir, 'diverged', variant, config.seed, message)
  log(f'{variant} seed={config.seed}: running {config.total_rounds} rounds')
  try:
    experiment.run_experiment(config, workdir)
  except training.TrainingDivergedError as e:
    log(f'{variant} seed={config.seed}: {e}')
    outputs.atomic_write_text(os.path.join(workdir, DIVERGED), str(e) + '\n')
    return _finished(workdir, 'diverged', variant, config.seed, str(e))
  except (NotImplementedError, config_lib.ConfigError) as e:  # e.g. not on the compiled engine.
    log(f'{variant} seed={config.seed}: refused: {e}')
    return Run(variant, config.seed, workdir, 'refused', [], None, str(e))
  return _finished(workdir, 'complete', variant, config.seed)


def run_suite(suite: str, root: str, seeds: Sequence[int], *, shortened: bool = False,
              variants: Optional[Sequence[str]] = None,
              overrides: Optional[Dict[str, Any]] = None,
              log: Callable[[str], None] = print) -> List[Run]:
  """Runs every (variant, seed) of `suite` into `<root>/<suite>/<variant>/seed=<seed>`."""
  module = load_module(suite)
  variants = list(variants or module.VARIANTS)
  unknown = [v for v in variants if v not in module.VARIANTS]
  if unknown:
    raise ValueError(f'Unknown {suite} variant {unknown[0]!r}; expected one of: '
                     f'{", ".join(module.VARIANTS)}.')
  configs = [(v, s, suite_config(module, v, s, shortened=shortened, overrides=overrides))
             for v in variants for s in seeds]
  return [run_one(config, os.path.join(root, suite, run_name(v), f'seed={s}'), v, log)
          for v, s, config in configs]


def _values(rows: Sequence[Dict[str, Any]], metric: str) -> List[float]:
  return [row[metric] for row in rows if row.get(metric) is not None]


def final(run: Run, metric: str) -> Optional[float]:
  values = _values(run.rows, metric)
  return values[-1] if values else None


def rounds_to_target(run: Run, target: float, metric: str = 'eval/accuracy') -> Optional[int]:
  """The first round whose `metric` reaches `target`, or None."""
  for row in run.rows:
    if row.get(metric) is not None and row[metric] >= target:
      return int(row['round'])
  return None


def mean_spread(values: Sequence[Optional[float]], fmt: str = '{:.4f}') -> str:
  """`mean ± std (n)` over the values that exist; '-' if none."""
  present = [v for v in values if v is not None]
  if not present:
    return '-'
  spread = statistics.stdev(present) if len(present) > 1 else 0.0
  return f'{fmt.format(statistics.mean(present))} ± {fmt.format(spread)} (n={len(present)})'


def _status(runs: Sequence[Run]) -> str:
  counts = {}
  for run in runs:
    counts[run.status] = counts.get(run.status, 0) + 1
  return ', '.join(f'{n} {status}' for status, n in sorted(counts.items()))


def _rounds(run: Run) -> str:
  return str(int(run.rows[-1]['round'])) if run.rows else '0'


def _group(runs: Sequence[Run]) -> Dict[str, List[Run]]:
  groups: Dict[str, List[Run]] = {}
  for run in runs:
    groups.setdefault(run.variant, []).append(run)
  return groups


def _best(run: Run, metric: str) -> Optional[float]:
  best = run_dir.best_metrics(run.rows).get(metric)
  return best['value'] if best else None


def largest_jump(run: Run, metric: str) -> Optional[float]:
  """The largest change of `metric` between consecutive evaluations in the run's second half.

  A measure of instability: a run that oscillates has large jumps late in
  training, one that converges has small ones.
  """
  values = _values(run.rows, metric)
  late = values[len(values) // 2:]
  return max((abs(b - a) for a, b in zip(late, late[1:])), default=None)


def curves_table(runs: Sequence[Run],
                 metric_of: Callable[[str], str] = lambda variant: 'eval/accuracy') -> List[str]:
  """Final training loss and test metric per variant, mean ± std over seeds.

  `metric_of(variant)` names the test metric reported for a variant
  (`eval/accuracy` unless a suite's `REPORTED_METRIC` says otherwise).
  """
  lines = ['| variant | runs | rounds run | final train loss | test metric | final test value | '
           'best test value | largest late jump | time per run (s) |',
           '|---|---|---|---|---|---|---|---|---|']
  for variant, group in _group(runs).items():
    metric = metric_of(variant)
    lines.append(
        f'| {variant} | {_status(group)} | {"/".join(_rounds(r) for r in group)} | '
        f'{mean_spread([final(r, "train/loss") for r in group], "{:.4g}")} | '
        f'{metric.partition("/")[2]} | {mean_spread([final(r, metric) for r in group])} | '
        f'{mean_spread([_best(r, metric) for r in group])} | '
        f'{mean_spread([largest_jump(r, metric) for r in group])} | '
        f'{mean_spread([r.total_time_s for r in group], "{:.0f}")} |')
  return lines


def _reached(group: Sequence[Run], target: float) -> str:
  reached = [rounds_to_target(r, target) for r in group]
  return ' / '.join(str(n) if n else f'>{_rounds(r)}' for n, r in zip(reached, group))


def target_table(runs: Sequence[Run], targets: Sequence[float]) -> List[str]:
  """Rounds to each target test accuracy per variant and seed (McMahan et al., Table 2)."""
  columns = [f'rounds to {t:.0%} test accuracy (per seed)' for t in targets]
  lines = ['| variant | runs | ' + ' | '.join(columns) + ' | final test accuracy | '
           'time per run (s) |', '|---|---|' + '---|' * len(targets) + '---|---|']
  for variant, group in _group(runs).items():
    cells = ' | '.join(_reached(group, t) for t in targets)
    lines.append(f'| {variant} | {_status(group)} | {cells} | '
                 f'{mean_spread([final(r, "eval/accuracy") for r in group])} | '
                 f'{mean_spread([r.total_time_s for r in group], "{:.0f}")} |')
  return lines


def results_table(suite: str, runs: Sequence[Run]) -> List[str]:
  module = load_module(suite)
  targets = getattr(module, 'TARGET_ACCURACIES', None)
  reported = getattr(module, 'REPORTED_METRIC', {})
  metric_of = lambda variant: reported.get(variant.split(':')[0], 'eval/accuracy')
  lines = target_table(runs, targets) if targets else curves_table(runs, metric_of)
  refused = sorted({f'- {r.variant}: {r.message}' for r in runs if r.status == 'refused'})
  return lines + ([''] + refused if refused else [])


def plot_groups(runs: Sequence[Run], key: Callable[[str], str], out_dir: str,
                metrics: Sequence[str] = ('train/loss', 'eval/accuracy')) -> List[str]:
  """One PNG per group of variants (`key(variant)`), all seeds; returns the paths."""
  groups: Dict[str, List[Run]] = {}
  for run in runs:
    if run.rows:
      groups.setdefault(key(run.variant), []).append(run)
  paths = []
  for name, group in groups.items():
    figure = plots.plot_runs([r.workdir for r in group], metrics=metrics)
    path = os.path.join(out_dir, f'{run_name(name)}.png')
    figure.savefig(path, dpi=80)
    paths.append(path)
  return paths


def write_results(suite: str, root: str, runs: Sequence[Run], header: Sequence[str]) -> str:
  """Writes `<root>/<suite>/results.md` and the PNGs; returns the markdown."""
  out_dir = os.path.join(root, suite)
  os.makedirs(out_dir, exist_ok=True)
  pngs = plot_groups(runs, lambda v: v.split(':')[0], out_dir)
  text = '\n'.join(list(header) + [''] + results_table(suite, runs) + [''] +
                   [f'![{os.path.basename(p)}]({os.path.basename(p)})' for p in pngs]) + '\n'
  outputs.atomic_write_text(os.path.join(out_dir, RESULTS_MD), text)
  return text
