"""Runtimes that drive the sans-I/O core: a virtual clock (here) and, later, AF_PACKET."""

from .virtual import Link, Sleep, VirtualNetwork

__all__ = ["VirtualNetwork", "Link", "Sleep"]
