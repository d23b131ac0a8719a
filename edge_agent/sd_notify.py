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
