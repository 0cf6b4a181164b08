"""Privacy accounting for DP-FedAvg as fedtff runs it.

DP-FedAvg is McMahan, Ramage, Talwar and Zhang, "Learning Differentially
Private Recurrent Language Models", ICLR 2018 (arXiv 1710.06963): each round
every sampled client's model update is clipped to L2 norm `C`, the clipped
updates are summed, Gaussian noise of standard deviation `z * C` is added to the
sum and the result is divided by the (public) number of sampled clients.

What fedtff accounts for, exactly:

* Unit of privacy: one client, with all of its data (user-level DP).
* Sampling: each round draws `m` distinct clients uniformly without
  replacement from the `N` training clients (`fedtff.runner.training.sample_clients`),
  independently across rounds.
* Neighbouring relation: replace-one (`dp_accounting.NeighboringRelation.
  REPLACE_ONE`): two federations of the same `N` clients that differ in the
  whole dataset of one client. `N` is public. Sampling a fixed number of clients
  has privacy amplification under replace-one only (Wang, Balle and
  Kasiviswanathan, "Subsampled Rényi Differential Privacy and Analytical
  Moments Accountant", AISTATS 2019, arXiv 1808.00087, Theorem 27, which
  dp_accounting's RDP accountant implements).
* Sensitivity: replacing one client's clipped update `u` by `u'` moves the sum
  by `||u - u'|| <= 2C`, so the Gaussian mechanism's noise multiplier relative
  to its replace-one sensitivity is `z / 2`. dp_accounting 0.4.3 passes the
  noise multiplier of the `GaussianDpEvent` inside a
  `SampledWithoutReplacementDpEvent` straight into Theorem 27 as noise over
  sensitivity, while `GaussianDpEvent` is defined relative to the norm bound
  `C`; fedtff therefore builds the event with `z / 2` (see
  google/differential-privacy issue #378).
* Composition: `T` such rounds, adaptively composed in Rényi DP (Mironov,
  "Rényi Differential Privacy", CSF 2017) and converted to `(epsilon, delta)`
  by dp_accounting. The guarantee covers every round's noisy aggregate, hence
  every intermediate model, not only the final one.

`sampling='poisson'` instead accounts for Poisson sampling (each client joins a
round independently with probability `q = m / N`, so cohorts vary in size;
`fedtff.runner.training.sample_clients(..., sampling='poisson')`) under
add-or-remove-one, with sensitivity `C` (noise multiplier `z`), the setting of
McMahan et al. 2018, TF Privacy, pfl-research and Opacus. TFF's DP mean divides
the noised sum by the *expected* cohort size `m`, whatever the cohort's size,
so the sensitivity stays `C/m` on the mean (McMahan et al.'s fixed-denominator
estimator).

Accountants (`accountant=`): `'rdp'` (Mironov 2017; Wang et al. 2019 for
sampling without replacement) for both samplings, and `'pld'` (privacy loss
distributions, Koskela et al. 2020, Doroshenko et al. 2022; dp_accounting's
pessimistic estimate, so an upper bound) for Poisson sampling only:
dp_accounting's PLD accountant has no sampling without replacement.

DP-FTRL's accounting (no sampling) is in `fedtff.privacy.ftrl`.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import dp_accounting
import numpy as np

WITHOUT_REPLACEMENT = 'without_replacement'
POISSON = 'poisson'
SAMPLINGS = (WITHOUT_REPLACEMENT, POISSON)
RDP = 'rdp'
PLD = 'pld'
ACCOUNTANTS = (RDP, PLD)
PLD_DISCRETIZATION = 1e-4  # dp_accounting's PLDAccountant default.
# Coarser PLDs whose calibrations seed the one at PLD_DISCRETIZATION (guesses only).
PLD_GUESS_DISCRETIZATIONS = (1e-2, 1e-3)
EPSILON_METRIC = 'privacy/epsilon'
DEFAULT_TOLERANCE = 1e-3
_MAX_NOISE_MULTIPLIER = 2.0**20


DEFAULT_DELTA_BUDGET = 0.01  # N * delta: the population-wide chance of a catastrophic failure.


def default_delta(num_clients: int) -> float:
  """`0.01 / N`: the default delta for `N` clients, so that `N * delta = 0.01`.

  A mechanism that publishes each client's whole dataset with probability
  `delta` meets `(0, delta)`-DP; over `N` clients it publishes one with
  probability up to `N * delta`. McMahan et al. (2018) use `1 / N**1.1`, whose
  `N * delta = N**-0.1` is 0.68 at `N = 50` and still 0.25 at a million
  clients; `0.01 / N` caps it at 1% at every `N`. A user delta of `1 / N` or
  more is refused (`check_guarantee`).
  """
  if not (isinstance(num_clients, (int, np.integer)) and num_clients >= 1):
    raise ValueError(f'num_clients must be a positive integer, got {num_clients!r}.')
  return DEFAULT_DELTA_BUDGET / num_clients


def neighboring_relation(sampling: str = WITHOUT_REPLACEMENT) -> dp_accounting.NeighboringRelation:
  """The neighbouring relation under which `sampling` is accounted."""
  _check_sampling(sampling)
  if sampling == POISSON:
    return dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
  return dp_accounting.NeighboringRelation.REPLACE_ONE


def round_event(noise_multiplier: float, clients_per_round: int, num_clients: int,
                *, sampling: str = WITHOUT_REPLACEMENT) -> dp_accounting.DpEvent:
  """The `DpEvent` of one DP-FedAvg round; see the module docstring.

  Args:
    noise_multiplier: `z`: the noise standard deviation over the clip norm.
    clients_per_round: `m`, the clients sampled each round.
    num_clients: `N`, the clients sampled from.
    sampling: `WITHOUT_REPLACEMENT` (what fedtff does) or `POISSON`.
  """
  _check_sampling_args(noise_multiplier, clients_per_round, num_clients, sampling)
  if sampling == POISSON:
    return dp_accounting.PoissonSampledDpEvent(
        clients_per_round / num_clients, dp_accounting.GaussianDpEvent(noise_multiplier))
  # Replace-one sensitivity of a sum of updates clipped to C is 2C.
  return dp_accounting.SampledWithoutReplacementDpEvent(
      num_clients, clients_per_round, dp_accounting.GaussianDpEvent(noise_multiplier / 2))


def dp_event(noise_multiplier: float, clients_per_round: int, num_clients: int, rounds: int,
             *, sampling: str = WITHOUT_REPLACEMENT) -> dp_accounting.DpEvent:
  """The `DpEvent` of `rounds` DP-FedAvg rounds: `round_event` self-composed."""
  _check_rounds(rounds)
  return dp_accounting.SelfComposedDpEvent(
      round_event(noise_multiplier, clients_per_round, num_clients, sampling=sampling), rounds)


def epsilon(noise_multiplier: float, clients_per_round: int, num_clients: int, rounds: int,
            delta: Optional[float] = None, *, sampling: str = WITHOUT_REPLACEMENT,
            accountant: str = RDP) -> float:
  """The epsilon DP-FedAvg spends over `rounds` rounds, by `accountant`.

  Args:
    noise_multiplier: `z`: the noise standard deviation over the clip norm
      (the `noise_multiplier` of `fedtff.privacy.dp_aggregator`).
    clients_per_round: `m`, the clients sampled each round.
    num_clients: `N`, the clients sampled from.
    rounds: `T`, the rounds run.
    delta: The target delta; `default_delta(num_clients)` when `None`.
    sampling: `WITHOUT_REPLACEMENT` (fixed-size cohorts) or `POISSON`.
    accountant: `RDP`, or `PLD` (Poisson sampling only).

  Returns:
    Epsilon at `delta`; `math.inf` when `noise_multiplier` is 0.
  """
  _check_sampling_args(noise_multiplier, clients_per_round, num_clients, sampling)
  _check_rounds(rounds)
  delta = resolve_delta(delta, num_clients)
  _check_accountant(accountant, sampling)
  if noise_multiplier == 0:
    return math.inf
  if accountant == PLD:
    return _pld_epsilon(noise_multiplier, clients_per_round=clients_per_round,
                        num_clients=num_clients, rounds=rounds, delta=delta,
                        interval=PLD_DISCRETIZATION)
  orders, one_round = round_rdp(noise_multiplier, clients_per_round, num_clients,
                                sampling=sampling)
  return _rdp_epsilon(orders, one_round, rounds, delta)


def _rdp_epsilon(orders: Sequence[float], one_round: Sequence[float], rounds: int,
                 delta: float) -> float:
  """Epsilon at `delta` of `rounds` rounds of RDP `one_round` at `orders`: what
  `make_accountant(RDP, ...).compose(dp_event(..., rounds)).get_epsilon(delta)`
  computes, since the accountant adds `rounds` times one round's RDP to zeros."""
  return float(dp_accounting.rdp.compute_epsilon(orders, rounds * np.asarray(one_round),
                                                 delta)[0])


