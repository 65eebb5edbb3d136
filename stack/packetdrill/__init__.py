"""packetdrill script parsing for sendlab.

    from stack.packetdrill import parse_file
    script = parse_file("conformance/nagle_hold_until_ack.pkt")
    for event in script.events: ...
"""

from .parser import (
    AnyOptions,
    Arg,
    CodeBlock,
    Elided,
    Event,
    IcmpPacket,
    IntList,
    IovecList,
    MsgHdr,
    PacketdrillSyntaxError,
    PollFd,
    PollFdList,
    QuotedTcp,
    Script,
    ShellCommand,
    String,
    Symbol,
    Syscall,
    TcpOpt,
    TcpPacket,
    TimeSpec,
    parse_file,
    parse_script,
)

__all__ = [
    "AnyOptions", "Arg", "CodeBlock", "Elided", "Event", "IcmpPacket", "IntList",
    "IovecList", "MsgHdr", "PacketdrillSyntaxError", "PollFd", "PollFdList", "QuotedTcp", "Script",
    "ShellCommand", "String", "Symbol", "Syscall", "TcpOpt", "TcpPacket",
    "TimeSpec", "parse_file", "parse_script",
]
