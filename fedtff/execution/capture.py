"""A packet capture for checking what crosses a link (docs/cross_silo.md).

`TrafficCapture` records every frame on one network interface, optionally in
another network namespace, through a Linux `AF_PACKET` socket (root only, as
for tcpdump), and reassembles the TCP streams it saw: each direction of each
connection becomes one byte string, in sequence order, with duplicate and
retransmitted segments counted once. A value split over two segments is
therefore still found by `TrafficCapture.contains`.

It is how fedtff's cross-silo tests and `scripts/cross_silo_demo.sh` show that a
site's raw examples never reach the trainer:

  with capture.TrafficCapture('fxbr0') as seen:
    ...  # train
  assert seen.gaps() == 0 and not seen.contains(canary)

Linux only. IPv4 and IPv6 over Ethernet (and loopback, which carries
Ethernet-shaped frames).
"""

from __future__ import annotations

import collections
import ctypes
import os
import socket
import struct
import threading
from typing import Dict, Optional, Tuple

_ETH_P_ALL = 0x0003
_CLONE_NEWNET = 0x40000000
_ETHERTYPE_IPV4 = 0x0800
_ETHERTYPE_IPV6 = 0x86DD
_TCP = 6
_SO_RCVBUFFORCE = 33  # Linux; lets root exceed net.core.rmem_max.
_RECEIVE_BUFFER_BYTES = 256 << 20

Flow = Tuple[str, int, str, int]  # (source address, port, destination address, port)


def enter_network_namespace(path: str) -> None:
  """Moves the calling THREAD into the network namespace at `path` (e.g.
  `/var/run/netns/<name>` or `/proc/<pid>/ns/net`); sockets it creates from
  then on belong to that namespace, and keep it after the thread leaves it.

  Raises:
    OSError: If the namespace cannot be entered (no such path, not root).
  """
  libc = ctypes.CDLL('libc.so.6', use_errno=True)
  fd = os.open(path, os.O_RDONLY)
  try:
    if libc.setns(fd, _CLONE_NEWNET) != 0:
      error = ctypes.get_errno()
      raise OSError(error, f'cannot enter network namespace {path}: {os.strerror(error)}')
  finally:
    os.close(fd)


def _tcp_segment(frame: bytes) -> Optional[Tuple[Flow, int, bytes]]:
  """`(flow, sequence number, payload)` of a TCP segment in an Ethernet frame, else None."""
  if len(frame) < 14:
    return None
  ethertype = struct.unpack('!H', frame[12:14])[0]
  packet = frame[14:]
  if ethertype == _ETHERTYPE_IPV4 and len(packet) >= 20:
    header_length = (packet[0] & 0x0F) * 4
    total_length = struct.unpack('!H', packet[2:4])[0]
    if packet[9] != _TCP:
      return None
    source, destination = socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20])
    segment = packet[header_length:total_length]
  elif ethertype == _ETHERTYPE_IPV6 and len(packet) >= 40:
    if packet[6] != _TCP:  # Extension headers are not followed: fedtff's links send none.
      return None
    payload_length = struct.unpack('!H', packet[4:6])[0]
    source = socket.inet_ntop(socket.AF_INET6, packet[8:24])
    destination = socket.inet_ntop(socket.AF_INET6, packet[24:40])
    segment = packet[40:40 + payload_length]
  else:
    return None
  if len(segment) < 20:
    return None
  source_port, destination_port, sequence = struct.unpack('!HHI', segment[:8])
  data_offset = (segment[12] >> 4) * 4
  return (source, source_port, destination, destination_port), sequence, segment[data_offset:]


class TrafficCapture:
  """Captures the TCP traffic on `interface` while the `with` block runs.

  Args:
    interface: The interface's name (e.g. a bridge, a veth end, 'lo').
    netns: The path of the network namespace the interface is in, or None for
      this process's own.
  """

  def __init__(self, interface: str, *, netns: Optional[str] = None):
    self.interface = interface
    self.netns = netns
    self.frames = 0
    self._segments: Dict[Flow, Dict[int, bytes]] = collections.defaultdict(dict)
    self._stop = threading.Event()
    self._ready = threading.Event()
    self._error: Optional[BaseException] = None
    self._thread: Optional[threading.Thread] = None

  def __enter__(self) -> 'TrafficCapture':
    self._thread = threading.Thread(target=self._run, name='fedtff-capture', daemon=True)
    self._thread.start()
    self._ready.wait()
    if self._error is not None:
      raise self._error
    return self

  def __exit__(self, *exc_info) -> None:
    self._stop.set()
    self._thread.join()

  def _open(self) -> socket.socket:
    if self.netns:
      enter_network_namespace(self.netns)  # This thread only.
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
    # A large buffer, so that a burst is not dropped while this thread waits for
    # the GIL (`gaps` tells if one was).
    sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RECEIVE_BUFFER_BYTES)
    sock.bind((self.interface, 0))
    sock.settimeout(0.1)
    return sock

  def _run(self) -> None:
    try:
      sock = self._open()
    except OSError as e:
      self._error = e
      self._ready.set()
      return
    self._ready.set()
    with sock:
      while not self._stop.is_set():
        try:
          frame = sock.recv(1 << 18)  # More than a 64 KiB packet with its headers.
        except socket.timeout:
          continue
        self.frames += 1
        parsed = _tcp_segment(frame)
        if parsed and parsed[2]:
          flow, sequence, payload = parsed
          self._segments[flow].setdefault(sequence, payload)

  def streams(self) -> Dict[Flow, bytes]:
    """Each direction of each TCP connection seen: its bytes in sequence order,
    each byte once however often it was captured (sequence numbers taken as
    unsigned; a stream that wrapped 2**32 is cut there)."""
    return {flow: _assemble(segments)[0] for flow, segments in self._segments.items()}

  def gaps(self) -> int:
    """How many holes the captured streams have (bytes the capture missed
    between bytes it saw): 0 for a complete capture."""
    return sum(_assemble(segments)[1] for segments in self._segments.values())

  def total_bytes(self) -> int:
    """The TCP payload bytes captured, all streams."""
    return sum(len(stream) for stream in self.streams().values())

  def contains(self, needle: bytes) -> bool:
    """Whether any captured TCP stream contains `needle`."""
    return any(needle in stream for stream in self.streams().values())


def _assemble(segments: Dict[int, bytes]) -> Tuple[bytes, int]:
  """`(the stream's bytes, the number of holes)` from its segments by sequence number."""
  parts, holes, end = [], 0, None
  for sequence in sorted(segments):
    payload = segments[sequence]
    if end is not None:
      if sequence > end:
        holes += 1
      elif sequence + len(payload) <= end:
        continue
      else:
        payload = payload[end - sequence:]
    parts.append(payload)
    end = max(end or 0, sequence + len(segments[sequence]))
  return b''.join(parts), holes
