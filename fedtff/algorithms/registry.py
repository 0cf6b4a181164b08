"""The one table of fedtff's algorithms and their defaults.

Every entry point reads `REGISTRY`: the builders (`fedtff.build_learning_process`
and the per-algorithm builders), the compiled engine (`fedtff.compiled`), the
experiment config (`fedtff.runner.config.resolve` fills the optimizer fields a config
leaves unset) and docs/algorithms.md, whose table is `markdown_table()`
(tests/test_registry.py checks that the page holds it).

Papers: McMahan et al., AISTATS 2017 (arXiv 1602.05629); Hsu, Qi and Brown
2019 (arXiv 1909.06335); Reddi et al., ICLR 2021 (arXiv 2003.00295); Li et
al., MLSys 2020 (arXiv 1812.06127); Shokri and Shmatikov, CCS 2015;
Karimireddy et al., NeurIPS 2021 (arXiv 2008.03606); Karimireddy et al., ICML 2020
(arXiv 1910.06378); Wang et al., NeurIPS 2020 (arXiv 2007.07481).
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Dict, Mapping, Optional

from fedtff.algorithms import optimizers


def _number(value: float) -> str:
  """E.g. '1.0', '0.01', '1e-3'."""
  if 0 < abs(value) < 0.01:
    return f'{value:.0e}'.replace('e-0', 'e-')
  return repr(float(value))


@dataclasses.dataclass(frozen=True)
class OptimizerDefault:
  """A default optimizer: its name, learning rate and further hyperparameters.

  Hyperparameters not given here (the adaptive optimizers' β₁, β₂, ε and
  initial accumulator) are `fedtff.algorithms.optimizers.ADAPTIVE_DEFAULTS`.
  """
  name: str
  learning_rate: float
  hparams: Mapping[str, float] = dataclasses.field(default_factory=dict)

  def build(self) -> optimizers.TffOptimizer:
    return optimizers.build(self.name, self.learning_rate, **dict(self.hparams))

  def describe(self) -> str:
    """E.g. 'sgd 1.0 momentum 0.9'; the adaptive defaults spelled out."""
    extra = {**optimizers.ADAPTIVE_DEFAULTS.get(self.name, {}), **self.hparams}
    if self.name == 'adam':
      extra.pop('initial_accumulator', None)
    symbols = {'beta_1': 'β₁', 'beta_2': 'β₂', 'epsilon': 'ε',
               'initial_accumulator': 'initial accumulator'}
    parts = [f'{symbols.get(k, k)} {_number(v)}' for k, v in extra.items()]
    return ', '.join([f'{self.name} {_number(self.learning_rate)}'] + parts)


@dataclasses.dataclass(frozen=True)
class AlgorithmSpec:
  """One algorithm: where it comes from, its defaults and its constraints.

  Attributes:
    name: The name `build_learning_process` and `algorithm.name` take.
    title: The algorithm's usual name.
    paper: The paper it follows.
    builder: The fedtff builder that builds it.
    tff_builder: The TFF builder(s) behind it.
    client: The client optimizer default (Mime Lite: the base optimizer), or
      None when the algorithm has no client optimizer (FedSGD).
    server: The server optimizer default.
    server_family: The server optimizer name the algorithm requires, or None
      when any server optimizer may be given.
    needs_proximal_strength: Whether μ (`proximal_strength`) is required; it
      is refused by every other algorithm.
    weighted_only: Whether clients can only be weighted by their examples.
    needs_q: Whether q-FedAvg's q is required; it is refused by every other
      algorithm.
    schedules: Whether client learning-rate schedules combine with it.
    stateful_clients: Whether each client keeps a state between its rounds
      (SCAFFOLD's control variate, Ditto's personal model; `fedtff.runner.client_states`).
    needs_population_size: Whether N (`population_size`) is required (SCAFFOLD).
    constraints: Further constraints, as the docs table states them.
  """
  name: str
  title: str
  paper: str
  builder: str
  tff_builder: str
  client: Optional[OptimizerDefault]
  server: OptimizerDefault
  server_family: Optional[str] = None
  needs_proximal_strength: bool = False
  weighted_only: bool = False
  schedules: bool = False
  stateful_clients: bool = False
  needs_population_size: bool = False
  needs_q: bool = False
  constraints: str = ''

  @property
  def fed_avg_family(self) -> bool:
    """FedAvg with some server optimizer (TFF's model-delta client work)."""
    return self.builder == 'build_fed_avg'


_SGD_CLIENT = OptimizerDefault('sgd', 0.1)
_SGD_SERVER = OptimizerDefault('sgd', 1.0)
_REDDI = 'Reddi et al., ICLR 2021, arXiv 2003.00295'
_FED_AVG = dict(builder='build_fed_avg', client=_SGD_CLIENT, schedules=True,
                tff_builder='`build_weighted_fed_avg` / `build_unweighted_fed_avg`')

_SPECS = (
    AlgorithmSpec('fedavg', 'FedAvg', 'McMahan et al., AISTATS 2017, arXiv 1602.05629',
                  server=_SGD_SERVER, **_FED_AVG),
    AlgorithmSpec('fedavgm', 'FedAvg with server momentum', 'Hsu et al. 2019, arXiv 1909.06335',
                  server=OptimizerDefault('sgd', 1.0, {'momentum': 0.9}), server_family='sgd',
                  **_FED_AVG),
    AlgorithmSpec('fedadagrad', 'FedAdagrad', _REDDI,
                  server=OptimizerDefault('adagrad', 0.1), server_family='adagrad', **_FED_AVG),
    AlgorithmSpec('fedadam', 'FedAdam', _REDDI,
                  server=OptimizerDefault('adam', 0.01), server_family='adam', **_FED_AVG),
    AlgorithmSpec('fedyogi', 'FedYogi', _REDDI,
                  server=OptimizerDefault('yogi', 0.01), server_family='yogi', **_FED_AVG),
    AlgorithmSpec('fedprox', 'FedProx', 'Li et al., MLSys 2020, arXiv 1812.06127',
                  builder='build_fed_prox', tff_builder='`build_{weighted,unweighted}_fed_prox`',
                  client=_SGD_CLIENT, server=_SGD_SERVER, needs_proximal_strength=True),
    # TFF's build_fed_sgd defaults its server optimizer to SGD with learning rate 0.1.
    AlgorithmSpec('fedsgd', 'FedSGD', 'McMahan et al. 2017; Shokri & Shmatikov, CCS 2015',
                  builder='build_fed_sgd', tff_builder='`build_fed_sgd`',
                  client=None, server=OptimizerDefault('sgd', 0.1), weighted_only=True),
    AlgorithmSpec('mimelite', 'Mime Lite', 'Karimireddy et al., NeurIPS 2021, arXiv 2008.03606',
                  builder='build_mime_lite', tff_builder='`build_{weighted,unweighted}_mime_lite`',
                  client=OptimizerDefault('sgd', 0.1, {'momentum': 0.9}), server=_SGD_SERVER),
    AlgorithmSpec('scaffold', 'SCAFFOLD (option II)',
                  'Karimireddy et al., ICML 2020, arXiv 1910.06378', builder='build_scaffold',
                  tff_builder='none (fedtff composes it from TFF parts)', client=_SGD_CLIENT,
                  server=_SGD_SERVER, server_family='sgd', stateful_clients=True,
                  needs_population_size=True),
    AlgorithmSpec('qfedavg', 'q-FedAvg', 'Li, Sanjabi, Beirami & Smith, ICLR 2020, arXiv 1905.10497',
                  builder='build_q_fed_avg', tff_builder='none (fedtff\'s own client work)',
                  client=_SGD_CLIENT, server=_SGD_SERVER, server_family='sgd', needs_q=True),
    AlgorithmSpec('fednova', 'FedNova', 'Wang et al., NeurIPS 2020, arXiv 2007.07481',
                  builder='build_fed_nova', tff_builder="none (fedtff's client work and "
                  "finalizer, TFF's broadcast and mean)", client=_SGD_CLIENT, server=_SGD_SERVER,
                  constraints='client sgd without momentum; mean aggregator only'),
    AlgorithmSpec('ditto', 'Ditto (personalized)',
                  'Li, Hu, Beirami & Smith, ICML 2021, arXiv 2012.04221', builder='build_ditto',
                  tff_builder="none (fedtff's client work, TFF's broadcast, mean and finalizer)",
                  client=_SGD_CLIENT, server=_SGD_SERVER, server_family='sgd',
                  stateful_clients=True,
                  constraints='λ `ditto_lambda` ≥ 0 (required); client sgd without momentum '
                  '(global and personal steps); a personal model per client '
                  '(`fedtff.runner.client_states`); mean aggregator only'),
)
REGISTRY: Mapping[str, AlgorithmSpec] = types.MappingProxyType({s.name: s for s in _SPECS})
ALGORITHMS = tuple(REGISTRY)


def get(algorithm: str) -> AlgorithmSpec:
  """The `AlgorithmSpec` of `algorithm`.

  Raises:
    ValueError: If `algorithm` is not one of `ALGORITHMS`.
  """
  if algorithm not in REGISTRY:
    raise ValueError(f'Unknown algorithm {algorithm!r}; expected one of {", ".join(ALGORITHMS)}.')
  return REGISTRY[algorithm]


def default_client_optimizer(algorithm: str) -> Optional[optimizers.TffOptimizer]:
  """The client (Mime Lite: base) optimizer `algorithm` uses when none is given."""
  client = get(algorithm).client
  return client.build() if client else None


def default_server_optimizer(algorithm: str) -> optimizers.TffOptimizer:
  """The server optimizer `algorithm` uses when none is given."""
  return get(algorithm).server.build()


def resolve_group(algorithm: str, role: str, group: Mapping[str, Any]) -> Dict[str, Any]:
  """A config's `client` or `server` group with its unset (None) fields filled in.

  `optimizer` and `learning_rate` default to the algorithm's; `momentum` to
  the algorithm's when the optimizer is the default one, else 0. FedSGD's
  client group (it has no client optimizer) is left as it is.

  Args:
    algorithm: The algorithm name.
    role: 'client' or 'server'.
    group: The group's fields, e.g. `config.server.to_dict()`.
  """
  spec = get(algorithm)
  default = spec.client if role == 'client' else spec.server
  group = dict(group)
  if default is None:
    return group
  if group['optimizer'] is None:
    group['optimizer'] = default.name
  if group['learning_rate'] is None:
    group['learning_rate'] = default.learning_rate
  if group['momentum'] is None:
    same = group['optimizer'] == default.name
    group['momentum'] = float(default.hparams.get('momentum', 0.0)) if same else 0.0
  return group


def _hyperparameters(spec: AlgorithmSpec) -> str:
  if spec.needs_q:
    return (f'`q` ≥ 0 (required); client {spec.client.describe()}, plain sgd only (L = 1/η); '
            f"server {spec.server.describe()} only (the paper's step); clients weighted by "
            'h_k; mean aggregator only')
  parts = []
  if spec.needs_proximal_strength:
    parts.append('μ `proximal_strength` (required)')
  if spec.client is None:
    parts.append('no client optimizer')
  else:
    role = 'base optimizer' if spec.name == 'mimelite' else 'client'
    parts.append(f'{role} {spec.client.describe()}')
  parts.append(f'server {spec.server.describe()}')
  if spec.server_family:
    parts.append(f'server optimizer must be {spec.server_family}')
  parts.append('weighted only' if spec.weighted_only else '`weighted` (True)')
  if spec.schedules:
    parts.append('client schedules')
  if spec.needs_population_size:
    parts.append('client sgd without momentum; a control variate per client '
                 '(`fedtff.runner.client_states`); mean aggregator only')
  if spec.constraints:
    parts.append(spec.constraints)
  return '; '.join(parts)


def markdown_table() -> str:
  """The algorithms table of docs/algorithms.md, generated from `REGISTRY`."""
  lines = ['| config name | algorithm | paper | fedtff builder | TFF builder | '
           'hyperparameters (defaults) and constraints |',
           '|---|---|---|---|---|---|']
  for spec in REGISTRY.values():
    lines.append(f'| `{spec.name}` | {spec.title} | {spec.paper} | `{spec.builder}` | '
                 f'{spec.tff_builder} | {_hyperparameters(spec)} |')
  return '\n'.join(lines)
