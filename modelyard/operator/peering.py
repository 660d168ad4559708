"""Whether kopf peering has paused this operator, from the peering object's status. Pure + one read.

kopf pauses its own watches while a live peer has a higher priority (or another live peer has the
same one) but does not expose that state; modelyard's resync loop must stand by too, or a standby
replica would reconcile from a stale cache. The rule below is kopf's (``process_peering_event``),
applied to the same ``status`` kopf writes: ``{identity: {priority, lastseen, lifetime}}``.
"""
from __future__ import annotations

import datetime as dt


def _alive(info: dict, now: dt.datetime) -> bool:
    try:
        seen = dt.datetime.fromisoformat(str(info.get("lastseen")).replace("Z", "+00:00"))
    except ValueError:
        return False
    if seen.tzinfo is None:
        seen = seen.replace(tzinfo=dt.timezone.utc)
    return seen + dt.timedelta(seconds=float(info.get("lifetime") or 60)) > now


def paused(status: dict | None, priority: int, now: dt.datetime | None = None) -> bool:
    """True when a live peer outranks us, or when another live peer has our priority."""
    now = now or dt.datetime.now(dt.timezone.utc)
    live = [info for info in (status or {}).values() if isinstance(info, dict) and _alive(info, now)]
    higher = [p for p in live if int(p.get("priority") or 0) > priority]
    same = [p for p in live if int(p.get("priority") or 0) == priority]
    return bool(higher) or len(same) > 1  # one of the same-priority entries is ourselves
