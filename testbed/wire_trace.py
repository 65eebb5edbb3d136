"""A decision trace built from what can be seen: the application's writes and the wire.

For a ``linux`` host in the emulated backend the kernel's send path cannot be traced, but the
application's calls (``FlowRecord.writes``) and the link's pcap can. ``timeline_from_wire``
turns them into events in the schema of ``stack.trace`` (so ``sendlab trace`` and
``testbed.tsg`` read them), with everything that only the kernel knows left null or
``"unknown"`` rather than guessed:

    every event  t, kind, sock (0), conn "saddr:sport-daddr:dport", and the sequence state
                 as seen (relative to the ISS from the sender's SYN, as in stack.trace):
                 snd_una   the highest ACK from the receiver so far
                 snd_nxt   the highest sequence the sender has put on the wire so far
                 write_seq 1 + the stream offset of the writes returned so far (at least
                           snd_nxt; one more once the FIN was seen, as the kernel counts it)
                 cwnd, in_flight  null (unknown)
    call         call "tcp_sendmsg", size (bytes the write took), seq and end (its bytes'
                 relative range); at the time the write returned, so write_seq already
                 includes it; flags null (not recorded)
    hold         reason "unknown", queue "write", seq, len, until: bytes of one write that
                 waited, from the write's time until the first segment carrying them left
                 (``until``, on the same clock; null if they never left in the capture).
                 One event per run of the write's bytes that left together; none if they
                 left at once
    xmit         seq, len, flags, segs (1: one captured frame; a GSO super-packet captured
                 before segmentation shows as one xmit of its full length), retrans (the
                 range starts below the highest sequence sent before: the stack's rule),
                 ack (relative to the receiver's ISS; null without the ACK flag); for every
                 segment the sender put on the wire (SYN, pure ACKs and FIN included)
    ack          ack, acked (bytes newly acknowledged), win (scaled by the window scale the
                 SYN-ACK announced, when the SYN offered one too; unscaled on a SYN), wnd_end,
                 sack (number of SACK blocks): every segment from the receiver with ACK set
                 (not RSTs)
    icmp         type, code, mtu (next-hop MTU of a fragmentation-needed, else null),
                 quoted_seq, verdict "unknown" (what the kernel did with it is not seen):
                 ICMP errors to the sender quoting a segment of this connection

Not emitted, because the wire does not show them: skb_new, skb_append, send, timer,
mss_change, mtu_probe*, state. Times are the capture point's: an ACK's time is when it
crossed the captured link, not when the sender processed it.

``held_s_unknown(events)`` is the time (seconds) during which some written byte was waiting to
be sent: the union of the hold spans, so overlapping waits count once, as the stack's
head-of-queue spans do. A kernel flow's summary carries it as ``held_s_by_reason =
{"unknown": x}``.
"""

from __future__ import annotations

import bisect
import dpkt

from stack.debug import flags_str
from stack.trace import held_s_by_reason, held_spans
from stack.wire import (
    ICMP_DEST_UNREACH, ICMP_PARAMETERPROB, ICMP_REDIRECT, ICMP_SOURCE_QUENCH,
    ICMP_TIME_EXCEEDED, IPPROTO_ICMP, IPPROTO_TCP, TCPHDR_ACK, TCPHDR_FIN, TCPHDR_RST,
    TCPHDR_SYN, TCPOPT_SACK, TCPOPT_WINDOW, MalformedPacket, decode_icmp, decode_ipv4_header,
    decode_tcp, ip_to_bytes, quoted_tcp_ports_seq,
)

UNKNOWN = "unknown"
_ICMP_ERRORS = (ICMP_DEST_UNREACH, ICMP_SOURCE_QUENCH, ICMP_REDIRECT, ICMP_TIME_EXCEEDED,
                ICMP_PARAMETERPROB)
_DLT_NULL, _DLT_EN10MB, _DLT_RAW, _DLT_LINUX_SLL, _DLT_LINUX_SLL2 = 0, 1, 101, 113, 276
_RAW_DLTS = (_DLT_RAW, 12, 14)
_ORDER_CALL, _ORDER_HOLD, _ORDER_WIRE = 0, 1, 2   # at one instant: the write, then the wire
_SAME_INSTANT_S = 1e-9                            # a pcap's nanosecond resolution


def _rel(seq: int, base: int) -> int:
    """seq relative to base, signed (as stack.trace)."""
    return ((seq - base + 0x80000000) & 0xFFFFFFFF) - 0x80000000


# --- reading the capture --------------------------------------------------------------------

