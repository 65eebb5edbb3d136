"""Per-stack sysctls under their kernel names (``net.ipv4.tcp_*``, ``net.core.*``)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace


class SysctlError(ValueError):
    pass


def _triple(a: int, b: int, c: int) -> tuple[int, int, int]:
    return (a, b, c)


@dataclass(slots=True)
class Sysctl:
    """The sysctls the stack honours, with Linux 6.x defaults.

    Field names are the sysctl names without the ``net.ipv4.`` or ``net.core.``
    prefix; ``KEYS`` maps full names to fields.
    """

    tcp_autocorking: int = 1
    tcp_mtu_probing: int = 0
    tcp_base_mss: int = 1024
    tcp_probe_threshold: int = 8
    tcp_probe_interval: int = 600
    tcp_mtu_probe_floor: int = 48
    tcp_min_snd_mss: int = 48
    tcp_min_tso_segs: int = 2
    tcp_tso_win_divisor: int = 3
    tcp_tso_rtt_log: int = 9
    tcp_limit_output_bytes: int = 4 * 1024 * 1024
    tcp_notsent_lowat: int = 0xFFFFFFFF
    tcp_wmem: tuple[int, int, int] = field(default_factory=lambda: _triple(4096, 16384, 4194304))
    tcp_rmem: tuple[int, int, int] = field(default_factory=lambda: _triple(4096, 131072, 6291456))
    tcp_timestamps: int = 1
    tcp_sack: int = 1
    tcp_dsack: int = 1
    tcp_window_scaling: int = 1
    tcp_slow_start_after_idle: int = 1
    tcp_congestion_control: str = "cubic"
    tcp_pacing_ss_ratio: int = 200
    tcp_pacing_ca_ratio: int = 120
    tcp_syn_retries: int = 6
    tcp_synack_retries: int = 5
    tcp_retries1: int = 3
    tcp_retries2: int = 15
    tcp_reordering: int = 3
    tcp_max_reordering: int = 300
    tcp_early_retrans: int = 3
    tcp_recovery: int = 1
    tcp_frto: int = 2
    tcp_ecn: int = 2
    tcp_fin_timeout: int = 60
    tcp_moderate_rcvbuf: int = 1
    tcp_workaround_signed_windows: int = 0
    tcp_init_cwnd: int = 10  # the route's initcwnd; not a sysctl in Linux, kept here for sweeps
    ip_no_pmtu_disc: int = 0
    route_mtu_expires: int = 600
    route_min_pmtu: int = 552
    icmp_ratelimit: int = 1000
    core_wmem_max: int = 212992
    core_rmem_max: int = 212992
    core_wmem_default: int = 212992
    core_rmem_default: int = 212992

    def set(self, name: str, value) -> None:
        """Set a sysctl by its kernel name, e.g. ``net.ipv4.tcp_autocorking``."""
        attr = key_to_field(name)
        current = getattr(self, attr)
        try:
            if isinstance(current, tuple):
                parts = value.split() if isinstance(value, str) else list(value)
                parsed = tuple(int(p) for p in parts)
                if len(parsed) != len(current):
                    raise ValueError
                value = parsed
            elif isinstance(current, str):
                value = str(value)
            else:
                value = int(value, 0) if isinstance(value, str) else int(value)
        except (TypeError, ValueError):
            raise SysctlError(f"{name}: bad value {value!r}") from None
        setattr(self, attr, value)

    def get(self, name: str):
        return getattr(self, key_to_field(name))

    def copy(self) -> "Sysctl":
        return replace(self)


_PREFIXES = (("net.ipv4.route.", "route_"), ("net.ipv4.", ""), ("net.core.", "core_"))
_FIELDS = {f.name for f in fields(Sysctl)}


def key_to_field(name: str) -> str:
    key = name.strip().replace("/", ".")
    for prefix, repl in _PREFIXES:
        if key.startswith(prefix):
            key = repl + key[len(prefix):]
            break
    if key not in _FIELDS:
        raise SysctlError(f"unknown sysctl {name!r}")
    return key


def field_to_key(attr: str) -> str:
    if attr.startswith("route_"):
        return "net.ipv4.route." + attr[len("route_"):]
    if attr.startswith("core_"):
        return "net.core." + attr[len("core_"):]
    return "net.ipv4." + attr


KEYS = tuple(field_to_key(name) for name in sorted(_FIELDS))
