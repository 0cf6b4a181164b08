"""A privacy ledger: the mechanism every round of a DP run actually used.

The epsilon a run reports is composed from the ledger, never from the
config: each round appends its mechanism (noise multiplier, clients per
round, population, clip norm, sampling), the ledger is saved with every
checkpoint (inside the checkpoint, and as `privacy_ledger.json` in the run
directory), and a resumed run continues the ledger of the checkpoint it
restored. Rounds with the same mechanism are kept as one segment.

A round can be released more than once: on the TFF engine a run resumed from
a checkpoint reruns, with fresh noise, the rounds whose rows were written
after it, so whoever read the first rows has seen two noisy results of the
same round, computed on the same seeded cohort. `RoundMechanism.releases`
counts them, and the accounting charges them (see `RoundMechanism`).

    ledger = PrivacyLedger()
    ledger.record(1, RoundMechanism(noise_multiplier=1.2, clients_per_round=10,
                                    num_clients=500, clip_norm=1.0))
    ledger.epsilon(delta=1e-5)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import List, Optional, Tuple

import dp_accounting

from fedtff.privacy import accounting
from fedtff.privacy import ddp
from fedtff.privacy import ftrl


class LedgerError(ValueError):
  """A ledger that does not describe consecutive rounds from round 1."""


@dataclasses.dataclass(frozen=True)
class RoundMechanism:
  """The DP mechanism of one round.

  Attributes:
    noise_multiplier: `z`, the noise standard deviation over the clip norm.
    clients_per_round: `m`, the clients sampled.
    num_clients: `N`, the clients sampled from.
    clip_norm: The L2 clip norm, or None when it adapts (the noise then
      scales with it, and `z` is what the accountant needs).
    sampling: How clients were sampled (`fedtff.privacy.accounting.SAMPLINGS`,
      or 'cyclic' for DP-FTRL).
    mechanism: 'dp_fedavg' (the Gaussian mechanism on each round's sum),
      'dp_ftrl' (tree aggregation, `fedtff.privacy.ftrl`) or 'ddp_skellam'
      (distributed Skellam noise, `fedtff.privacy.ddp`).
    accountant: 'rdp' or 'pld' (Poisson sampling only).
    bits: 'ddp_skellam' only: the secure sum's bit width.
    dim: 'ddp_skellam' only: the model update's coordinates (the integer
      norm bounds, hence the accounting, depend on it).
    releases: How many noisy results of this round were published (more than
      one when a crash made the run recompute it with fresh noise). `k`
      Gaussian releases on one cohort, each of sensitivity C and noise z·C,
      are together one Gaussian release of noise multiplier z/√k (Gaussian
      composition, Dong, Roth and Su 2019, "Gaussian Differential Privacy",
      arXiv 1905.02383), so the round is accounted as one sampled Gaussian
      round of z/√k; `k` Skellam releases compose their Rényi DP `k` times.
      DP-FTRL reruns repeat the tree's noise (its seed is in the state), so
      its rounds are released once.
  """
  noise_multiplier: float
  clients_per_round: int
  num_clients: int
  clip_norm: Optional[float] = None
  sampling: str = accounting.WITHOUT_REPLACEMENT
  mechanism: str = 'dp_fedavg'
  accountant: str = 'rdp'
  bits: Optional[int] = None
  dim: Optional[int] = None
  releases: int = 1

  def __post_init__(self):
    if not isinstance(self.releases, int) or self.releases < 1:
      raise LedgerError(f'A round is released at least once, got releases={self.releases!r}.')
    if self.releases > 1 and self.mechanism == 'dp_ftrl':
      raise LedgerError('DP-FTRL rounds are released once: a rerun repeats the tree noise of '
                        'the state it restarts from.')

  @property
  def gaussian_noise_multiplier(self) -> float:
    """The noise multiplier of the round's releases taken together: z/√releases."""
    return self.noise_multiplier / math.sqrt(self.releases)

  def tracker(self, delta: float):
    """The accountant of rounds of this mechanism: `.epsilon(rounds)`."""
    if self.releases > 1 and self.mechanism == ddp.MECHANISM:
      raise LedgerError('A rerun Skellam round is composed by PrivacyLedger.epsilon.')
    if self.mechanism == ddp.MECHANISM:
      return ddp.SkellamPrivacyTracker(self.noise_multiplier, self.clients_per_round,
                                               delta, clip=self.clip_norm, bits=self.bits,
                                               dim=self.dim)
    if self.mechanism == 'dp_ftrl':
      return ftrl.FtrlPrivacyTracker(self.noise_multiplier, self.clients_per_round,
                                     self.num_clients, delta)
    return accounting.PrivacyTracker(self.gaussian_noise_multiplier, self.clients_per_round,
                                     self.num_clients, delta, sampling=self.sampling,
                                     accountant=self.accountant)


@dataclasses.dataclass(frozen=True)
class Segment:
  """Rounds `first_round..last_round`, all with `mechanism`."""
  first_round: int
  last_round: int
  mechanism: RoundMechanism

  @property
  def rounds(self) -> int:
    return self.last_round - self.first_round + 1


def _round_rdp(mechanism: RoundMechanism) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
  """(orders, Rényi DP of one round) of `mechanism`, by dp_accounting's RDP accountant."""
  return accounting.round_rdp(mechanism.gaussian_noise_multiplier, mechanism.clients_per_round,
                              mechanism.num_clients, sampling=mechanism.sampling)


def _round_event(mechanism: RoundMechanism) -> dp_accounting.DpEvent:
  """The `DpEvent` of one DP-FedAvg round of `mechanism`, all its releases together."""
  return accounting.round_event(mechanism.gaussian_noise_multiplier, mechanism.clients_per_round,
                                mechanism.num_clients, sampling=mechanism.sampling)


