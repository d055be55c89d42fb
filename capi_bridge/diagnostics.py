"""``capi-bridge diagnostics`` and the inspector's diagnostics: the report as text.

The figures themselves (what each one means, the match-quality weights and their sources) are
in :mod:`capi_bridge.delivery.report`; the store computes them from what capi-bridge observed.
"""

from __future__ import annotations

from capi_bridge.delivery.report import (
    EMQ_METHOD,
    EMQ_SOURCE,
    EMQ_WEIGHTS,
    FBC_BUCKETS,
    Diagnostics,
    EventDiagnostics,
    compute,
)

__all__ = [
    "EMQ_METHOD",
    "EMQ_SOURCE",
    "EMQ_WEIGHTS",
    "FBC_BUCKETS",
    "Diagnostics",
    "EventDiagnostics",
    "compute",
    "format_text",
]


def format_text(diagnostics: Diagnostics) -> str:
    """The report ``capi-bridge diagnostics`` prints."""
    hours = diagnostics.window / 3600
    lines = [f"capi-bridge diagnostics: last {hours:g} h, outbox {diagnostics.path}"]
    if not diagnostics.events:
        lines.append("  no events observed in this window")
    for e in diagnostics.events:
        data = e.as_dict()
        coverage = data["dedup"]["coverage"]
        seen = e.browser_copies + e.not_mirrored
        cover = (
            f"{coverage:.0%} ({e.deduplicated} of {seen} with a browser copy have"
            f" a server copy; {e.not_mirrored} not mirrored)"
            if coverage is not None
            else "no browser copies"
        )
        emq = e.emq_estimate
        lines.append(f"{e.event_name}: {e.count} events, {e.server_copies} server copies")
        lines.append(f"  dedup coverage   {cover}; {e.server_only} server-only")
        lines.append(f"  match quality    {'-' if emq is None else f'{emq:.1f}/10'} (estimate)")
        shares = "  ".join(f"{k} {v:.0%}" for k, v in e.key_share.items())
        lines.append(f"  match keys       {shares}")
        if e.fbc_ages:
            median = data["fbc_age"]["median"]
            lines.append(f"  fbc age          median {median / 3600:.1f} h over {len(e.fbc_ages)}")
        if e.pixel_loaded_reported:
            lines.append(
                f"  pixel library    loaded in {e.pixel_loaded} of {e.pixel_loaded_reported}"
                " browsers that mirrored"
            )
        for r in e.refused:
            codes = "/".join(str(c) for c in (r.get("code"), r.get("subcode")) if c is not None)
            lines.append(
                f"  refused          {r['count']} x {r['reason']}"
                + (f" (code {codes})" if codes else "")
                + f": {r['message'] or '-'}"
            )
        for i in e.ignored:
            detail = f" ({i['detail']})" if i["detail"] else ""
            lines.append(f"  not mirrored     {i['count']} x {i['meaning']}{detail}")
        for d in e.dropped:
            lines.append(f"  dropped          {d['count']} x {d['message']}")
    weights = ", ".join(f"{k} {w}" for k, w in EMQ_WEIGHTS.items())
    lines.append("")
    lines.append(f"Match quality is an estimate: {EMQ_METHOD}")
    lines.append(f"  weights: {weights}")
    lines.append(f"  source: {EMQ_SOURCE}")
    lines.append(
        "Dedup coverage: events with a browser copy (pixel call mirrored by capi-bridge.js, or "
        "a pixel twin) that also have a server copy with the same name and id."
    )
    return "\n".join(lines)
