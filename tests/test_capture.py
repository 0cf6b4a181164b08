"""fedtff.execution.capture: the packet capture the cross-silo checks rely on.

A capture that missed bytes would make "the canary is absent" meaningless, so
these tests check that a capture sees every byte sent, reassembled across
segment boundaries, in this namespace and in another one.
"""

import os
import socket
import subprocess
import threading
import time

import pytest

from fedtff.execution import capture

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='AF_PACKET capture needs root')


def _send_over_loopback(chunks):
  """Sends `chunks` over one loopback TCP connection.

  Returns:
    `(the bytes received, the server's port)`.
  """
  server = socket.socket()
  server.bind(('127.0.0.1', 0))
  server.listen(1)
  received = []

  def serve():
    connection, _ = server.accept()
    data = b''
    while chunk := connection.recv(1 << 16):
      data += chunk
    received.append(data)
    connection.close()

  thread = threading.Thread(target=serve)
  thread.start()
  client = socket.create_connection(server.getsockname())
  for chunk in chunks:
    client.sendall(chunk)
    time.sleep(0.02)  # Separate segments: the needle straddles two of them.
  client.close()
  thread.join()
  port = server.getsockname()[1]
  server.close()
  return received[0], port


def _in_namespace(path, fn):
  """Runs `fn` on a thread inside the network namespace at `path`."""
  errors = []

  def run():
    try:
      capture.enter_network_namespace(path)
      fn()
    except BaseException as e:  # pylint: disable=broad-except
      errors.append(e)

  thread = threading.Thread(target=run)
  thread.start()
  thread.join()
  if errors:
    raise errors[0]


CHUNKS = [b'x' * 200_000 + b'CANA', b'RY-7f3a' + b'y' * 300_000]


def test_sees_every_byte_and_a_needle_split_over_segments():
  with capture.TrafficCapture('lo') as seen:
    received, port = _send_over_loopback(CHUNKS)
    time.sleep(0.2)
  assert received == b''.join(CHUNKS)
  # Other tests' loopback traffic is captured too, so this checks the
  # connection's own stream: exactly the bytes sent, none missing.
  to_server = [stream for flow, stream in seen.streams().items() if flow[3] == port]
  assert to_server == [received]
  assert seen.contains(b'CANARY-7f3a')
  assert not seen.contains(b'CANARY-7f3b')


def test_captures_inside_another_network_namespace():
  name = f'fedtff-cap-{os.getpid()}'
  subprocess.run(['ip', 'netns', 'add', name], check=True)
  try:
    path = f'/var/run/netns/{name}'
    subprocess.run(['ip', '-n', name, 'link', 'set', 'lo', 'up'], check=True)
    with capture.TrafficCapture('lo', netns=path) as inside, \
         capture.TrafficCapture('lo') as outside:
      _in_namespace(path, lambda: _send_over_loopback(CHUNKS))
      time.sleep(0.2)
    assert inside.gaps() == 0 and inside.contains(b'CANARY-7f3a')
    assert not outside.contains(b'CANARY-7f3a')  # Another namespace's loopback.
  finally:
    subprocess.run(['ip', 'netns', 'del', name], check=False)


def test_a_missing_namespace_is_an_error():
  with pytest.raises(OSError, match='no-such-namespace'):
    with capture.TrafficCapture('lo', netns='/var/run/netns/no-such-namespace'):
      pass
