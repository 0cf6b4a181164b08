"""run_dir.prepare: which config changes a run directory accepts."""

import json

import pytest

import fedtff
from fedtff import run_dir


def _earlier_config():
  """base_config() as a run writes it: resolved, e.g. server.learning_rate 1.0 for fedavg."""
  return json.loads(fedtff.config.to_json(fedtff.config.base_config()))


def _write_earlier_config(workdir, config_dict):
  workdir.mkdir(exist_ok=True)
  (workdir / run_dir.CONFIG).write_text(json.dumps(config_dict))


def test_a_run_from_before_new_keys_existed_resumes(tmp_path):
  earlier = _earlier_config()
  del earlier['backend'], earlier['runtime'], earlier['data']['feed']
  _write_earlier_config(tmp_path / 'run', earlier)
  run_dir.prepare(str(tmp_path / 'run'), fedtff.config.base_config())  # No error.


def test_runtime_backend_and_feed_may_change_on_resume(tmp_path):
  _write_earlier_config(tmp_path / 'run', json.loads(
      fedtff.config.to_json(fedtff.config.base_config())))
  config = fedtff.config.base_config()
  config.update(dict(total_rounds=20, backend='fast'))
  config.data.feed, config.data.feed_dir = 'constants', '/shared'
  run_dir.prepare(str(tmp_path / 'run'), config)


def test_a_changed_key_added_later_is_still_refused(tmp_path):
  earlier = _earlier_config()
  del earlier['data']['vocab_size']
  _write_earlier_config(tmp_path / 'run', earlier)
  config = fedtff.config.base_config()
  config.data.vocab_size = 5000
  with pytest.raises(fedtff.config.ConfigError, match=r'data.vocab_size: 10000 -> 5000'):
    run_dir.prepare(str(tmp_path / 'run'), config)


def test_an_earlier_fedavgm_run_that_ran_without_momentum_is_not_resumed_with_it(tmp_path):
  """Before the defaults were resolved, a fedavgm config ran with server momentum 0."""
  earlier = _earlier_config()
  earlier['algorithm']['name'] = 'fedavgm'
  _write_earlier_config(tmp_path / 'run', earlier)
  config = fedtff.config.base_config()
  config.algorithm.name = 'fedavgm'
  with pytest.raises(fedtff.config.ConfigError, match=r'\(server.momentum: 0.0 -> 0.9\)'):
    run_dir.prepare(str(tmp_path / 'run'), config)
  config.server.momentum = 0.0
  run_dir.prepare(str(tmp_path / 'run'), config)  # The value it ran with: no error.