@functools.lru_cache(maxsize=64)  # Most of a second each; a run asks more than once.
def round_rdp(noise_multiplier: float, clients_per_round: int, num_clients: int, *,
              sampling: str = WITHOUT_REPLACEMENT
             ) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
  """`(orders, Rényi DP of one round)`, as dp_accounting's RDP accountant composes
  `round_event(...)`; `T` rounds spend `T` times it at each order."""
  accountant = make_accountant(RDP, sampling)
  accountant.compose(round_event(noise_multiplier, clients_per_round, num_clients,
                                 sampling=sampling))
  return tuple(accountant.orders), tuple(accountant.rdp)


def make_accountant(accountant: str = RDP, sampling: str = WITHOUT_REPLACEMENT
                   ) -> dp_accounting.PrivacyAccountant:
  """A fresh dp_accounting accountant of kind `accountant` for `sampling`'s relation."""
  _check_accountant(accountant, sampling)
  relation = neighboring_relation(sampling)
  if accountant == PLD:
    return dp_accounting.pld.PLDAccountant(neighboring_relation=relation,
                                           value_discretization_interval=PLD_DISCRETIZATION)
  return dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)


@functools.lru_cache(maxsize=64)  # A pure, seconds-long search: run it once per setting.
def noise_multiplier_for_epsilon(target_epsilon: float, clients_per_round: int,
                                 num_clients: int, rounds: int, delta: Optional[float] = None,
                                 *, sampling: str = WITHOUT_REPLACEMENT,
                                 accountant: str = RDP,
                                 tolerance: float = DEFAULT_TOLERANCE) -> float:
  """The smallest noise multiplier that keeps `rounds` rounds within `target_epsilon`.

  Epsilon falls as the noise multiplier grows, so `smallest_noise_multiplier`
  brackets it. With `accountant='pld'` each evaluation takes seconds (the
  one-round PLD at a discretization of `PLD_DISCRETIZATION`), so the search
  starts from the multiplier that PLDs of coarser discretizations
  (`PLD_GUESS_DISCRETIZATIONS`, each seeding the next) calibrate to: a guess
  only, which the accountant at `PLD_DISCRETIZATION` then verifies from both
  sides (docs/privacy.md, "Calibration").

  Args:
    target_epsilon: The epsilon not to exceed; positive.
    clients_per_round: `m`, the clients sampled each round.
    num_clients: `N`, the clients sampled from.
    rounds: `T`, the rounds run.
    delta: The target delta; `default_delta(num_clients)` when `None`.
    sampling: `WITHOUT_REPLACEMENT` (fixed-size cohorts) or `POISSON`.
    accountant: `RDP`, or `PLD` (Poisson sampling only).
    tolerance: The returned `z` is at most this much above the exact smallest
      multiplier `z*` (absolute, in noise-multiplier units).

  Returns:
    A `z` with `epsilon(z, ...) <= target_epsilon` and `z - z* <= tolerance`.
  """
  if not target_epsilon > 0:
    raise ValueError(f'target_epsilon must be positive, got {target_epsilon}.')
  if not tolerance > 0:
    raise ValueError(f'tolerance must be positive, got {tolerance}.')
  spends = lambda z: epsilon(z, clients_per_round, num_clients, rounds, delta, sampling=sampling,
                             accountant=accountant)
  guess = None
  if accountant == PLD:
    _check_accountant(accountant, sampling)
    for interval in PLD_GUESS_DISCRETIZATIONS:
      coarse = functools.partial(_pld_epsilon, clients_per_round=clients_per_round,
                                 num_clients=num_clients, rounds=rounds,
                                 delta=resolve_delta(delta, num_clients), interval=interval)
      guess = smallest_noise_multiplier(coarse, target_epsilon, rounds, tolerance=tolerance / 4,
                                        guess=guess)
  return smallest_noise_multiplier(spends, target_epsilon, rounds, tolerance=tolerance,
                                   guess=guess)


