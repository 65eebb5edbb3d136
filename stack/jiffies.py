"""The kernel's jiffy clock and timer wheel, so timers fire when Linux's would.

TCP timers (RTO, probe0, delayed ACK) are kept in jiffies. A timer armed for
``timeout`` jiffies is filed in the timer wheel, which rounds the expiry up to
the granularity of its level (and always by at least one tick), so Linux fires
it between ``timeout`` and ``timeout + granularity`` ticks after arming.
"""

import math

HZ = 250
TICK_S = 1.0 / HZ

_LVL_CLK_SHIFT = 3
_LVL_BITS = 6
_LVL_SIZE = 1 << _LVL_BITS
_LVL_DEPTH = 9


def jiffies(now: float) -> int:
    # A small epsilon keeps exact multiples of a tick from rounding down.
    return int(math.floor(now * HZ + 1e-9))


def usecs_to_jiffies(usecs: float) -> int:
    return int(math.ceil(usecs * HZ / 1_000_000 - 1e-9))


def msecs_to_jiffies(msecs: float) -> int:
    return usecs_to_jiffies(msecs * 1000)


def jiffies_to_usecs(j: int) -> int:
    return j * 1_000_000 // HZ


def _wheel_expiry(clk: int, expires: int) -> int:
    """Jiffy at which the timer wheel actually runs a timer due at ``expires``."""
    delta = expires - clk
    for lvl in range(_LVL_DEPTH):
        # Level n holds deltas below 63 << (3 * n) with granularity 8**n.
        if delta < (_LVL_SIZE - 1) << (lvl * _LVL_CLK_SHIFT) or lvl == _LVL_DEPTH - 1:
            shift = lvl * _LVL_CLK_SHIFT
            # calc_index(): round up to the level's granularity.
            return ((expires + (1 << shift)) >> shift) << shift
    return expires  # unreachable


def timer_deadline(now: float, timeout_jiffies: int) -> float:
    """Time at which a jiffy timer armed at ``now`` for ``timeout_jiffies`` fires."""
    clk = jiffies(now)
    fire = _wheel_expiry(clk, clk + max(0, timeout_jiffies))
    return fire * TICK_S
