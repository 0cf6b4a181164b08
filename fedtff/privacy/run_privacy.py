"""What a DP run keeps and publishes about its privacy.

`RunPrivacy` is the runner's one place for it:

* the privacy ledger (`fedtff.privacy.ledger`): every round's mechanism,
  from which `privacy/epsilon` and the summary's epsilon are composed;
* the noise seed: a per-run secret drawn from the OS (saved in the
  checkpoints, never in config.json) from which the compiled engine derives each
  round's noise, or the public `privacy.noise_seed`, which voids the guarantee;
* rounds released twice: a resumed run reruns the rounds whose rows were
  written after its checkpoint; unless the rerun repeats their noise (the
  compiled engine resuming its own checkpoint, or DP-FTRL's tree), it charges
  each of them one more release (`ledger.RoundMechanism.releases`), and keeps
  that charge in `privacy_reruns.json` before any round runs, so that a crash
  in the rerun cannot lose it;
* which metrics a DP run publishes: the held-out evaluation and epsilon, but
  not the client-derived training metrics (unless
  `privacy.publish_client_metrics`, which the summary then marks as outside
  the guarantee).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from fedtff.runner import outputs
from fedtff.privacy import accounting
from fedtff.privacy import ledger as ledger_lib

LEDGER_FILE = 'privacy_ledger.json'
RERUNS_FILE = 'privacy_reruns.json'
_LEDGER_KEY, _SEED_KEY, _ENGINE_KEY = 'privacy_ledger', 'noise_seed', 'noise_engine'
# Columns computed from the sampled clients' training data (and its size).
_CLIENT_DERIVED_PREFIXES = ('train/',)
_CLIENT_DERIVED_COLUMNS = ('examples_per_s', 'round_time_s')
_SAMPLING_NAMES = {
    accounting.WITHOUT_REPLACEMENT: 'fixed-size uniform without replacement',
    accounting.POISSON: 'Poisson (each client joins with probability clients_per_round / '
                        'num_clients)',
    'cyclic': 'cyclic disjoint cohorts of one seeded permutation (no amplification assumed)'}


def client_derived(column: str) -> bool:
  """Whether a metrics column is computed from the training clients' data."""
  return column.startswith(_CLIENT_DERIVED_PREFIXES) or column in _CLIENT_DERIVED_COLUMNS