def _pld_epsilon(noise_multiplier: float, *, clients_per_round: int, num_clients: int,
                 rounds: int, delta: float, interval: float) -> float:
  """What `make_accountant(PLD, POISSON)` (at discretization `interval`) composing
  `dp_event(...)` reports, step for step, with the one-round PLD from `round_pld`."""
  pld = dp_accounting.pld.privacy_loss_distribution.identity(
      value_discretization_interval=interval)
  one_round = round_pld(noise_multiplier, clients_per_round / num_clients, interval)
  return pld.compose(one_round.self_compose(rounds)).get_epsilon_for_delta(delta)


# Seconds each: the calibration, `check_guarantee` and `PrivacyTracker` share them.
@functools.lru_cache(maxsize=8)
def round_pld(noise_multiplier: float, sampling_probability: float,
              interval: float = PLD_DISCRETIZATION
             ) -> dp_accounting.pld.privacy_loss_distribution.PrivacyLossDistribution:
  """The pessimistic PLD of one Poisson-sampled Gaussian round, as `PLDAccountant` builds it."""
  return dp_accounting.pld.privacy_loss_distribution.from_gaussian_mechanism(
      standard_deviation=noise_multiplier, value_discretization_interval=interval,
      sampling_prob=sampling_probability)


def smallest_noise_multiplier(spends: Callable[[float], float], target_epsilon: float,
                              rounds: int, *, tolerance: float = DEFAULT_TOLERANCE,
                              guess: Optional[float] = None) -> float:
  """The smallest `z` (within `tolerance` above) with `spends(z) <= target_epsilon`.

  `spends` maps a noise multiplier to the epsilon of `rounds` rounds and must
  fall as the multiplier grows; see `noise_multiplier_for_epsilon`. The search
  keeps a bracket `low < high` with `spends(low) > target_epsilon >=
  spends(high)` (`low = 0` counts as epsilon infinity), each end a point where
  `spends` was evaluated, and returns `high` once `high - low <= tolerance`.
  It steps by secant on `log(epsilon)` against `log(z)`, nearly a line for
  the Gaussian mechanisms, with the safeguards of Brent's zeroin (Brent,
  "Algorithms for Minimization without Derivatives", 1973, chapter 4): a
  bisection when the steps stop halving, and a step of just under `tolerance`
  next to an end the root is estimated to be near, so that the last two
  evaluations straddle the root. Before both ends are found it extrapolates,
  overshooting the estimate a little.

  Args:
    spends: `z -> epsilon`, non-increasing.
    target_epsilon: The epsilon not to exceed.
    rounds: The rounds `spends` composes (for the error message only).
    tolerance: The largest `z - z*` allowed.
    guess: An estimate of `z*`; the search starts at `guess + tolerance / 2`
      (then `guess - tolerance / 2`), so a guess within `tolerance / 2` of
      `z*` costs two evaluations. From 1 when `None`.

  Raises:
    ValueError: If no multiplier up to 2**20 reaches `target_epsilon`.
  """
  if guess is not None and not 0 < guess < math.inf:
    raise ValueError(f'guess must be a positive noise multiplier, got {guess}.')
  search = _Bracket(target_epsilon, tolerance, guess is not None)
  z = 1.0 if guess is None else guess + tolerance / 2
  while True:
    search.add(z, spends(z))
    if search.done():
      return search.high
    if search.high is None and search.low >= _MAX_NOISE_MULTIPLIER:
      raise ValueError(f'No noise multiplier up to {_MAX_NOISE_MULTIPLIER:g} reaches '
                       f'epsilon {target_epsilon} in {rounds} rounds.')
    z = search.next_point()


