"""The round core: what to draft, send, verify and commit, as pure objects (events in, actions
out; no sockets, threads or clocks inside). The gRPC client and server, the in-process engine and
the simulator are drivers of the same two objects: ``ClientRounds`` and ``ServerRounds``."""
