"""``latchwire monitor``: rtnetlink changes as they happen, as ``ip monitor`` prints them."""

from __future__ import annotations

import argparse
import json

from latchwire import ipjson, rtnl
from latchwire.cli.ip import names_of

# The object words monitor takes, and the rtnetlink groups each joins.
GROUPS = {"link": ("link",), "addr": ("ipv4_addr", "ipv6_addr"),
          "route": ("ipv4_route", "ipv6_route"), "neigh": ("neigh",)}


def run(args: argparse.Namespace) -> int:
    objects = args.objects or ["link", "addr", "route"]
    unknown = sorted(set(objects) - GROUPS.keys())
    if unknown:
        raise ValueError(f"monitor: unknown objects {unknown}; choose from {sorted(GROUPS)}")
    groups = [group for obj in objects for group in GROUPS[obj]]
    with rtnl.Route(args.netns) as ip:
        names, flags = names_of(ip.links())
        for event in ip.events(groups, resync=True):
            if isinstance(event, rtnl.Resync):
                counts = {"added": event.added, "changed": event.changed,
                          "removed": event.removed}
                print(json.dumps({"resync": counts}) if args.json else
                      "Resync: notifications were lost; differences follow "
                      f"({event.added} added, {event.changed} changed, {event.removed} removed)",
                      flush=True)
                continue
            if isinstance(event, rtnl.Link):
                if event.deleted:
                    names.pop(event.index, None)
                    flags.pop(event.index, None)
                else:
                    names[event.index] = event.name
                    flags[event.index] = event.flags
            entry = ipjson.record_json(event, names, flags)
            print(json.dumps(entry) if args.json else ipjson.text(_kind_of(event), entry),
                  flush=True)
    return 0


def _kind_of(record: rtnl.Record) -> str:
    return {rtnl.Link: "link", rtnl.Address: "addr", rtnl.RouteEntry: "route",
            rtnl.Neighbour: "neigh"}[type(record)]
