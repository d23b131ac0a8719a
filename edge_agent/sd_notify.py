"""systemd service notifications (``sd_notify``) without a dependency.

A service started with ``Type=notify`` finds a datagram socket in ``$NOTIFY_SOCKET`` and
reports ``READY=1`` once it can do its job, and ``WATCHDOG=1`` pings if the unit sets
``WatchdogSec``. Outside systemd the variable is unset and ``notify`` does nothing, so
callers need no checks. Tests and ``make demo`` set the variable themselves to learn
when a process is ready. The aggregator imports this module too: it uses only the
standard library.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """Send ``state`` (for example ``READY=1``) to systemd; return whether it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    # A leading '@' names a socket in the Linux abstract namespace.
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as connection:
            connection.connect(address)
            connection.sendall(state.encode())
    except OSError as error:
        log.warning("Cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), error)
        return False
    return True


def watchdog_interval_s() -> float | None:
    """Return systemd's ``WatchdogSec`` in seconds when it applies to this process, else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        interval_s = int(usec) / 1_000_000
    except ValueError:
        log.warning("Ignoring WATCHDOG_USEC=%r: not an integer", usec)
        return None
    return interval_s if interval_s > 0 else None


class Watchdog:
    """``WATCHDOG=1`` pings, sent at most every half watchdog interval however often ``ping`` is called.

    The caller pings from the loop whose progress matters (the frame loop), so a hung
    inference stops the pings and systemd restarts the unit.
    """

    def __init__(self, interval_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s if interval_s is not None else watchdog_interval_s()
        self._clock = clock
        self._last_ping = float("-inf")
        self.pings_sent = 0

    @property
    def enabled(self) -> bool:
        return self.interval_s is not None

    def ping(self) -> None:
        if self.interval_s is None:
            return
        now = self._clock()
        if now - self._last_ping < self.interval_s / 2:
            return
        self._last_ping = now
        if notify("WATCHDOG=1"):
            self.pings_sent += 1
