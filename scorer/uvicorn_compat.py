"""The one module that reaches into uvicorn's HTTP protocol, for the uvicorn releases this project checked.

uvicorn times out an idle keep-alive connection, but not a connection that never sends a request or sends its
headers a byte at a time: each would hold a socket (and its buffers) for as long as the peer likes. The
protocol below closes a connection whose request headers are not complete ``header_timeout_s`` after its first
byte (or after it opened). Bodies are timed in the service's own ASGI gate, which needs no private API.
"""

from __future__ import annotations

import asyncio

from harness.errors import UserError

CHECKED = ("0.50", "1.0")  # [low, high): releases whose H11Protocol has the members used here
OVERRIDDEN = ("connection_made", "data_received", "connection_lost")  # besides the instance's conn and transport


def check_version() -> str:
    import uvicorn
    from packaging.version import Version
    from uvicorn.protocols.http.h11_impl import H11Protocol

    version = str(uvicorn.__version__)
    low, high = map(Version, CHECKED)
    missing = [name for name in OVERRIDDEN if not hasattr(H11Protocol, name)]
    if not low <= Version(version) < high or missing:
        raise UserError(f"uvicorn {version} is not a release scorer/uvicorn_compat.py was checked against "
                        f"({CHECKED[0]} to below {CHECKED[1]}{'; it lacks ' + ', '.join(missing) if missing else ''}); "
                        "install the pinned one (make setup)")
    return version


def header_timeout_protocol(header_timeout_s: float) -> type:
    """uvicorn's h11 protocol, closing a connection whose request headers take longer than ``header_timeout_s``."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    check_version()

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:  # a request begun, headers not complete: the clock runs
                self._arm()                       # from its first byte, not from each one
            else:
                self._disarm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = asyncio.get_running_loop().call_later(header_timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol
