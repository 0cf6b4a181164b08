"""scripts/setup.sh: the stamp short-cut and its errors."""

import os
import shutil
import subprocess

from tests import conftest

SETUP = os.path.join(conftest.REPO_ROOT, 'scripts', 'setup.sh')
BASH = shutil.which('bash')


def run_setup(env_updates, path=None):
  env = conftest.script_env(**env_updates)
  if path is not None:
    env['PATH'] = path
  return subprocess.run([BASH, SETUP], capture_output=True, text=True, env=env, timeout=120)


def test_rerun_with_nothing_changed_is_a_no_op():
  result = run_setup({})
  assert result.returncode == 0, result.stderr
  assert result.stderr.strip().endswith('is up to date')


def test_no_suitable_python_names_the_versions(tmp_path):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  for tool in ('cat', 'cut', 'dirname', 'grep', 'head', 'mktemp', 'rm', 'sha256sum'):
    os.symlink(shutil.which(tool), bin_dir / tool)
  fake_python = bin_dir / 'python3'
  fake_python.write_text('#!/bin/sh\necho "Python 3.12.1"\nexit 1\n')
  fake_python.chmod(0o755)
  result = run_setup({'FEDTFF_VENV': str(tmp_path / 'venv'), 'FEDTFF_PYTHON': ''}, path=str(bin_dir))
  assert result.returncode != 0
  assert 'error: no Python 3.9, 3.10 or 3.11 found' in result.stderr
  assert not (tmp_path / 'venv').exists()


def test_a_failing_step_is_named(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('')
  result = run_setup({'FEDTFF_VENV': str(blocker / 'venv')})
  assert result.returncode != 0
  assert f'error: step "create {blocker}/venv' in result.stderr


def test_a_venv_left_without_pip_by_an_interrupted_creation_is_made_again(tmp_path):
  venv = tmp_path / 'venv'
  subprocess.run([shutil.which('python3'), '-m', 'venv', '--without-pip', str(venv)], check=True)
  unreachable_index = {'PIP_INDEX_URL': 'http://127.0.0.1:9/simple', 'PIP_RETRIES': '0',
                       'PIP_TIMEOUT': '1', 'FEDTFF_VENV': str(venv)}
  result = run_setup(unreachable_index)  # Stops at the first install: no index here.
  assert f'[setup] remove {venv} (it has no pip: its creation was interrupted)' in result.stderr
  assert 'error: step "install the pinned TFF dependency set' in result.stderr
  pip = subprocess.run([str(venv / 'bin' / 'python'), '-m', 'pip', '--version'],
                       capture_output=True, text=True)
  assert pip.returncode == 0, pip.stderr
