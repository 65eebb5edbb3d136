"""Open vSwitch's ``check_pkt_larger(N)->DST`` action for os-ken and ryu.

Neither framework has a class for it, so this module adds one to the OpenFlow 1.3 parser:
a subclass of the parser's ``NXAction`` with ``_subtype = 49`` (``NXAST_CHECK_PKT_LARGER``,
OVS >= 2.12), registered with ``NXAction.register`` so packet-ins and flow dumps that
carry it decode too. OVS's ``struct nx_action_check_pkt_larger``::

    ovs_be16 type      0xffff (experimenter)     ovs_be16 len      24
    ovs_be32 vendor    0x00002320 (Nicira)       ovs_be16 subtype  49
    ovs_be16 pkt_len   N                         ovs_be16 offset   bit of DST that is set
    NXM/OXM header of DST (4 bytes for a register), zero padding to 24 bytes

The switch sets the DST bit to 1 when the packet's L2 frame (Ethernet header included, no
FCS) is longer than N bytes, else to 0; a later table matches on the bit. ``ovs-ofctl
parse-actions OpenFlow13`` prints ``check_pkt_larger(N)->NXM_NX_REG0[0]`` for the encoding
of N with REG0 bit 0 (tests/test_controller.py checks this).

:func:`encode_check_pkt_larger` builds the same bytes without either framework;
:func:`action_class` returns (and registers once) the class for a given parser module.
"""

from __future__ import annotations

import struct

NX_VENDOR_ID = 0x00002320
NXAST_CHECK_PKT_LARGER = 49
OFPAT_EXPERIMENTER = 0xFFFF
ACTION_LEN = 24
NXM_NX_REG_CLASS = 0x0001  # NXM_NX_REG0..15: class 1, fields 0..15, 4 bytes each

_HEAD = struct.Struct("!HHIH")   # type, len, vendor, subtype
_BODY = struct.Struct("!HH")     # pkt_len, ofs


def nxm_reg_header(reg: int) -> int:
    """The 32-bit NXM header of register ``reg`` (NXM_NX_REG0 is 0x00010004)."""
    if not 0 <= reg <= 15:
        raise ValueError(f"register {reg} not in 0..15")
    return NXM_NX_REG_CLASS << 16 | reg << 9 | 4


def encode_check_pkt_larger(pkt_len: int, reg: int = 0, ofs: int = 0) -> bytes:
    """The 24-byte action ``check_pkt_larger(pkt_len)->NXM_NX_REG<reg>[ofs]``."""
    if not 0 <= pkt_len <= 0xFFFF:
        raise ValueError(f"pkt_len {pkt_len} not in 0..65535")
    if not 0 <= ofs <= 31:
        raise ValueError(f"bit offset {ofs} not in 0..31 for a 32-bit register")
    body = (_HEAD.pack(OFPAT_EXPERIMENTER, ACTION_LEN, NX_VENDOR_ID, NXAST_CHECK_PKT_LARGER)
            + _BODY.pack(pkt_len, ofs) + struct.pack("!I", nxm_reg_header(reg)))
    return body.ljust(ACTION_LEN, b"\0")


_classes: dict[str, type] = {}


def action_class(ofproto, parser) -> type:
    """``NXActionCheckPktLarger`` for this framework's OpenFlow 1.3 modules (os_ken or ryu).

    ``ofproto``/``parser`` are e.g. ``datapath.ofproto`` and ``datapath.ofproto_parser``.
    The class is made and registered once per parser module and also set as an attribute
    of the parser module, as the framework's own NX actions are.
    """
    key = parser.__name__
    if key in _classes:
        return _classes[key]
    base = parser.NXAction

    class NXActionCheckPktLarger(base):
        """check_pkt_larger(pkt_len)->dst[ofs]; ``dst`` is a field name such as "reg0"."""

        _subtype = NXAST_CHECK_PKT_LARGER
        _fmt_str = "!HH"  # pkt_len, ofs; the dst header and padding follow
        _TYPE = {"ascii": ["dst"]}

        def __init__(self, pkt_len, dst="reg0", ofs=0,
                     type_=None, len_=None, experimenter=None, subtype=None):
            super().__init__()
            self.pkt_len = pkt_len
            self.dst = dst
            self.ofs = ofs

        @classmethod
        def parser(cls, buf):
            pkt_len, ofs = struct.unpack_from(cls._fmt_str, buf, 0)
            n, _length = ofproto.oxm_parse_header(buf, _BODY.size)
            return cls(pkt_len, ofproto.oxm_to_user_header(n), ofs)

        def serialize_body(self):
            data = bytearray(_BODY.pack(self.pkt_len, self.ofs))
            ofproto.oxm_serialize_header(ofproto.oxm_from_user_header(self.dst), data,
                                         len(data))
            # The body follows the 10-byte experimenter header + subtype: pad to 24 in all.
            data += bytes(ACTION_LEN - 10 - len(data))
            return data

    NXActionCheckPktLarger.__module__ = parser.__name__  # for the framework's to_jsondict
    setattr(parser, "NXActionCheckPktLarger", NXActionCheckPktLarger)
    base.register(NXActionCheckPktLarger)
    _classes[key] = NXActionCheckPktLarger
    return NXActionCheckPktLarger


__all__ = ["NXAST_CHECK_PKT_LARGER", "action_class", "encode_check_pkt_larger",
           "nxm_reg_header"]
