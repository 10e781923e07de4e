"""Where the auth token, TLS files and limits come from on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgespec.cli import build_parser
from edgespec.cli.options import client_security, server_security, session_limits
from edgespec.server.app import MAX_MESSAGE_BYTES
from edgespec.server.limits import SessionLimits
from edgespec.transport.security import AUTH_TOKEN_ENV, ClientSecurity, ServerSecurity, resolve_token
from tests.support.self_signed import self_signed_pair


def test_the_token_comes_from_the_flag_then_the_file_then_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("from-file\n")
    environ = {AUTH_TOKEN_ENV: "from-env"}
    assert resolve_token("from-flag", None, environ) == "from-flag"
    assert resolve_token(None, path, environ) == "from-file"
    assert resolve_token(None, None, environ) == "from-env"
    assert resolve_token(None, None, {}) is None
    assert resolve_token(None, None, {AUTH_TOKEN_ENV: ""}) is None


@pytest.mark.parametrize("content", ["", "\n", "   \nsecond-line"])
def test_an_empty_token_file_is_an_error_not_an_open_server(tmp_path: Path, content: str) -> None:
    path = tmp_path / "token"
    path.write_text(content)
    with pytest.raises(ValueError, match="empty"):
        resolve_token(None, path, {})


@pytest.mark.parametrize("token", ["two words", "tab\there", "naïve", ""])
def test_a_token_that_cannot_travel_as_metadata_is_refused_up_front(token: str) -> None:
    with pytest.raises(ValueError):
        resolve_token(token, None, {})


def test_security_settings_never_show_the_token_or_key_in_their_repr() -> None:
    text = repr(ServerSecurity(token="hunter2-token", certificate_chain=b"CERT", private_key=b"KEY")) + repr(
        ClientSecurity(token="hunter2-token")
    )
    assert "hunter2" not in text and "KEY" not in text


def test_serve_flags_build_the_server_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(AUTH_TOKEN_ENV, "env-token")
    cert, key = self_signed_pair()
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    args = build_parser().parse_args(
        [
            "serve",
            "--tls-cert",
            str(tmp_path / "cert.pem"),
            "--tls-key",
            str(tmp_path / "key.pem"),
            "--max-prompt-tokens",
            "100",
            "--max-block",
            "8",
            "--max-new-tokens-limit",
            "50",
            "--max-message-bytes",
            "65536",
        ]
    )
    security = server_security(args)
    assert (security.token, security.certificate_chain, security.private_key) == ("env-token", cert, key)
    assert session_limits(args) == SessionLimits(max_prompt_tokens=100, max_new_tokens=50, max_block=8)
    assert args.max_message_bytes == 65536


def test_serve_defaults_are_the_servers_own_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(AUTH_TOKEN_ENV, raising=False)
    args = build_parser().parse_args(["serve"])
    assert session_limits(args) == SessionLimits() and args.max_message_bytes == MAX_MESSAGE_BYTES
    assert server_security(args) == ServerSecurity()


def test_a_certificate_without_its_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_bytes(b"CERT")
    with pytest.raises(ValueError, match="together"):
        server_security(build_parser().parse_args(["serve", "--tls-cert", str(tmp_path / "cert.pem")]))


@pytest.mark.parametrize("missing", ["cert.pem", "key.pem"])
def test_a_missing_certificate_or_key_file_is_named(tmp_path: Path, missing: str) -> None:
    (tmp_path / "cert.pem").write_bytes(self_signed_pair()[0])
    (tmp_path / "key.pem").write_bytes(self_signed_pair()[1])
    (tmp_path / missing).unlink()
    args = build_parser().parse_args(
        ["serve", "--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem")]
    )
    with pytest.raises(ValueError, match=f"{tmp_path / missing}: no such file"):
        server_security(args)


def test_a_key_that_does_not_match_the_certificate_is_refused_before_the_model_loads(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_bytes(self_signed_pair()[0])
    (tmp_path / "key.pem").write_bytes(self_signed_pair()[1])
    args = build_parser().parse_args(
        ["serve", "--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem")]
    )
    with pytest.raises(ValueError, match="not a PEM certificate and its key"):
        server_security(args)


@pytest.mark.parametrize(
    "flag", ["--max-block", "--max-prompt-tokens", "--max-new-tokens-limit", "--max-message-bytes"]
)
def test_a_limit_below_one_is_a_usage_error(flag: str) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", flag, "0"])


def test_the_token_flag_and_file_exclude_each_other() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--auth-token", "a", "--auth-token-file", "b"])


def test_a_ca_or_server_name_turns_tls_on_for_generate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(AUTH_TOKEN_ENV, raising=False)
    (tmp_path / "ca.pem").write_bytes(b"CA")
    parse = build_parser().parse_args
    assert client_security(parse(["generate", "--server", "h:1", "x"])) == ClientSecurity()
    assert client_security(parse(["generate", "--server", "h:1", "--tls", "x"])) == ClientSecurity(tls=True)
    with_ca = client_security(
        parse(["generate", "--server", "h:1", "--tls-ca", str(tmp_path / "ca.pem"), "--auth-token", "t", "x"])
    )
    assert with_ca == ClientSecurity(token="t", tls=True, root_certificates=b"CA")
    assert client_security(parse(["generate", "--server", "h:1", "--tls-server-name", "n", "x"])).tls
