"""Privacy for fedtff: DP-FedAvg accounting and aggregators, secure summation.

* `accounting`: epsilon of DP-FedAvg for fedtff's client sampling, the noise
  multiplier for a target epsilon, a per-round tracker, configuration checks.
* `ddp`: distributed DP: the distributed Skellam mean (Agarwal et al. 2021)
  under secure summation, and its accounting without sampling amplification.
* `ftrl`: DP-FTRL (tree aggregation, Kairouz et al. 2021): its aggregator and
  its accounting without sampling amplification.
* `ledger`: the per-round record of a DP run's mechanisms that epsilon is
  composed from; `run_privacy`: what the runner keeps and publishes of it
  (`RunPrivacy`, the privacy tracker a round loop of your own can use).
* `mechanisms`: the DP-FedAvg mean (fixed or adaptive clipping) and TFF's
  secure-sum mean.
* `masking_simulation`: a simulation of the arithmetic of pairwise additive
  masking (Bonawitz et al. 2017) as a TFF aggregator, with toy keys: not secure.

docs/privacy.md states what each mechanism protects against and what it does not.
"""

from fedtff.privacy import accounting
from fedtff.privacy import ddp
from fedtff.privacy import ftrl
from fedtff.privacy import ledger
from fedtff.privacy import mechanisms
from fedtff.privacy import masking_simulation
from fedtff.privacy.accounting import check_guarantee
from fedtff.privacy.accounting import epsilon
from fedtff.privacy.accounting import noise_multiplier_for_epsilon
from fedtff.privacy.accounting import PrivacyTracker
from fedtff.privacy.ddp import ddp_aggregator
from fedtff.privacy.ledger import PrivacyLedger
from fedtff.privacy.ledger import RoundMechanism
from fedtff.privacy.run_privacy import RunPrivacy
from fedtff.privacy.mechanisms import adaptive_noise_split
from fedtff.privacy.mechanisms import dp_aggregator
from fedtff.privacy.mechanisms import secure_sum_aggregator
from fedtff.privacy.masking_simulation import masking_simulation_aggregator
from fedtff.privacy.masking_simulation import MaskingSimulationSumFactory

_RENAMED = {'masking_aggregator': 'masking_simulation_aggregator',
            'PairwiseMaskingSumFactory': 'MaskingSimulationSumFactory'}


def __getattr__(name):
  if name in _RENAMED:
    raise AttributeError(f'fedtff.privacy.{name} is now {_RENAMED[name]}: it simulates the '
                         'arithmetic of pairwise masking with toy keys and protects nothing.')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