def _ip_of(frame: bytes, dlt: int):
    """The IPv4 packet inside a captured frame, or None."""
    if dlt == _DLT_EN10MB:
        off, ethertype = 12, None
        while len(frame) >= off + 2:
            ethertype = int.from_bytes(frame[off:off + 2], "big")
            if ethertype in (0x8100, 0x88A8):     # VLAN tags
                off += 4
                continue
            break
        return frame[off + 2:] if ethertype == 0x0800 else None
    if dlt in _RAW_DLTS:
        return frame if frame[:1] and frame[0] >> 4 == 4 else None
    if dlt == _DLT_LINUX_SLL:
        return frame[16:] if frame[14:16] == b"\x08\x00" else None
    if dlt == _DLT_LINUX_SLL2:
        return frame[20:] if frame[0:2] == b"\x08\x00" else None
    if dlt == _DLT_NULL:
        return frame[4:] if frame[:4] in (b"\x02\x00\x00\x00", b"\x00\x00\x00\x02") else None
    return None


def read_frames(pcap_path) -> list[tuple[float, bytes]]:
    """(timestamp, IPv4 packet) for each IPv4 frame of a pcap or pcapng file, in file order."""
    out = []
    with open(pcap_path, "rb") as fh:
        magic = fh.read(4)
        fh.seek(0)
        reader = (dpkt.pcapng.Reader(fh) if magic == b"\x0a\x0d\x0d\x0a"
                  else dpkt.pcap.Reader(fh))
        dlt = reader.datalink()
        try:
            for ts, frame in reader:
                ip = _ip_of(bytes(frame), dlt)
                if ip is not None:
                    out.append((float(ts), ip))
        except dpkt.dpkt.NeedData:      # a capture cut short (tcpdump killed mid-write)
            pass
    return out


def _parse(ip: bytes):
    """("tcp", iphdr, tcphdr, payload_len) / ("icmp", iphdr, msg) / None."""
    try:
        hdr = decode_ipv4_header(ip)
    except MalformedPacket:
        return None
    if hdr.frag_offset:
        return None
    hlen = hdr.header_length
    total = hdr.total_length or len(ip)       # 0: a TSO super-packet captured before the NIC
    body = ip[hlen:min(total, len(ip))]
    try:
        if hdr.protocol == IPPROTO_TCP:
            tcp, _ = decode_tcp(body[:60] if len(body) > 60 else body)
            return "tcp", hdr, tcp, max(0, total - hlen - tcp.header_length)
        if hdr.protocol == IPPROTO_ICMP:
            return "icmp", hdr, decode_icmp(body, verify_checksum=False)
    except MalformedPacket:
        return None
    return None


def _option(tcp, kind):
    for k, value in tcp.options:
        if k == kind:
            return value
    return None


# --- the timeline ---------------------------------------------------------------------------

