"""User-space link emulator: real sockets, emulated distance (this kernel has no netem)."""

from edgespec.link.profiles import PROFILES, LinkProfile, resolve_profile
from edgespec.link.proxy import LinkEmulator, LinkStats

__all__ = ["LinkEmulator", "LinkProfile", "LinkStats", "PROFILES", "resolve_profile"]
