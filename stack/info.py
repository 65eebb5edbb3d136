"""A tcp_info-like snapshot of one connection (field names as in struct tcp_info)."""

from __future__ import annotations

from .constants import STATE_NAMES
from .jiffies import jiffies_to_usecs
from .seq import seq_sub


def tcp_info(tp) -> dict:
    return {
        "tcpi_state": STATE_NAMES.get(tp.state, str(tp.state)),
        "tcpi_ca_state": tp.ca_state,
        "tcpi_retransmits": tp.retransmits,
        "tcpi_probes": tp.probes_out,
        "tcpi_backoff": tp.backoff,
        "tcpi_options": {"ts": tp.tstamp_ok, "sack": tp.sack_ok, "wscale": tp.wscale_ok},
        "tcpi_snd_wscale": tp.snd_wscale,
        "tcpi_rcv_wscale": tp.rcv_wscale,
        "tcpi_rto": jiffies_to_usecs(tp.rto),
        "tcpi_snd_mss": tp.mss_cache,
        "tcpi_rcv_mss": tp.rcv_mss,
        "tcpi_advmss": tp.advmss,
        "tcpi_pmtu": tp.pmtu_cookie,
        "tcpi_unacked": tp.packets_out,
        "tcpi_sacked": tp.sacked_out,
        "tcpi_lost": tp.lost_out,
        "tcpi_retrans": tp.retrans_out,
        "tcpi_rtt": tp.srtt_us >> 3,
        "tcpi_rttvar": tp.mdev_us >> 2,
        "tcpi_min_rtt": tp.min_rtt_us if tp.min_rtt_us != 0xFFFFFFFF else 0,
        "tcpi_snd_ssthresh": tp.snd_ssthresh,
        "tcpi_snd_cwnd": tp.snd_cwnd,
        "tcpi_reordering": tp.reordering,
        "tcpi_reord_seen": tp.reord_seen,
        "tcpi_dsack_dups": tp.dsack_dups,
        "tcpi_rcv_space": tp.rcvq_space,
        "tcpi_total_retrans": tp.total_retrans,
        "tcpi_pacing_rate": None if tp.pacing_rate == float("inf") else int(tp.pacing_rate),
        "tcpi_bytes_sent": tp.bytes_sent,
        "tcpi_bytes_acked": tp.bytes_acked,
        "tcpi_bytes_received": tp.bytes_received,
        "tcpi_bytes_retrans": tp.bytes_retrans,
        "tcpi_segs_out": tp.segs_out,
        "tcpi_segs_in": tp.segs_in,
        "tcpi_data_segs_out": tp.data_segs_out,
        "tcpi_data_segs_in": tp.data_segs_in,
        "tcpi_delivered": tp.delivered,
        "tcpi_notsent_bytes": seq_sub(tp.write_seq, tp.snd_nxt),
        "tcpi_snd_wnd": tp.snd_wnd,
        "tcpi_rcv_wnd": tp.rcv_wnd,
        "sk_sndbuf": tp.sndbuf,
        "sk_wmem_queued": tp.wmem_queued,
        "sk_rcvbuf": tp.rcvbuf,
    }