def timeline_from_wire(pcap_path, sender_addr: str, sender_port: int | None, receiver_addr: str,
                       receiver_port: int, writes, t0: float = 0.0) -> list[dict]:
    """The events of one connection as the wire and the application's writes show them.

    ``pcap_path``: a capture of a link the connection crosses (both directions). The sender is
    ``sender_addr:sender_port`` (None: the one port that sent a SYN to the receiver in the
    capture). ``writes``: ``FlowRecord.writes``, ``[(time, stream offset after the write)]``,
    on the timeline's clock. ``t0``: the capture timestamp of that clock's zero (0.0 when the
    pcap already uses it, as the sim's do); every packet's time is ``ts - t0``.

    Raises ValueError if the capture holds no SYN of the connection (sequence numbers could not
    be made relative to the ISS).
    """
    s_ip, r_ip = ip_to_bytes(sender_addr), ip_to_bytes(receiver_addr)
    packets = []                      # (t, "out"|"in"|"icmp", parsed...)
    for ts, ip in read_frames(pcap_path):
        p = _parse(ip)
        if p is None:
            continue
        hdr = p[1]
        if p[0] == "tcp":
            tcp = p[2]
            if hdr.src == s_ip and hdr.dst == r_ip and tcp.dport == receiver_port:
                packets.append((ts - t0, "out", tcp, p[3]))
            elif hdr.src == r_ip and hdr.dst == s_ip and tcp.sport == receiver_port:
                packets.append((ts - t0, "in", tcp, p[3]))
        elif hdr.dst == s_ip and p[2].type in _ICMP_ERRORS:
            msg = p[2]
            q = msg.quoted_ip_header
            if q is None or q.src != s_ip or q.dst != r_ip:
                continue
            try:
                sport, dport, qseq = quoted_tcp_ports_seq(msg)
            except MalformedPacket:
                continue
            if dport == receiver_port:
                packets.append((ts - t0, "icmp", msg, (sport, qseq)))

    if sender_port is None:
        ports = {p[2].sport for p in packets
                 if p[1] == "out" and p[2].flags & TCPHDR_SYN and not p[2].flags & TCPHDR_ACK}
        if len(ports) != 1:
            raise ValueError(f"{pcap_path}: {len(ports)} connections from {sender_addr} to "
                             f"{receiver_addr}:{receiver_port}; give sender_port")
        sender_port = ports.pop()
    mine = []
    for p in packets:
        port = p[3][0] if p[1] == "icmp" else (p[2].sport if p[1] == "out" else p[2].dport)
        if port == sender_port:
            mine.append(p)
    mine.sort(key=lambda p: p[0])     # stable: file order at one instant

    # The connection: the sender's first SYN; a SYN with another ISS later starts another one.
    syn = next((p for p in mine if p[1] == "out" and p[2].flags & TCPHDR_SYN
                and not p[2].flags & TCPHDR_ACK), None)
    conn = f"{sender_addr}:{sender_port}-{receiver_addr}:{receiver_port}"
    if syn is None:
        raise ValueError(f"{pcap_path}: no SYN of {conn} in the capture")
    iss = syn[2].seq
    start = mine.index(syn)
    mine = mine[start:]
    for i, p in enumerate(mine):
        if p[1] == "out" and p[2].flags & TCPHDR_SYN and p[2].seq != iss:
            mine = mine[:i]
            break
    synack = next((p for p in mine if p[1] == "in" and p[2].flags & TCPHDR_SYN
                   and p[2].flags & TCPHDR_ACK), None)
    irs = synack[2].seq if synack is not None else None
    ws_offered = _option(syn[2], TCPOPT_WINDOW)
    ws_peer = _option(synack[2], TCPOPT_WINDOW) if synack is not None else None
    snd_wscale = min(ws_peer, 14) if ws_offered is not None and ws_peer is not None else 0

    # When each byte first left: (start, end, t) runs of new data, in sequence order.
    first_sent: list[tuple[int, int, float]] = []
    high = 1
    for p in mine:
        if p[1] != "out":
            continue
        tcp, length = p[2], p[3]
        if not length:
            continue
        seq = _rel(tcp.seq, iss)
        end = seq + length
        if end > high:
            first_sent.append((max(seq, high), end, p[0]))
            high = end
    starts = [r[0] for r in first_sent]

    # Everything that happened, in time order: writes first at one instant, then the wire.
    items = []
    prev = 0
    for n, (tw, off) in enumerate(writes):
        a, b = prev + 1, off + 1
        items.append((tw, _ORDER_CALL, n, "call", (a, b)))
        for seq, end, until in _waits(a, b, tw, first_sent, starts):
            items.append((tw, _ORDER_HOLD, n, "hold", (seq, end, until)))
        prev = max(prev, off)
    for n, p in enumerate(mine):
        items.append((p[0], _ORDER_WIRE, n, p[1], p[2:]))
    # (capture timestamps and write times may differ in the last bits for one instant)
    items.sort(key=lambda it: (round(it[0], 9), it[1], it[2]))

    events = []
    una = nxt = wseq = 0
    syn_seen = False
    for t, _, _, tag, item in items:
        ev = {"t": t, "kind": None, "sock": 0, "conn": conn, "snd_una": una, "snd_nxt": nxt,
              "write_seq": wseq, "cwnd": None, "in_flight": None}
        if tag == "call":
            a, b = item
            wseq = max(wseq, b)
            ev.update(kind="call", write_seq=wseq, call="tcp_sendmsg", size=b - a, flags=None,
                      seq=a, end=b)
        elif tag == "hold":
            seq, end, until = item
            ev.update(kind="hold", reason=UNKNOWN, queue="write", seq=seq, len=end - seq,
                      until=until)
        elif tag == "out":
            tcp, length = item
            flags = tcp.flags
            seq = _rel(tcp.seq, iss)
            if flags & TCPHDR_SYN:
                retrans = syn_seen
                syn_seen = True
            elif length or flags & TCPHDR_FIN:
                retrans = seq < nxt         # the stack's rule: below what was sent before
            else:
                retrans = False
            ack = _rel(tcp.ack_seq, irs) if flags & TCPHDR_ACK and irs is not None else None
            ev.update(kind="xmit", seq=seq, len=length, flags=flags_str(flags), segs=1,
                      retrans=retrans, ack=ack)
            end = seq + length + bool(flags & TCPHDR_SYN) + bool(flags & TCPHDR_FIN)
            nxt = max(nxt, end)
            wseq = max(wseq, nxt)
        elif tag == "in":
            tcp = item[0]
            if not tcp.flags & TCPHDR_ACK or tcp.flags & TCPHDR_RST:
                continue
            ack = _rel(tcp.ack_seq, iss)
            win = tcp.window if tcp.flags & TCPHDR_SYN else tcp.window << snd_wscale
            sack = _option(tcp, TCPOPT_SACK)
            ev.update(kind="ack", ack=ack, acked=max(0, ack - una), win=win, wnd_end=ack + win,
                      sack=len(sack) if sack else 0)
            una = max(una, ack)
        else:                               # icmp
            msg, (_, qseq) = item
            ev.update(kind="icmp", type=msg.type, code=msg.code, mtu=msg.mtu,
                      quoted_seq=_rel(qseq, iss), verdict=UNKNOWN)
        events.append(ev)
    return events


