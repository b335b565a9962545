"""[listen] binds: why one fails, said in one line, and the trial binds of `check` and `demo`.

Why this module: a port held by another mail server, or a port below 1024 without the
privilege, used to pass `check` and then end start-up with a 35-line traceback. Now `check`
binds each listener's address and closes it again (nothing is started), the daemon turns a
failed bind into "[listen] smtp: tcp:25: port 25 is in use", and the demo picks a free port
instead of writing a busy one into its configuration.
"""
from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import socket
import sys
from dataclasses import dataclass

from twisted.internet import endpoints

from appliance import control

# bind(2) errors an operator can act on; anything else is shown with its strerror.
IN_USE = "in use"
PRIVILEGED = "needs root or CAP_NET_BIND_SERVICE"


@dataclass(frozen=True)
class Address:
    """Where a tcp: or tcp6: endpoint binds."""

    port: int
    interface: str            # "" means every address
    family: socket.AddressFamily


def address_of(description: str) -> Address | None:
    """The TCP address of a server endpoint string; None for anything that is not TCP."""
    try:
        kind, args, kwargs = endpoints._parseServer(description, None)
    except Exception:  # the parser raises ValueError, TypeError or KeyError; config.py reports those
        return None
    if kind == "TCP":
        port, interface = int(args[0]), kwargs.get("interface", "")
        return Address(port, interface, _family(interface, socket.AF_INET))
    if kind.__class__.__name__ == "_TCP6ServerParser":
        interface = kwargs.get("interface", "::")
        return Address(int(args[0] if args else kwargs.get("port", 0)), interface, socket.AF_INET6)
    return None


def _family(interface: str, default: socket.AddressFamily) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(interface).version == 6 else socket.AF_INET
    except ValueError:
        return default


def reason(error: OSError, port: int, interface: str = "") -> str:
    """What a failed bind means, in the operator's words."""
    if error.errno == errno.EADDRINUSE:
        return f"port {port} is {IN_USE}"
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"port {port} {PRIVILEGED}"
    if error.errno == errno.EADDRNOTAVAIL:
        return f"{interface} is not an address of this machine"
    return f"cannot bind port {port}: {error.strerror or error}"


def line(name: str, description: str, why: str) -> str:
    """The one line naming the [listen] key, e.g. "[listen] smtp: tcp:25: port 25 is in use"."""
    return f"[listen] {name}: {description}: {why}"


def try_bind(address: Address) -> OSError | None:
    """Bind and listen as twistd would (SO_REUSEADDR), then close at once; the error, or None."""
    with socket.socket(address.family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address.interface, address.port))
            sock.listen(1)
        except OSError as error:
            return error
    return None


def bind_problems(listen: dict[str, str]) -> tuple[list[str], list[str]]:
    """(problems, warnings) of a trial bind of every configured TCP listener.

    Not having the privilege for a port below 1024 is a warning only: the process that starts
    the server (root, or systemd's AmbientCapabilities) may well have it.
    """
    problems: list[str] = []
    warnings: list[str] = []
    for name, description in listen.items():
        address = address_of(description) if description else None
        if address is None or address.port == 0:
            continue
        error = try_bind(address)
        if error is None:
            continue
        text = line(name, description, reason(error, address.port, address.interface))
        if error.errno in (errno.EACCES, errno.EPERM):
            warnings.append(f"warning: {text}; not tried, the server must be started with it")
        else:
            problems.append(text)
    return problems, warnings


def daemon_running(state_dir: str) -> bool:
    """True while a daemon holds this state_dir's control lock (its own ports then look busy).

    An unreadable lock file counts as running: `check` then skips the trial binds rather than
    report the running server's own ports as taken.
    """
    path = control.socket_path(state_dir) + control.LOCK_SUFFIX
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


class ListenError(Exception):
    """A listener could not bind at start-up; the message is the whole story, in one line."""


def listen_error(path: str, name: str, description: str, error: Exception) -> ListenError:
    """The ListenError for a failed bind (a CannotListenError, whose socketError is the OSError)."""
    cause = getattr(error, "socketError", error)
    address = address_of(description)
    port = address.port if address else 0
    why = reason(cause, port, address.interface if address else "") if isinstance(cause, OSError) else str(cause)
    return ListenError(f"{path}: {line(name, description, why)}")


def print_listen_errors_plainly() -> None:
    """Make a ListenError that ends twistd print its one line, not a traceback.

    twistd lets an exception from privilegedStartService run out of the process (after telling
    a daemonizing parent through its status pipe), so the interpreter's excepthook is where the
    traceback is made. The real standard error is used: twistd points sys.stderr at its log.
    """
    previous = sys.excepthook

    def hook(kind, value, traceback) -> None:
        if isinstance(value, ListenError):
            print(value, file=sys.__stderr__)
        else:
            previous(kind, value, traceback)

    sys.excepthook = hook


def free_port(interface: str) -> int:
    """A port nobody listens on at `interface` right now (the kernel's choice)."""
    with socket.socket(_family(interface, socket.AF_INET), socket.SOCK_STREAM) as sock:
        sock.bind((interface, 0))
        return sock.getsockname()[1]
