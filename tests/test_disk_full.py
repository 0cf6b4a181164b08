"""A full disk mid-run: one line naming the checkpoint, the previous one intact."""

import os
import subprocess

import numpy as np
import pytest

from tests import conftest

# Two 42 kB checkpoints of the quickstart MLP (with server momentum) and the
# small run files fit; the temporary file of the third does not.
TMPFS_SIZE = '110k'


@pytest.fixture
def tiny_tmpfs(tmp_path):
  mount_point = tmp_path / 'tmpfs'
  mount_point.mkdir()
  result = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={TMPFS_SIZE}', 'tmpfs',
                           str(mount_point)], capture_output=True, check=False)
  if result.returncode != 0:
    pytest.skip(f'cannot mount a tmpfs here: {result.stderr.decode().strip()}')
  try:
    yield mount_point
  finally:
    subprocess.run(['umount', str(mount_point)], check=True)


def test_full_disk_while_checkpointing_gets_one_line(tiny_tmpfs):
  workdir = tiny_tmpfs / 'run'
  result = conftest.run_script([
      'experiments/train.py', '--config=configs/quickstart.py', f'--workdir={workdir}',
      '--config.total_rounds=20', '--config.rounds_per_checkpoint=1', '--config.engine=compiled',
      '--config.output.tensorboard=False', '--quiet'])
  checkpoints = workdir / 'checkpoints'
  assert result.returncode == 2
  assert result.stderr == (f'train.py: error: [Errno 28] Cannot write the checkpoint '
                           f'{checkpoints}/round-000003.npz (No space left on device)\n')
  assert sorted(os.listdir(checkpoints)) == ['round-000001.npz', 'round-000002.npz']
  with np.load(checkpoints / 'round-000002.npz') as saved:
    assert int(saved['__round__']) == 2
