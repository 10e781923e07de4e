"""edgespec: speculative edge-cloud decoding with early exits.

A small draft model on the edge proposes tokens; a large target model in the cloud verifies
them in one forward pass; early-exit heads inside the target let the server announce a verdict
before its forward pass ends so the edge can pre-draft. Output equals the target's own decoding.
"""

__version__ = "0.1.0"
