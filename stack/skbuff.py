"""The skb of the TCP write and retransmit queues (``struct sk_buff`` + ``tcp_skb_cb``)."""

from __future__ import annotations

from .constants import SKB_TRUESIZE_EMPTY

# TCP_SKB_CB(skb)->sacked bits.
TCPCB_SACKED_ACKED = 0x01
TCPCB_SACKED_RETRANS = 0x02
TCPCB_LOST = 0x04
TCPCB_TAGBITS = 0x07
TCPCB_EVER_RETRANS = 0x80


class SkBuff:
    """One skb: a run of the byte stream plus the TCP control block.

    ``data`` holds the payload (a bytearray; linear and paged parts are not told
    apart because only their sum matters to the send path). ``truesize`` is what
    the socket is charged for it, as in the kernel.
    """

    __slots__ = (
        "seq", "end_seq", "tcp_flags", "sacked", "eor", "data", "truesize",
        "pcount", "gso_size", "first_tx", "tstamp", "retrans_stamp", "txstamp_ack", "clones",
        "tx_delivered",
    )

    def __init__(self, seq: int, tcp_flags: int = 0) -> None:
        self.seq = seq
        self.end_seq = seq
        self.tcp_flags = tcp_flags
        self.sacked = 0
        self.eor = False
        self.data = bytearray()
        self.truesize = SKB_TRUESIZE_EMPTY
        self.pcount = 0
        self.gso_size = 0
        self.first_tx = 0.0   # time of first transmission (skb_mstamp of the first send)
        self.tstamp = 0.0     # time of the latest transmission
        self.tx_delivered = -1  # tp.delivered at the latest transmission (-1: not to count)
        self.retrans_stamp = 0.0
        self.txstamp_ack = False
        self.clones = 0       # transmitted copies still in the qdisc/device (skb_fclone_busy)

    @property
    def len(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return (f"SkBuff(seq={self.seq}, end_seq={self.end_seq}, len={len(self.data)}, "
                f"flags={self.tcp_flags:#x}, pcount={self.pcount}, eor={self.eor})")
