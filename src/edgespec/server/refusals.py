"""Why the server refuses a session or a request, named by the protocol's error codes (the
servicer turns the name into the wire's enum), so sessions and the scheduler need no protobuf."""

from __future__ import annotations


class Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code  # an ErrorCode name: "TOO_LARGE", "BUSY", ...
