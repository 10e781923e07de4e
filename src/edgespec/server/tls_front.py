"""TLS in front of a plaintext gRPC endpoint, by nginx (`grpc_pass`): what `edgespec serve
--replicas --tls-cert ...` puts before Ray Serve's gRPC proxy, which has no TLS option.

nginx terminates TLS (HTTP/2, ALPN h2), forwards each stream with its metadata (the auth token
included) to one of its upstreams, and keeps a stream open as long as the verifier's idle timeout
allows. `nginx_config` is also the template an operator can take to a real ingress host, with one
upstream per Ray node's proxy or per `edgespec serve`.

Open-source nginx has no active health checks, so upstreams are checked passively: one that
refuses or drops a connection, or does not answer within the connect timeout, is out of rotation
for ``FAIL_TIMEOUT_S`` and the stream goes to the next one (nothing has reached the verifier yet,
so nothing is lost). A verifier that is up but draining answers new sessions with BUSY, which the
edge client retries: round-robin sends the retry to another upstream.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Sequence

logger = logging.getLogger(__name__)

NGINX_MISSING = "TLS with --replicas needs nginx (Debian: apt-get install nginx-light; `make install` does)"
# How long an upstream that failed a connection stays out of rotation before nginx tries it again.
FAIL_TIMEOUT_S = 10
# A verifier that has not accepted a connection within this is passed over for the next upstream.
CONNECT_TIMEOUT_S = 2


def nginx_config(
    host: str,
    port: int,
    upstreams: Sequence[str],
    certificate: Path,
    private_key: Path,
    workdir: Path,
    idle_timeout_s: float,
) -> str:
    """nginx's config: TLS on ``host:port`` in front of the plaintext ``upstreams`` ("host:port" each)."""
    if not upstreams:
        raise ValueError("the TLS front needs at least one upstream")
    # A session's stream may sit idle up to the verifier's own idle timeout between messages;
    # nginx's 60 s defaults would cut it first.
    idle = f"{int(idle_timeout_s) + 30}s"
    listen = f"[{host.strip('[]')}]:{port}" if ":" in host else f"{host}:{port}"
    servers = "\n".join(
        f"        server {upstream} max_fails=1 fail_timeout={FAIL_TIMEOUT_S}s;" for upstream in upstreams
    )
    return f"""# edgespec: TLS in front of a plaintext gRPC endpoint (Ray Serve's proxy).
daemon off;
master_process on;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    upstream edgespec_verifiers {{
{servers}
    }}
    server {{
        listen {listen} ssl http2;
        ssl_certificate {certificate};
        ssl_certificate_key {private_key};
        ssl_protocols TLSv1.2 TLSv1.3;
        client_max_body_size 0;          # a stream's body never ends; messages are capped upstream
        client_body_timeout {idle};
        grpc_read_timeout {idle};
        grpc_send_timeout {idle};
        http2_idle_timeout {idle};
        location / {{
            grpc_pass grpc://edgespec_verifiers;
            # A refused, dropped or silent connection: the next upstream, each tried once.
            grpc_connect_timeout {CONNECT_TIMEOUT_S}s;
            grpc_next_upstream error timeout;
            grpc_next_upstream_tries {len(upstreams)};
        }}
    }}
}}
"""


class TlsFront:
    """nginx as a child process, TLS on ``host:port`` to the plaintext ``upstreams``."""

    def __init__(
        self,
        host: str,
        port: int,
        upstreams: Sequence[str],
        certificate: Path,
        private_key: Path,
        idle_timeout_s: float,
    ) -> None:
        binary = shutil.which("nginx") or next(
            (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
        )
        if binary is None:
            raise RuntimeError(NGINX_MISSING)
        self.workdir = Path(tempfile.mkdtemp(prefix="edgespec-nginx-"))
        self.workdir.chmod(0o755)  # nginx workers drop root and must reach their temp paths
        conf = self.workdir / "nginx.conf"
        conf.write_text(
            nginx_config(
                host, port, upstreams, certificate.resolve(), private_key.resolve(), self.workdir, idle_timeout_s
            )
        )
        self.process = subprocess.Popen([binary, "-p", str(self.workdir), "-c", str(conf), "-e", "stderr"])
        self.host, self.port = host, port

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        probe_host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "[::]") else self.host.strip("[]")
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"nginx exited with code {self.process.returncode} "
                    f"(port {self.port} in use? see its messages above)"
                )
            try:
                with socket.create_connection((probe_host, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"nginx did not listen on {self.host}:{self.port} within {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM: nginx's fast shutdown, master and workers
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)