_TYPICAL_SLOPE = -1.5  # d log(epsilon) / d log(z) near epsilon 1-10 here; only speed depends on it.
_MAX_STEP_RATIO = 16.0  # An extrapolation moves z by at most this factor.
_OVERSHOOT = 0.1  # An extrapolation goes this fraction of its step beyond the estimate.


class _Bracket:
  """The state of `smallest_noise_multiplier`'s search: evaluated points and the bracket."""

  def __init__(self, target_epsilon: float, tolerance: float, guessed: bool):
    self.target, self.tolerance, self.guessed = target_epsilon, tolerance, guessed
    self.reach = tolerance * (1 - 1e-6)  # A step that leaves a bracket within tolerance.
    self.low, self.high, self.low_epsilon, self.high_epsilon = 0.0, None, math.inf, None
    self.points = []

  def add(self, z: float, spent: float) -> None:
    self.points.append((z, spent))
    if spent <= self.target:
      self.high, self.high_epsilon = z, spent
    else:
      self.low, self.low_epsilon = z, spent

  def done(self) -> bool:
    return self.high is not None and self.high - self.low <= self.tolerance

  def next_point(self) -> float:
    if self.high is None:
      return self._extrapolate_up()
    if self.guessed and len(self.points) == 1:
      return self.high - self.reach  # The guess's other side.
    if self.low == 0:
      return self._extrapolate_down()
    return self._inside()

  def _extrapolate_up(self) -> float:
    low = self.low
    estimate = self._estimate(self.points[-2:]) or 2 * low  # Doubling, as a last resort.
    if estimate <= low + self.tolerance:  # Straddle the root: this step may end the search.
      return low + self.reach
    z = min(estimate + _OVERSHOOT * (estimate - low) + self.tolerance / 2, _MAX_STEP_RATIO * low)
    return min(max(z, low + self.reach), _MAX_NOISE_MULTIPLIER)

  def _extrapolate_down(self) -> float:
    high = self.high
    estimate = self._estimate(self.points[-2:]) or high / 2
    if estimate >= high - self.tolerance:  # Straddle the root: this step may end the search.
      return high - self.reach
    z = max(estimate - _OVERSHOOT * (high - estimate) - self.tolerance / 2,
            high / _MAX_STEP_RATIO)
    return min(z, high - self.reach)

  def _inside(self) -> float:
    low, high, tol = self.low, self.high, self.tolerance
    estimate = self._estimate(self.points[-2:])
    if estimate is None or not low < estimate < high:
      estimate = self._estimate([(low, self.low_epsilon), (high, self.high_epsilon)])
    if estimate is None or not low < estimate < high:
      return (low + high) / 2
    if estimate >= high - tol / 2:  # Straddle the root: this step may end the search.
      return high - self.reach
    if estimate <= low + tol / 2:
      return low + self.reach
    if len(self.points) >= 3 and (abs(estimate - self.points[-1][0])
                                  > abs(self.points[-2][0] - self.points[-3][0]) / 2):
      return (low + high) / 2  # Steps are not halving (Brent's test): bisect.
    return estimate

  def _estimate(self, points) -> Optional[float]:
    """Where the secant on (log z, log epsilon) through `points` (one: `_TYPICAL_SLOPE`) meets
    the target; None if it does not fall."""
    logs = [(math.log(z), math.log(e)) for z, e in points if z > 0 and 0 < e < math.inf]
    if len(logs) != len(points) or not logs:
      return None
    (x1, y1), (x2, y2) = logs[0], logs[-1]
    slope = (y2 - y1) / (x2 - x1) if len(logs) == 2 and x2 != x1 else _TYPICAL_SLOPE
    if not slope < 0:
      return None
    return math.exp(x2 + (math.log(self.target) - y2) / slope)


