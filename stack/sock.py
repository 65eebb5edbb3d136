"""The TCP socket state: ``struct sock`` + ``inet_connection_sock`` + ``tcp_sock`` in one object.

Field names are the kernel's (without the ``icsk_``/``sk_`` prefixes where Python
needs no namespace). Behaviour lives in the modules named after the kernel's
files: tcp.py, tcp_output.py, tcp_input.py, tcp_timer.py, tcp_ipv4.py.
"""

from __future__ import annotations

from collections import deque

from .constants import (
    TCP_CA_Open, TCP_CLOSE, TCP_INFINITE_SSTHRESH, TCP_INIT_CWND, TCP_MSS_DEFAULT,
    TCP_TIMEOUT_INIT_MS, TCP_RTO_MIN_MS, IP_PMTUDISC_DONT, IP_PMTUDISC_WANT,
)
from .jiffies import msecs_to_jiffies


class TcpSock:
    def __init__(self, host) -> None:
        self.host = host
        self.sysctl = host.sysctl
        self.state = TCP_CLOSE
        self.saddr = host.addr
        self.daddr = ""
        self.sport = 0
        self.dport = 0
        self.parent = None          # listener of a passive child
        self.accept_queue: deque = deque()
        self.backlog = 0
        self.reuseaddr = False
        self.nonblock = False
        self.sk_err = 0
        self.sk_err_soft = 0
        self.shutdown = 0           # sk_shutdown bits
        self.done = False           # SOCK_DONE
        self.dead = False           # SOCK_DEAD: closed by the application
        self.name = ""

        # Send sequence space.
        self.iss = 0
        self.write_seq = 0
        self.snd_una = 0
        self.snd_nxt = 0
        self.pushed_seq = 0
        self.snd_sml = 0
        self.snd_wl1 = 0
        self.snd_wnd = 0
        self.max_window = 0
        self.snd_wscale = 0
        self.nonagle = 0
        self.urg_mode = False

        # Receive sequence space.
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_wup = 0
        self.rcv_wnd = 0
        self.rcv_wscale = 0
        self.rcv_ssthresh = 0
        self.window_clamp = 0
        self.copied_seq = 0
        self.rcv_mss = TCP_MSS_DEFAULT
        self.receive_queue = bytearray()
        self.ooo_queue: list = []   # [(seq, end_seq, bytes, fin)] sorted by seq
        self.selective_acks: list = []

        # MSS and MTU.
        self.mss_cache = TCP_MSS_DEFAULT
        self.advmss = TCP_MSS_DEFAULT
        self.mss_clamp = TCP_MSS_DEFAULT  # rx_opt.mss_clamp: the peer's MSS, or TCP_MAXSEG
        self.user_mss = 0
        self.pmtu_cookie = 0        # icsk_pmtu_cookie: the PMTU mss_cache was computed for
        self.tcp_header_len = 20
        self.ext_header_len = 0
        self.gso_segs = 0           # tp->gso_segs cached by tcp_xmit_size_goal
        self.mtu_info = 0
        # IP_MTU_DISCOVER (inet->pmtudisc): ip_no_pmtu_disc makes new sockets never set DF.
        self.pmtudisc = IP_PMTUDISC_DONT if host.sysctl.ip_no_pmtu_disc else IP_PMTUDISC_WANT
        # Path-MTU probing (icsk_mtup); filled by tcp_mtup_init.
        self.mtup_enabled = False
        self.mtup_probe_size = 0
        self.mtup_search_low = 0
        self.mtup_search_high = 0
        self.mtup_probe_timestamp = 0.0

        # Options negotiated.
        self.tstamp_ok = False
        self.sack_ok = False
        self.wscale_ok = False
        self.ts_recent = 0
        self.ts_recent_stamp = 0.0
        self.rcv_tsval = 0
        self.rcv_tsecr = 0
        self.saw_tstamp = False
        self.ts_offset = 0

        # Memory accounting.
        self.sndbuf = self.sysctl.tcp_wmem[1]
        self.rcvbuf = self.sysctl.tcp_rmem[1]
        self.userlocks_sndbuf = False
        self.userlocks_rcvbuf = False
        self.wmem_queued = 0
        self.wmem_alloc = 1         # sk_wmem_alloc starts at one reference
        self.notsent_lowat = 0
        self.nospace = False        # SOCK_NOSPACE
        self.tsq_throttled = False  # TSQ_THROTTLED
        self.tsq_queued = False     # TSQ_QUEUED

        # Queues: unsent data (sk_write_queue) and sent, unacked data (tcp_rtx_queue).
        self.write_queue: deque = deque()
        self.rtx_queue: deque = deque()
        self.tsorted: dict = {}     # sent skbs in transmit order (tsorted_sent_queue), for RACK

        # Congestion control.
        self.snd_cwnd = TCP_INIT_CWND
        self.snd_ssthresh = TCP_INFINITE_SSTHRESH
        self.snd_cwnd_cnt = 0
        self.snd_cwnd_clamp = 0xFFFFFFFF
        self.snd_cwnd_stamp = 0
        self.snd_cwnd_used = 0
        self.prior_cwnd = 0
        self.prior_ssthresh = 0
        self.is_cwnd_limited = False
        self.max_packets_out = 0
        self.cwnd_usage_seq = 0
        self.ca_state = TCP_CA_Open
        self.ca_ops = None
        self.ca_priv: dict = {}
        self.packets_out = 0
        self.retrans_out = 0
        self.sacked_out = 0
        self.lost_out = 0
        self.high_seq = 0
        self.undo_marker = 0
        self.frto = False           # F-RTO (RFC 5682) is judging the current RTO
        self.undo_retrans = 0
        self.delivered = 0
        self.lost = 0
        self.pacing_rate = float("inf")   # bytes per second; ~0UL until the first RTT sample
        self.pacing_shift = 10
        self.lsndtime = 0
        self.tcp_wstamp = 0.0
        self.tcp_clock = 0.0
        self.reordering = self.sysctl.tcp_reordering
        self.highest_sack = None
        self.rack_mstamp = 0.0      # RACK: send time of the latest-sent delivered skb
        self.rack_rtt_us = 0
        self.rack_end_seq = 0
        self.rack_advanced = False
        self.rack_reo_wnd_steps = 1
        self.rack_reo_wnd_persist = 0   # recoveries the widened window is kept for
        self.rack_dsack_seen = False    # a DSACK arrived since reordering was seen
        self.rack_last_delivered = 0    # tp.delivered when the window was last widened
        self.dsack_dups = 0             # segments the peer reported receiving twice
        self.reord_seen = 0
        self.tlp_high_seq = 0
        self.tlp_retrans = False
        self.prr_delivered = 0
        self.prr_out = 0
        self.mtu_probe_seq_start = 0
        self.mtu_probe_seq_end = 0
        self.synack_stamp = None
        self.rcvq_space = 0
        self.rcvq_seq = 0
        self.rcvq_time = 0.0
        self.dsack = None
        self.last_ofo = None

        # RTT and timers.
        self.srtt_us = 0
        self.mdev_us = 0
        self.mdev_max_us = 0
        self.rttvar_us = 0
        self.rtt_seq = 0
        self.min_rtt_us = 0xFFFFFFFF
        self.rto = msecs_to_jiffies(TCP_TIMEOUT_INIT_MS)   # icsk_rto, jiffies
        self.rto_min = msecs_to_jiffies(TCP_RTO_MIN_MS)
        self.backoff = 0
        self.retransmits = 0
        self.probes_out = 0
        self.pending = 0            # icsk_pending: which timer the xmit timer is
        self.timeout = None         # icsk_timeout: when it fires (seconds)
        self.retrans_stamp = 0.0
        self.total_retrans = 0
        self.syn_retries = 0
        # Delayed ACK (icsk_ack).
        self.ack_pending = 0
        self.ack_timeout = None     # when the delayed-ACK timer fires (seconds)
        self.ack_timeout_j = None   # the same, in jiffies
        self.ack_ato = 0
        self.ack_quick = 0
        self.ack_pingpong = 0
        self.ack_lrcvtime = 0.0
        # Other timers.
        self.timewait_deadline = None

        # Identity of the IP packets we send.
        self.inet_id = 0
        self.ttl = 64
        self.tos = 0

        # Statistics for tcp_info.
        self.bytes_sent = 0
        self.bytes_acked = 0
        self.bytes_received = 0
        self.bytes_retrans = 0
        self.segs_out = 0
        self.segs_in = 0
        self.data_segs_out = 0
        self.data_segs_in = 0

    # Small helpers with the kernel's names.
    def packets_in_flight(self) -> int:
        """tcp_packets_in_flight(): packets_out - left_out + retrans_out."""
        return self.packets_out - (self.sacked_out + self.lost_out) + self.retrans_out

    def wnd_end(self) -> int:
        return (self.snd_una + self.snd_wnd) & 0xFFFFFFFF

    def send_head(self):
        return self.write_queue[0] if self.write_queue else None

    def write_queue_tail(self):
        return self.write_queue[-1] if self.write_queue else None

    def in_slow_start(self) -> bool:
        return self.snd_cwnd < self.snd_ssthresh

    def __repr__(self) -> str:
        from .constants import STATE_NAMES
        return (f"<TcpSock {self.saddr}:{self.sport}->{self.daddr}:{self.dport} "
                f"{STATE_NAMES.get(self.state, self.state)} una={self.snd_una} nxt={self.snd_nxt} "
                f"write_seq={self.write_seq} cwnd={self.snd_cwnd}>")