def _fields(mechanism: RoundMechanism) -> dict:
  """The mechanism's fields, without the distributed-DP ones other mechanisms leave None."""
  fields = dataclasses.asdict(mechanism)
  return {k: v for k, v in fields.items()
          if not (k in ('bits', 'dim') and v is None) and not (k == 'releases' and v == 1)}


@functools.lru_cache(maxsize=16)
def _tracker(mechanism: RoundMechanism, delta: float):
  return mechanism.tracker(delta)


class PrivacyLedger:
  """The rounds of a DP run and their mechanisms; see the module docstring."""

  def __init__(self, segments: Tuple[Segment, ...] = ()):
    self._segments: List[Segment] = []
    for segment in segments:
      self._append(segment)

  @property
  def segments(self) -> Tuple[Segment, ...]:
    return tuple(self._segments)

  @property
  def last_round(self) -> int:
    return self._segments[-1].last_round if self._segments else 0

  def _append(self, segment: Segment) -> None:
    if segment.first_round != self.last_round + 1 or segment.last_round < segment.first_round:
      raise LedgerError(f'Ledger rounds must follow round {self.last_round} without a gap, got '
                        f'rounds {segment.first_round}-{segment.last_round}.')
    last = self._segments[-1] if self._segments else None
    if last is not None and last.mechanism == segment.mechanism:
      self._segments[-1] = dataclasses.replace(last, last_round=segment.last_round)
    else:
      self._segments.append(segment)

  def record(self, round_num: int, mechanism: RoundMechanism) -> None:
    """Appends round `round_num` (the round after `last_round`)."""
    self._append(Segment(round_num, round_num, mechanism))

  def truncated(self, last_round: int) -> 'PrivacyLedger':
    """The ledger of rounds `1..last_round` (a resumed run's, at its checkpoint)."""
    if last_round > self.last_round:
      raise LedgerError(f'The ledger holds rounds up to {self.last_round}, not {last_round}.')
    kept = [dataclasses.replace(s, last_round=min(s.last_round, last_round))
            for s in self._segments if s.first_round <= last_round]
    return PrivacyLedger(tuple(kept))

  def epsilon(self, delta: float) -> float:
    """Epsilon at `delta` of every round in the ledger.

    One mechanism throughout: its own accountant over all the rounds (RDP or
    PLD for DP-FedAvg, the tree's RDP for DP-FTRL, Agarwal et al.'s RDP for
    distributed Skellam). Several: their rounds composed in Rényi DP, for
    DP-FedAvg accounted by RDP under one neighbouring relation, or all
    distributed Skellam; any other mix is refused.

    Returns:
      0 for an empty ledger; `math.inf` if any round had no noise.

    Raises:
      LedgerError: If no single epsilon covers the ledger's mix of mechanisms.
    """
    if not self._segments:
      return 0.0
    if any(s.mechanism.noise_multiplier == 0 for s in self._segments):
      return math.inf
    if len(self._segments) == 1 and self._segments[0].mechanism.releases == 1:
      return _tracker(self._segments[0].mechanism, delta).epsilon(self.last_round)
    if all(s.mechanism.mechanism == ddp.MECHANISM for s in self._segments):
      total = sum(s.rounds * s.mechanism.releases * ddp.round_rdp(
          s.mechanism.noise_multiplier, s.mechanism.clients_per_round, clip=s.mechanism.clip_norm,
          bits=s.mechanism.bits, dim=s.mechanism.dim) for s in self._segments)
      return float(dp_accounting.rdp.compute_epsilon(ddp.ORDERS, total, delta)[0])
    relations = {accounting.neighboring_relation(s.mechanism.sampling)
                 for s in self._segments if s.mechanism.sampling in accounting.SAMPLINGS}
    kinds = {(s.mechanism.mechanism, s.mechanism.accountant) for s in self._segments}
    if len(relations) != 1 or kinds not in ({('dp_fedavg', 'rdp')}, {('dp_fedavg', 'pld')}):
      raise LedgerError('The ledger mixes mechanisms that no single epsilon covers (only '
                        'DP-FedAvg rounds accounted by one accountant under one neighbouring '
                        'relation, or only distributed Skellam rounds, compose).')
    if kinds == {('dp_fedavg', 'pld')}:
      accountant = accounting.make_accountant(accounting.PLD, self._segments[0].mechanism.sampling)
      for segment in self._segments:
        accountant.compose(_round_event(segment.mechanism), segment.rounds)
      return float(accountant.get_epsilon(delta))
    total = None
    for segment in self._segments:
      orders, rdp = _round_rdp(segment.mechanism)
      scaled = [segment.rounds * value for value in rdp]
      total = scaled if total is None else [a + b for a, b in zip(total, scaled)]
    return float(dp_accounting.rdp.compute_epsilon(orders, total, delta)[0])

  def to_json(self) -> str:
    return json.dumps([dict(first_round=s.first_round, last_round=s.last_round,
                            **_fields(s.mechanism)) for s in self._segments],
                      indent=1, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> 'PrivacyLedger':
    """Reads `to_json`'s text.

    Raises:
      LedgerError: If it is not a ledger (naming what is wrong).
    """
    try:
      entries = json.loads(text)
      segments = []
      for entry in entries:
        entry = dict(entry)
        rounds = entry.pop('first_round'), entry.pop('last_round')
        segments.append(Segment(*rounds, RoundMechanism(**entry)))
    except (ValueError, TypeError, KeyError, AttributeError) as e:
      raise LedgerError(f'Not a privacy ledger: {e}.') from None
    return cls(tuple(segments))
