"""32-bit TCP sequence arithmetic (the kernel's before()/after()/between())."""

SEQ_MASK = 0xFFFFFFFF
_HALF = 0x80000000


def before(seq1: int, seq2: int) -> bool:
    """True when seq1 comes strictly before seq2 modulo 2**32."""
    return ((seq1 - seq2) & SEQ_MASK) >= _HALF


def after(seq1: int, seq2: int) -> bool:
    return ((seq2 - seq1) & SEQ_MASK) >= _HALF


def between(seq1: int, seq2: int, seq3: int) -> bool:
    """seq2 <= seq1 <= seq3, all modulo 2**32."""
    return ((seq3 - seq2) & SEQ_MASK) >= ((seq1 - seq2) & SEQ_MASK)


def seq_sub(seq1: int, seq2: int) -> int:
    """Distance from seq2 forward to seq1, as a non-negative int below 2**32."""
    return (seq1 - seq2) & SEQ_MASK
