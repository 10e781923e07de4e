"""The round core: what to draft, send, verify and commit, as pure objects in the style of h11
(events in, actions out; no sockets, threads, clocks or tensors inside). It imports only the
standard library, so every driver -- the gRPC client and server, the virtual-clock driver with
real or trace backends -- runs the same machines: ``EdgeRounds`` (edge.py), ``VerifierRounds``
(verifier.py), ``ColocatedRounds`` (colocated.py) and ``CloudArRounds`` (cloud_ar.py)."""
