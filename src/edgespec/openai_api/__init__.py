"""An OpenAI-compatible HTTP API on the edge device (`edgespec edge-serve`).

Apps that speak OpenAI's chat/completions API point their client at this server and get the
target's output, drafted on the device and verified in the cloud, without knowing about
speculation. Modules: ``schemas`` (request/response bodies), ``errors`` (OpenAI's error shape),
``detokenizer`` + ``stops`` (token ids to text, cut exactly at stop strings), ``cloud`` (probing
the verifier and its limits), ``limits`` + ``body_limit`` + ``admission`` (what a request may cost,
checked before it costs it), ``backend`` (one edge client per concurrent request),
``cloud_errors`` (the verifier's refusals as HTTP statuses), ``streaming`` (server-sent events),
``probes`` + ``metrics`` (/health, /ready, Prometheus /metrics), ``app`` (the FastAPI routes); the command is
``edgespec.cli.edge_serve``.
"""