def _waits(a: int, b: int, tw: float, first_sent, starts):
    """The runs of [a, b) that left together, with when, for those that left after tw
    (until None: never left)."""
    out = []
    pos = a
    i = max(0, bisect.bisect_right(starts, a) - 1)
    while pos < b:
        if i < len(first_sent) and first_sent[i][1] <= pos:
            i += 1
            continue
        if i >= len(first_sent) or first_sent[i][0] > pos:
            nxt = b if i >= len(first_sent) else min(b, first_sent[i][0])
            run = (pos, nxt, None)          # never sent as new data
        else:
            s, e, t = first_sent[i]
            run = (pos, min(b, e), t)
            i += 1
        if out and out[-1][2] == run[2] and out[-1][1] == run[0]:
            out[-1] = (out[-1][0], run[1], run[2])
        else:
            out.append(run)
        pos = run[1]
    return [r for r in out if r[2] is None or r[2] > tw + _SAME_INSTANT_S]


# --- why (unknown) bytes waited ---------------------------------------------------------------

def is_wire_built(events) -> bool:
    """A timeline from timeline_from_wire (cwnd unknown), rather than the stack's own trace."""
    return any(ev.get("cwnd", 0) is None for ev in events if "cwnd" in ev)


def wire_spans(events, end_t: float | None = None) -> list[dict]:
    """The spans of a wire-built timeline during which written bytes waited, in the shape of
    ``stack.trace.held_spans``: reason "unknown", start (the write), end (the first segment
    carrying them left; else ``end_t``, default the last event's time), seq, upto (the end of
    the waiting bytes), released_by ("sent", or "end" if they never left)."""
    last = max((ev["t"] for ev in events), default=0.0)
    end = last if end_t is None else max(end_t, last)
    spans = []
    for ev in events:
        if ev["kind"] != "hold" or ev.get("reason") != UNKNOWN:
            continue
        until = ev.get("until")
        stop = until if until is not None else end
        if stop > ev["t"]:
            spans.append({"reason": UNKNOWN, "start": ev["t"], "end": stop, "seq": ev["seq"],
                          "upto": ev["seq"] + ev["len"],
                          "released_by": "sent" if until is not None else "end"})
    spans.sort(key=lambda s: (s["start"], s["end"], s["seq"]))
    return spans


def held_s_unknown(events, end_t: float | None = None) -> float:
    """Seconds during which some written byte waited to be sent (reasons unknown): the union
    of ``wire_spans``, so waits that overlap in time count once."""
    total = 0.0
    cur_start = cur_end = None
    for span in sorted(wire_spans(events, end_t), key=lambda s: s["start"]):
        if cur_end is None or span["start"] > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = span["start"], span["end"]
        else:
            cur_end = max(cur_end, span["end"])
    if cur_end is not None:
        total += cur_end - cur_start
    return round(total, 9)


def spans_of(events, end_t: float | None = None) -> list[dict]:
    """held spans of either kind of timeline (stack trace or wire-built)."""
    if is_wire_built(events):
        return wire_spans(events, end_t)
    return held_spans(events, end_t)


def held_by_reason(events, end_t: float | None = None) -> dict:
    """``held_s_by_reason`` of either kind of timeline: {"unknown": s} for a wire-built one."""
    if is_wire_built(events):
        return {UNKNOWN: held_s_unknown(events, end_t)}
    return held_s_by_reason(events, end_t)

