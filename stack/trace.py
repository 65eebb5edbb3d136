"""Structured events of the send path: what the application asked, and why bytes waited.

A Host calls its tracer only when one is attached (``host.tracer``); with none
attached the hooks cost one attribute test. Each event carries the time, the
connection and its sequence state, so a timeline can be rebuilt from it.
"""

from __future__ import annotations

import json

from .constants import STATE_NAMES
from .debug import flags_str
from .seq import seq_sub


def _conn(tp) -> str:
    return f"{tp.saddr}:{tp.sport}-{tp.daddr}:{tp.dport}"


class Tracer:
    """Collects events in memory; ``write_jsonl`` saves them one JSON object per line."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def _base(self, tp, kind: str, now: float) -> dict:
        ev = {"t": round(now, 9), "kind": kind}
        if tp is not None:
            ev.update(conn=_conn(tp), snd_una=seq_sub(tp.snd_una, tp.iss),
                      snd_nxt=seq_sub(tp.snd_nxt, tp.iss), write_seq=seq_sub(tp.write_seq, tp.iss),
                      cwnd=tp.snd_cwnd, in_flight=tp.packets_in_flight())
        return ev

    def hold(self, tp, reason: str, skb, now: float) -> None:
        ev = self._base(tp, "hold", now)
        ev["reason"] = reason
        if skb is not None:
            ev.update(seq=seq_sub(skb.seq, tp.iss), len=len(skb.data))
        if reason == "nagle":
            ev["snd_sml"] = seq_sub(tp.snd_sml, tp.iss)
        elif reason == "autocork":
            ev["wmem_alloc"] = tp.wmem_alloc
        self.events.append(ev)

    def call(self, tp, call: str, args, now: float) -> None:
        ev = self._base(tp, "call", now)
        ev.update(call=call, args=[a if isinstance(a, (int, str)) else repr(a) for a in args])
        self.events.append(ev)

    def skb(self, tp, what: str, skb, now: float) -> None:
        ev = self._base(tp, what, now)
        ev["seq"] = seq_sub(skb.seq, tp.iss)
        self.events.append(ev)

    def state(self, tp, old: int, new: int, now: float) -> None:
        ev = self._base(tp, "state", now)
        ev.update(old=STATE_NAMES.get(old, old), new=STATE_NAMES.get(new, new))
        self.events.append(ev)

    def event(self, tp, kind: str, fields: dict, now: float) -> None:
        ev = self._base(tp, kind, now)
        ev.update(fields)
        self.events.append(ev)

    def segment(self, tp, seg, now: float) -> None:
        ev = self._base(tp, "xmit", now)
        iss = tp.iss if tp is not None else 0
        ev.update(seq=seq_sub(seg.seq, iss), len=len(seg.payload), flags=flags_str(seg.flags),
                  segs=seg.gso_segs)
        self.events.append(ev)

    def write_jsonl(self, path) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            for ev in self.events:
                fh.write(json.dumps(ev, sort_keys=True) + "\n")

    def held_time_by_reason(self) -> dict:
        """Count of hold decisions per reason (a first cut of 'why bytes waited')."""
        out: dict = {}
        for ev in self.events:
            if ev["kind"] == "hold":
                out[ev["reason"]] = out.get(ev["reason"], 0) + 1
        return out
