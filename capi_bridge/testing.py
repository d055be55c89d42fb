"""A fake Graph API: a real HTTP server on loopback that answers ``/{pixel_id}/events`` like Meta.

Tests, the demo and the benchmarks point capi-bridge, and Meta's own SDK, at it; nothing ever
reaches Meta. It enforces what Meta enforces (pixel-capi.md §2-§3: whole-batch rejection, the
7-day window, hashed customer information, too-broad matching keys, unknown keys, 1000 events)
and deliberately does not import ``capi_bridge.validation``: a bug in our own guard must not be
mirrored here, or the fake would agree with it. Faults (5xx, 429, slow answers, dropped
connections, any Graph code) are queued through :meth:`FakeGraph.add_fault` or ``/_fake/faults``.
``GET /fbevents.js`` answers with ``static/fbevents-stub.js``, Meta's pixel library stand-in, so
a page runs its ``fbq`` calls without internet (:attr:`FakeGraph.pixel_script_url`). Every answer
carries a ``Date`` header, as Meta's do; :attr:`FakeGraph.clock_skew` sets its clock apart from
this machine's (Date, and the event-time rules), as a server with a wrong clock would see Meta.
Production code never imports this module.

This module is the fake's public face; its parts live in private modules, one idea each:
:mod:`~capi_bridge._fake_graph` (the state tests read, and the checks that need it),
:mod:`~capi_bridge._fake_graph_http` (the wire), :mod:`~capi_bridge._fake_graph_record` (what is
kept of a request), :mod:`~capi_bridge._fake_graph_cli` (the ``fake-graph`` command) and
:mod:`capi_bridge.fake_rules` (Meta's rules for a body). Import from here, not from them.
"""

from __future__ import annotations

from capi_bridge._fake_graph import FakeGraph
from capi_bridge._fake_graph_cli import serve_forever
from capi_bridge._fake_graph_http import PIXEL_SCRIPT_PATHS
from capi_bridge.fake_rules import Fault  # what FakeGraph.add_fault returns

__all__ = ["PIXEL_SCRIPT_PATHS", "FakeGraph", "Fault", "serve_forever"]