class PrivacyTracker:
  """The epsilon spent after each round, for a round loop's metrics.

  The per-round Rényi DP (or, with `accountant='pld'`, the per-round privacy
  loss distribution) is computed once; `epsilon(round_num)` then composes
  `round_num` rounds, so a resumed run reports the same numbers as an
  uninterrupted one. The values equal `fedtff.privacy.epsilon(..., rounds=round_num)`.

    tracker = fedtff.privacy.PrivacyTracker(1.0, 10, 500)
    row.update(tracker.metrics(round_num))  # {'privacy/epsilon': ...}
  """

  def __init__(self, noise_multiplier: float, clients_per_round: int, num_clients: int,
               delta: Optional[float] = None, *, sampling: str = WITHOUT_REPLACEMENT,
               accountant: str = RDP):
    event = round_event(noise_multiplier, clients_per_round, num_clients, sampling=sampling)
    self.noise_multiplier = noise_multiplier
    self.num_clients = num_clients
    self.delta = resolve_delta(delta, num_clients)
    self.sampling, self.accountant = sampling, accountant
    self._private = noise_multiplier > 0
    self._event, self._pld_epsilons, self._one_round_pld = event, {}, None
    _check_accountant(accountant, sampling)
    if self._private:
      orders, one_round = round_rdp(noise_multiplier, clients_per_round, num_clients,
                                    sampling=sampling)
      self._orders, self._round_rdp = orders, one_round

  def epsilon(self, round_num: int) -> float:
    """Epsilon after rounds `1..round_num`; 0 before the first round."""
    if round_num < 0:
      raise ValueError(f'round_num must be nonnegative, got {round_num}.')
    if not self._private:
      return math.inf if round_num else 0.0
    if self.accountant == PLD:
      if round_num == 0:
        return 0.0
      if round_num not in self._pld_epsilons:
        # What PLDAccountant.compose(event, round_num) computes, with the
        # one-round PLD (the slow part) built once.
        pld = self._round_pld().self_compose(round_num)
        self._pld_epsilons[round_num] = float(pld.get_epsilon_for_delta(self.delta))
      return self._pld_epsilons[round_num]
    return _rdp_epsilon(self._orders, self._round_rdp, round_num, self.delta)

  def metrics(self, round_num: int) -> Dict[str, float]:
    """`{'privacy/epsilon': epsilon(round_num)}`, to add to a metrics row."""
    return {EPSILON_METRIC: self.epsilon(round_num)}

  def _round_pld(self):
    if self._one_round_pld is None:  # What PLDAccountant builds for one round's event.
      self._one_round_pld = round_pld(self._event.event.noise_multiplier,
                                      self._event.sampling_probability, PLD_DISCRETIZATION)
    return self._one_round_pld


