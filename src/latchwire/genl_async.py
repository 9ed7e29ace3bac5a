"""Generic netlink's nlctrl, awaited: ``resolve`` and ``families`` on the event loop.

The requests and the replies' decoding are genl's own; only the waiting differs:
the answers are read through a ``netlink_async.AsyncSocket``, so loops,
cancellation and the one-task rule are netlink_async's (asyncio, anyio, trio;
a call cancelled at any await leaves no half-read channel, no thread and no
descriptor behind).
"""

from __future__ import annotations

from latchwire import genl, netlink
from latchwire.errors import NetlinkError
from latchwire.genl import Family
from latchwire.netlink_async import AsyncSocket

__all__ = ["families", "resolve"]


def _generic_socket(netns: str | int | None, sock: AsyncSocket | None) -> AsyncSocket:
    """sock, checked as genl checks a blocking one, or a new one in netns."""
    if sock is None:
        return AsyncSocket(netlink.NETLINK_GENERIC, netns=netns)
    genl._generic_socket(netns, sock.socket)  # its checks: the protocol, no netns beside it
    return sock


async def resolve(name: str, netns: str | int | None = None, sock: AsyncSocket | None = None,
                  timeout: float | None = None) -> Family:
    """``genl.resolve``, awaited: the family called name, from nlctrl, asked through
    sock (a NETLINK_GENERIC ``AsyncSocket``, left open) or a socket made for the
    call in netns and closed after; the same errors."""
    own = _generic_socket(netns, sock)
    try:
        reply = await own.transact(genl._resolve_request(name), timeout)
    except NetlinkError as err:
        raise genl._resolve_error(name, err) from None
    finally:
        if own is not sock:
            own.close()
    return genl._resolved(name, reply)


async def families(netns: str | int | None = None, sock: AsyncSocket | None = None,
                   timeout: float | None = None) -> list[Family]:
    """``genl.families``, awaited: every family the kernel shows, in nlctrl's order,
    the dump read whole and repeated if the kernel flags it inconsistent."""
    own = _generic_socket(netns, sock)
    try:
        messages = await own.dump(genl._families_request(), retries=3, timeout=timeout).all()
        return [Family.from_message(msg) for msg in messages]
    finally:
        if own is not sock:
            own.close()
