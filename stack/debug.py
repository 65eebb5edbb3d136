"""Human-readable renderings of flags and segments (tcpdump's letters)."""

_LETTERS = ((0x02, "S"), (0x01, "F"), (0x04, "R"), (0x08, "P"), (0x20, "U"),
            (0x40, "E"), (0x80, "W"))


def flags_str(flags: int) -> str:
    """tcpdump/packetdrill style: 'S', 'S.', 'P.', 'F.', '.'."""
    out = "".join(letter for bit, letter in _LETTERS if flags & bit)
    if flags & 0x10:
        out += "."
    return out or "none"