def check_guarantee(*, noise_multiplier: float, clients_per_round: int, num_clients: int,
                    weighted: bool, sampling: str = WITHOUT_REPLACEMENT,
                    rounds: Optional[int] = None, target_epsilon: Optional[float] = None,
                    delta: Optional[float] = None, accountant: str = RDP) -> Optional[float]:
  """Refuses DP-FedAvg configurations whose stated guarantee would not hold.

  Args:
    noise_multiplier: `z` of the DP aggregator.
    clients_per_round: `m`, the clients sampled each round.
    num_clients: `N`, the training clients sampled from.
    weighted: Whether client updates are weighted by example counts.
    sampling: How the round loop samples clients (`fedtff.runner.training.sample_clients`):
      `WITHOUT_REPLACEMENT` or `POISSON`.
    rounds: The rounds to run; needed with `target_epsilon`.
    target_epsilon: The epsilon the run claims, if any.
    delta: The delta the run claims; `default_delta(num_clients)` when `None`.
    accountant: `RDP`, or `PLD` (Poisson sampling only).

  Returns:
    The epsilon spent over `rounds` rounds, or `None` without `rounds`.

  Raises:
    ValueError: With a sentence naming what breaks the guarantee.
  """
  _check_sampling_args(noise_multiplier, clients_per_round, num_clients, sampling)
  if weighted:
    raise ValueError(
        'DP-FedAvg needs unweighted aggregation (weighted=False): weighting updates by '
        'example counts lets one client move the average by more than 2*clip/clients_per_round, '
        'the sensitivity the noise is calibrated to.')
  _check_accountant(accountant, sampling)
  _check_claimed_delta(resolve_delta(delta, num_clients), num_clients)
  if target_epsilon is not None:
    _check_claimed_epsilon(noise_multiplier, target_epsilon, rounds)
  if rounds is None:
    return None
  spent = epsilon(noise_multiplier, clients_per_round, num_clients, rounds, delta,
                  sampling=sampling, accountant=accountant)
  if target_epsilon is not None and spent > target_epsilon:
    raise ValueError(
        f'{rounds} rounds with noise_multiplier={noise_multiplier} spend epsilon {spent:.4g}, '
        f'more than target_epsilon={target_epsilon}; raise the noise multiplier (see '
        'fedtff.privacy.noise_multiplier_for_epsilon) or run fewer rounds.')
  return spent


