"""The errors every round machine raises when the events it is fed break its rules."""

from __future__ import annotations


class ProtocolViolation(ValueError):
    """An event this machine cannot take in the state it is in: the peer (or the driver) said
    something no correct one says, such as a verdict for a round not in flight. The machine is
    left as it was; the driver ends the session."""
