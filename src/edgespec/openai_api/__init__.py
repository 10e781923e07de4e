"""An OpenAI-compatible HTTP API on the edge device (`edgespec edge-serve`).

Apps that speak OpenAI's chat/completions API point their client at this server and get the
target's output, drafted on the device and verified in the cloud, without knowing about
speculation. Modules: ``schemas`` (request/response bodies), ``errors`` (OpenAI's error shape),
``detokenizer`` + ``stops`` (token ids to text, cut exactly at stop strings), ``cloud`` (probing
the verifier), ``backend`` (one edge client per concurrent request), ``streaming`` (server-sent
events), ``app`` (the FastAPI routes); the command is ``edgespec.cli.edge_serve``.
"""