def _check_claimed_delta(delta: float, num_clients: int) -> None:
  if delta >= 1 / num_clients:
    raise ValueError(
        f'delta={delta:g} is not below 1/num_clients={1 / num_clients:g}: a mechanism that '
        "publishes one random client's data in full meets such a delta, so it promises nothing.")


def _check_claimed_epsilon(noise_multiplier: float, target_epsilon: float,
                           rounds: Optional[int]) -> None:
  if not target_epsilon > 0:
    raise ValueError(f'target_epsilon must be positive, got {target_epsilon}.')
  if noise_multiplier == 0 and math.isfinite(target_epsilon):
    raise ValueError(
        f'noise_multiplier is 0, so the updates get no noise and epsilon is infinite; '
        f'target_epsilon={target_epsilon} cannot be claimed.')
  if rounds is None:
    raise ValueError('Checking a target_epsilon needs the number of rounds (rounds=...).')


def _check_accountant(accountant: str, sampling: str) -> None:
  if accountant not in ACCOUNTANTS:
    raise ValueError(f'accountant must be one of {ACCOUNTANTS}, got {accountant!r}.')
  if accountant == PLD and sampling != POISSON:
    raise ValueError(
        f"accountant='pld' needs sampling='{POISSON}': dp_accounting's PLD accountant has no "
        "sampling without replacement; use accountant='rdp'.")


def _check_sampling(sampling: str) -> None:
  if sampling not in SAMPLINGS:
    raise ValueError(f'sampling must be one of {SAMPLINGS}, got {sampling!r}.')


def _check_sampling_args(noise_multiplier: float, clients_per_round: int, num_clients: int,
                         sampling: str) -> None:
  _check_sampling(sampling)
  if not (isinstance(num_clients, (int, np.integer)) and num_clients >= 1):
    raise ValueError(f'num_clients must be a positive integer, got {num_clients!r}.')
  if not (isinstance(clients_per_round, (int, np.integer)) and clients_per_round >= 1):
    raise ValueError(f'clients_per_round must be a positive integer, got {clients_per_round!r}.')
  if clients_per_round > num_clients:
    raise ValueError(
        f'clients_per_round={clients_per_round} exceeds num_clients={num_clients}: a round '
        'cannot sample more distinct clients than there are.')
  if not noise_multiplier >= 0:
    raise ValueError(f'noise_multiplier must be nonnegative, got {noise_multiplier}.')


def _check_rounds(rounds: int) -> None:
  if not (isinstance(rounds, (int, np.integer)) and rounds >= 1):
    raise ValueError(f'rounds must be a positive integer, got {rounds!r}.')


def resolve_delta(delta: Optional[float], num_clients: int) -> float:
  """`delta`, or the default for `num_clients` (`default_delta`) if None; checked in (0, 1)."""
  delta = default_delta(num_clients) if delta is None else delta
  if not 0 < delta < 1:
    raise ValueError(f'delta must be in (0, 1), got {delta}.')
  return delta
