"""RFC 1071 Internet checksum.

Because 2**16 == 1 (mod 0xFFFF), the one's-complement sum of a buffer's
big-endian 16-bit words is congruent to int.from_bytes(buf) mod 0xFFFF, so a
single C-level big-int conversion and modulo replaces the per-word loop.
The only wrinkle is that end-around-carry addition never produces 0 from a
non-zero input, so a non-zero total whose remainder is 0 sums to 0xFFFF.
"""

from __future__ import annotations

__all__ = ["internet_checksum", "ones_complement_sum", "pseudo_header_sum", "tcp_checksum"]


def ones_complement_sum(data, initial: int = 0) -> int:
    """Folded 16-bit one's-complement sum of ``data`` plus ``initial``.

    ``initial`` is any non-negative partial sum (folded or not), e.g. the
    result of :func:`pseudo_header_sum`.
    """
    n = int.from_bytes(data, "big")
    # Reduce first and fix up the small remainder: shifting or adding to n
    # itself would copy the whole big int.
    r = n % 0xFFFF
    if len(data) & 1:
        r = (r << 8) % 0xFFFF  # odd length: pad with one zero byte
    r += initial
    if r:
        return (r - 1) % 0xFFFF + 1
    return 0xFFFF if n else 0


def internet_checksum(data, initial: int = 0) -> int:
    """Checksum to store in a header (the complement of the sum).

    Over a buffer that already contains a correct checksum this returns 0.
    """
    n = int.from_bytes(data, "big")
    r = n % 0xFFFF
    if len(data) & 1:
        r = (r << 8) % 0xFFFF
    r += initial
    if r:
        return 0xFFFE - (r - 1) % 0xFFFF  # == ~folded_sum & 0xFFFF
    # r == 0 means initial == 0 and n % 0xFFFF == 0: the sum is 0xFFFF
    # unless every word was zero.
    return 0 if n else 0xFFFF


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Folded sum of the TCP/UDP pseudo header (works for 16-byte IPv6 too)."""
    n = int.from_bytes(src, "big") + int.from_bytes(dst, "big") + proto + length
    return (n - 1) % 0xFFFF + 1 if n else 0


def tcp_checksum(src: bytes, dst: bytes, tcp_bytes) -> int:
    """TCP checksum of a segment; 0 when the segment's own checksum is valid."""
    return internet_checksum(tcp_bytes, pseudo_header_sum(src, dst, 6, len(tcp_bytes)))
