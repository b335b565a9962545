"""Small facts about a connection's transport that every protocol needs."""
from __future__ import annotations

from typing import Any


def no_delay(transport: Any) -> None:
    """Set TCP_NODELAY on the socket below any TLS wrapper.

    Our protocols answer a client that waits for the answer; a reply's last small segment must
    not also wait for the client's delayed ACK (Nagle): stock Twisted POP3 lost 43 ms per RETR so.
    """
    for _ in range(4):
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if callable(set_no_delay):
            try:
                set_no_delay(True)
            except OSError:
                pass
            return
        transport = getattr(transport, "transport", None)