class RunPrivacy:
  """The privacy side of one DP run; see the module docstring.

  Args:
    mechanism: Each round's mechanism (the same every round of one config).
    delta: The delta of the reported epsilon; None for the default.
    noise_seed: A public seed for the noise (reproducible, no guarantee), or
      None for a secret one.
    publish_client_metrics: Whether training metrics are published.
  """

  def __init__(self, mechanism: ledger_lib.RoundMechanism, *, delta: Optional[float] = None,
               noise_seed: Optional[int] = None, publish_client_metrics: bool = False):
    self.mechanism = mechanism
    self.delta = accounting.resolve_delta(delta, mechanism.num_clients)
    self.public_seed = noise_seed is not None
    self.publish_client_metrics = publish_client_metrics
    self.ledger = ledger_lib.PrivacyLedger()
    self._seed = noise_seed if self.public_seed else secrets.randbits(63)
    self._engine: Optional[str] = None
    self._earlier_releases: Dict[int, int] = {}

  def resume(self, round_num: int, metadata: Mapping[str, str], *, engine: Optional[str] = None,
             workdir: Optional[str] = None, published_round: int = 0) -> None:
    """Continues the ledger and secret seed of the checkpoint of `round_num`.

    A checkpoint written before ledgers existed gets a ledger of `round_num`
    rounds of this run's mechanism (its config is unchanged, or the resume
    would have been refused) and a new secret seed.

    Args:
      round_num: The checkpoint's round (0: a fresh run).
      metadata: The checkpoint's metadata (`checkpoint_metadata`).
      engine: The engine that runs the rounds from here ('compiled' or 'tff').
      workdir: The run directory, which keeps `privacy_reruns.json`; None
        keeps the charges of rerun rounds in memory only.
      published_round: The last round whose row was written (it may be after
        `round_num`). Rounds `round_num + 1..published_round` are rerun: each
        is charged one more release unless the rerun repeats its noise.
    """
    if _LEDGER_KEY in metadata:
      self.ledger = ledger_lib.PrivacyLedger.from_json(metadata[_LEDGER_KEY]).truncated(round_num)
    else:
      self.ledger = ledger_lib.PrivacyLedger()
      for previous in range(1, round_num + 1):
        self.ledger.record(previous, self.mechanism)
    if not self.public_seed and _SEED_KEY in metadata:
      self._seed = int(metadata[_SEED_KEY])
    self._engine = engine
    self._earlier_releases = self._read_reruns(workdir)
    if published_round > round_num and not self._rerun_repeats_noise(metadata):
      for rerun in range(round_num + 1, published_round + 1):
        self._earlier_releases[rerun] = self._earlier_releases.get(rerun, 0) + 1
      if workdir is not None:
        outputs.atomic_write_text(os.path.join(workdir, RERUNS_FILE), json.dumps(
            {str(r): n for r, n in sorted(self._earlier_releases.items())}, indent=1) + '\n')

  def _rerun_repeats_noise(self, metadata: Mapping[str, str]) -> bool:
    """Whether rerunning the rounds after the checkpoint releases nothing new.

    True for DP-FTRL (its tree noise is a function of the restored state), and
    on the compiled engine resuming a checkpoint the compiled engine wrote (its
    noise is a function of the secret seed and the round). TFF's runtime draws
    fresh noise; a checkpoint of unknown engine counts as TFF's.
    """
    if self.mechanism.mechanism == 'dp_ftrl':
      return True
    return self._engine == 'compiled' and metadata.get(_ENGINE_KEY) == 'compiled'

  @staticmethod
  def _read_reruns(workdir: Optional[str]) -> Dict[int, int]:
    """`privacy_reruns.json`: round -> releases discarded by earlier resumes."""
    path = workdir and os.path.join(workdir, RERUNS_FILE)
    if not path or not os.path.isfile(path):
      return {}
    try:
      with open(path) as f:
        return {int(r): int(n) for r, n in json.load(f).items()}
    except (ValueError, TypeError, AttributeError) as e:
      raise ledger_lib.LedgerError(
          f'{path} is not a record of rerun rounds ({e}); it holds the releases of rounds '
          'recomputed after a crash, which epsilon must count: restore it.') from None

  def round_noise_seed(self, round_num: int) -> np.ndarray:
    """The stateless seed of round `round_num`'s noise (compiled engine)."""
    return np.array([self._seed, round_num], np.int64)

  def metrics(self, round_num: int) -> Dict[str, float]:
    """Records round `round_num` in the ledger; returns `{'privacy/epsilon': ...}`."""
    releases = 1 + self._earlier_releases.get(round_num, 0)
    self.ledger.record(round_num, dataclasses.replace(self.mechanism, releases=releases))
    return {accounting.EPSILON_METRIC: self.ledger.epsilon(self.delta)}

  def published_columns(self, columns: Sequence[str]) -> List[str]:
    """`columns` without the client-derived ones, unless they are published."""
    return [c for c in columns if self.publish_client_metrics or not client_derived(c)]

  def checkpoint_metadata(self) -> Dict[str, str]:
    """What a checkpoint keeps: the ledger and, if secret, the noise seed."""
    metadata = {_LEDGER_KEY: self.ledger.to_json()}
    if self._engine:
      metadata[_ENGINE_KEY] = self._engine
    if not self.public_seed:
      metadata[_SEED_KEY] = str(self._seed)
    return metadata

  def write_ledger(self, workdir: str) -> None:
    """Writes the ledger to `<workdir>/privacy_ledger.json`, atomically."""
    outputs.atomic_write_text(os.path.join(workdir, LEDGER_FILE), self.ledger.to_json() + '\n')

  def summary(self, engine: str) -> Dict[str, Any]:
    """The summary.json entry: epsilon from the ledger, and what it covers."""
    seed = ('public (privacy.noise_seed): the noise can be regenerated, so there is no privacy '
            'guarantee' if self.public_seed else
            ('secret, drawn from the OS and kept in the checkpoints' if engine == 'compiled'
             else "drawn by TFF's runtime, not reproducible"))
    if self.mechanism.mechanism == 'dp_ftrl':  # TF Privacy's tree seeds, in the state.
      seed = ("TF Privacy's tree seed, drawn from the OS when the run starts and kept in the "
              "checkpoints' aggregator state")
    summary = {
        'epsilon': self.ledger.epsilon(self.delta), 'delta': self.delta,
        'rounds': self.ledger.last_round, 'ledger': LEDGER_FILE,
        'noise_multiplier': self.mechanism.noise_multiplier,
        'num_clients': self.mechanism.num_clients,
        'clients_per_round': self.mechanism.clients_per_round,
        'sampling': _SAMPLING_NAMES.get(self.mechanism.sampling, self.mechanism.sampling),
        'mechanism': self.mechanism.mechanism, 'accountant': self.mechanism.accountant,
        'noise_seed': seed,
        'client_metrics': 'withheld',
    }
    if self.mechanism.mechanism == 'ddp_skellam':
      summary.update(
          sampling=summary['sampling'] + ' (no amplification by sampling claimed)',
          ddp_bits=self.mechanism.bits, dim=self.mechanism.dim,
          secure_sum=("simulated: fedtff's runtime computes TFF's secure sums in the clear; "
                      'epsilon is what real secure aggregation would give'))
    rerun = sum((s.mechanism.releases - 1) * s.rounds for s in self.ledger.segments)
    if rerun:
      summary['rerun_releases'] = (
          f'{rerun} earlier releases of rounds recomputed after a crash, with fresh noise, '
          f'are charged in epsilon ({RERUNS_FILE})')
    if self.publish_client_metrics:
      summary['client_metrics'] = ('published (privacy.publish_client_metrics): train/*, '
                                   'examples_per_s and round_time_s are outside the guarantee')
    return summary
