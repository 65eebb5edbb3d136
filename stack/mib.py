"""SNMP/netstat counters under the names ``nstat`` prints."""

from collections import Counter

# The counters the stack maintains; listed so reports can show zeros too.
COUNTERS = (
    "TcpActiveOpens", "TcpPassiveOpens", "TcpAttemptFails", "TcpEstabResets",
    "TcpInSegs", "TcpOutSegs", "TcpRetransSegs", "TcpInErrs", "TcpOutRsts", "TcpInCsumErrors",
    "IpInReceives", "IpInHdrErrors", "IpInDiscards", "IpOutRequests",
    "IcmpInMsgs", "IcmpInErrors", "IcmpInDestUnreachs", "IcmpOutMsgs",
    "TcpExtTCPAutoCorking", "TcpExtTCPDelivered", "TcpExtDelayedACKs", "TcpExtDelayedACKLost",
    "TcpExtTCPPureAcks", "TcpExtTCPHPAcks", "TcpExtTCPHPHits", "TcpExtTCPTimeouts",
    "TcpExtTCPLossProbes", "TcpExtTCPFastRetrans", "TcpExtTCPSlowStartRetrans",
    "TcpExtTCPLostRetransmit", "TcpExtTCPSackRecovery", "TcpExtTCPRenoRecovery",
    "TcpExtTCPDSACKRecv", "TcpExtTCPSACKReorder", "TcpExtTCPWinProbe", "TcpExtTCPKeepAlive",
    "TcpExtTCPMTUPFail", "TcpExtTCPMTUPSuccess", "TcpExtTCPBacklogCoalesce",
    "TcpExtOutOfWindowIcmps", "TcpExtTCPToZeroWindowAdv", "TcpExtTCPOFOQueue",
    "TcpExtTCPRcvCoalesce", "TcpExtTCPAbortOnData", "TcpExtTCPAbortOnClose",
    "TcpExtTCPAbortOnTimeout", "TcpExtTCPSpuriousRTOs", "TcpExtTCPDSACKOldSent",
    "TcpExtListenDrops", "TcpExtTCPZeroWindowDrop", "TcpExtTCPSndbufLimited",
    "SendlabMalformedDropped", "SendlabMtuProbes", "TcpExtTCPLossProbeRecovery",
    "TcpExtTCPFullUndo", "TcpExtTCPSACKReneging", "TcpExtTCPSimultaneousOpenDropped",
    "TcpExtTCPDSACKUndo", "TcpExtTCPPartialUndo", "TcpExtTCPDSACKIgnoredDubious",
    "TcpExtTCPTSReorder",
)


class Mib(Counter):
    """A Counter keyed by nstat names; ``snapshot()`` lists every known counter."""

    def snapshot(self) -> dict[str, int]:
        out = {name: 0 for name in COUNTERS}
        out.update(self)
        return out
