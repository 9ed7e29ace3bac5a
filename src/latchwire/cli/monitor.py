"""``latchwire monitor``: rtnetlink changes as they happen, as ``ip monitor`` prints them.

Links are named as ip names them: from the link dump made at the start, kept up
to date by link events, and, for an index not seen yet (a bridge's FDB entry
arrives before its link's RTM_NEWLINK), by asking the kernel.
"""

from __future__ import annotations

import argparse
import json
import sys

from latchwire import ipjson, rtnl
from latchwire.cli.ip import link_names

# The object words monitor takes, and the rtnetlink groups each joins.
GROUPS = {"link": ("link",), "addr": ("ipv4_addr", "ipv6_addr"),
          "route": ("ipv4_route", "ipv6_route"), "neigh": ("neigh",)}
_KINDS = {rtnl.Link: "link", rtnl.Address: "addr", rtnl.Neighbour: "neigh"}


def run(args: argparse.Namespace) -> int:
    objects = args.objects or ["link", "addr", "route"]
    unknown = sorted(set(objects) - GROUPS.keys())
    if unknown:
        raise ValueError(f"monitor: unknown objects {unknown}; choose from {sorted(GROUPS)}")
    groups = [group for obj in objects for group in GROUPS[obj]]
    out = sys.stdout.buffer
    with rtnl.Route(args.netns) as ip:
        links = ip.links()
        names = link_names(ip, links)
        flags = {link.index: link.flags for link in links}
        routes = ipjson.route_format(names, args.json)
        for event in ip.events(groups, resync=True):
            if isinstance(event, rtnl.Resync):
                counts = {"added": event.added, "changed": event.changed,
                          "removed": event.removed}
                line = (json.dumps({"resync": counts}) if args.json else
                        "Resync: notifications were lost; differences follow "
                        f"({event.added} added, {event.changed} changed, "
                        f"{event.removed} removed)")
                out.write(line.encode() + b"\n")
            elif isinstance(event, rtnl.RouteEntry):
                out.write(routes.render([event]) + (b"\n" if args.json else b""))
            else:
                if isinstance(event, rtnl.Link):
                    if event.deleted:
                        names.pop(event.index, None)
                        flags.pop(event.index, None)
                    else:
                        names[event.index] = event.name
                        flags[event.index] = event.flags
                entry = ipjson.record_json(event, names, flags)
                line = (json.dumps(entry, separators=(",", ":")) if args.json
                        else ipjson.text(_KINDS[type(event)], entry))
                out.write(line.encode(errors="surrogateescape") + b"\n")
            out.flush()
    return 0
