"""Per-flow metrics derived from a run's summary.json (the names experiments and reports use)."""

from __future__ import annotations


def flow_metrics(flow: dict) -> dict:
    """The metrics of testbed.experiment.FLOW_METRICS for one flow of a summary."""
    requested = flow["bytes_requested"] or 0
    sizes = {int(k): v for k, v in flow.get("segment_sizes", {}).items()}
    segments = sum(sizes.values())
    mss = flow.get("mss_final") or 0
    tiny = sum(v for k, v in sizes.items() if mss and k < mss)
    counters = flow.get("counters", {})
    lat = flow.get("write_latency_ms") or {}
    resp = flow.get("response_time_ms") or {}
    return {
        "completed": 1.0 if flow["completed"] else 0.0,
        "stalled": 1.0 if flow["stalled"] else 0.0,
        "duration_s": flow["duration_s"],
        "goodput_mbit": flow["goodput_mbit"],
        "bytes_acked": flow["bytes_acked"],
        "data_segments": flow["data_segments"],
        "segments_per_kb": segments / (requested / 1024) if requested else None,
        "tinygram_share": tiny / segments if segments else None,
        "retransmits": flow["retransmits"],
        "mss_initial": flow["mss_initial"],
        "mss_final": flow["mss_final"],
        "write_latency_p50_ms": lat.get("p50"),
        "write_latency_p99_ms": lat.get("p99"),
        "response_p50_ms": resp.get("p50"),
        "response_p99_ms": resp.get("p99"),
        "time_to_first_byte_s": flow.get("time_to_first_byte_s"),
        "stall_s": flow.get("longest_stall_s"),
        "mtu_probes": counters.get("SendlabMtuProbes", 0),
        "icmp_frag_needed_received": flow.get("icmp_frag_needed_received", 0),
        "autocorked": counters.get("TcpExtTCPAutoCorking", 0),
    }
