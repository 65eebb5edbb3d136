"""Runtimes that drive the sans-I/O core: the virtual clock (``virtual``) and a real interface
through AF_PACKET (``afpacket``, imported on demand: it needs Linux). Both run applications
written as generators (``apps``)."""

from .apps import Process, Sleep
from .virtual import Link, VirtualNetwork

__all__ = ["VirtualNetwork", "Link", "Sleep", "Process"]
