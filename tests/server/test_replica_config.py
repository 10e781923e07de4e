"""`edgespec serve --replicas` flags into a cluster config, and the Serve config file an operator
takes to a real cluster: validated by Ray Serve's own schema, never holding the token."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from edgespec.cli import build_parser
from edgespec.cli.serve_replicas import cluster_config, wants_replicas
from edgespec.server.replicas import (
    APP_NAME,
    ClusterConfig,
    ReplicaSpec,
    check_exposure,
    serve_config,
    write_serve_config,
)
from tests.support.self_signed import self_signed_pair

TOKEN = "a-replica-token-for-unit-tests"


def parse(*argv: str):  # type: ignore[no-untyped-def]
    return build_parser().parse_args(["serve", *argv])


def test_plain_serve_is_not_a_cluster() -> None:
    assert not wants_replicas(parse())
    assert wants_replicas(parse("--replicas", "2")) and wants_replicas(
        parse("--min-replicas", "1", "--max-replicas", "3")
    )


def test_serve_flags_reach_every_replica(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    args = parse("--replicas", "3", "--target", "some-dir", "--dtype", "float32",
                 "--max-sessions", "12", "--max-block", "9", "--idle-timeout", "30",
                 "--auth-token-file", str(token_file), "--port", "6000", "--threads", "2")  # fmt: skip
    config = cluster_config(args)
    assert config.replicas == 3 and config.port == 6000 and not config.autoscaling
    spec = config.spec
    assert (spec.target, spec.dtype, spec.max_sessions, spec.max_block, spec.idle_timeout_s, spec.threads) == (
        "some-dir",
        "float32",
        12,
        9,
        30.0,
        2,
    )
    assert spec.token() == TOKEN and spec.auth_token == ""  # read from the file by each replica


def test_batching_prefix_cache_and_exit_flags_reach_every_replica() -> None:
    args = parse(
        "--replicas",
        "2",
        "--max-batch-rows",
        "128",
        "--prefill-chunk",
        "64",
        "--prefix-cache-tokens",
        "4096",
        "--exit-vocab",
        "full",
    )
    spec = cluster_config(args).spec
    assert (spec.max_batch_rows, spec.prefill_chunk, spec.prefix_cache_tokens, spec.exit_vocab) == (
        128,
        64,
        4096,
        "full",
    )
    assert ReplicaSpec.from_args(spec.as_args()) == spec


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--replicas", "0"], "at least 1"),
        (["--min-replicas", "1"], "go together"),
        (["--min-replicas", "3", "--max-replicas", "2"], "min-replicas"),
        (["--replicas", "2", "--tls-cert", "c.pem"], "go together"),
        (["--max-replicas", "2", "--min-replicas", "1", "--sessions-per-replica", "0"], "sessions-per-replica"),
    ],
)
def test_bad_combinations_fail_before_anything_starts(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cluster_config(parse(*argv))


def test_an_open_port_without_a_token_must_be_asked_for() -> None:
    spec = ReplicaSpec(target="t")
    with pytest.raises(ValueError, match="every interface"):
        check_exposure(ClusterConfig(spec=spec, replicas=2), token=None)
    check_exposure(ClusterConfig(spec=spec, replicas=2), token=TOKEN)
    check_exposure(ClusterConfig(spec=spec, replicas=2, host="0.0.0.0"), token=None)


def test_the_serve_config_passes_rays_schema_and_keeps_the_token_out(tmp_path: Path) -> None:
    spec = ReplicaSpec(target="qwen2.5-coder-1.5b", device="cuda", max_sessions=48, auth_token=TOKEN)
    path = tmp_path / "serve.yaml"
    write_serve_config(
        ClusterConfig(spec=spec, port=9100, min_replicas=1, max_replicas=8, sessions_per_replica=16), path
    )
    text = path.read_text()
    assert TOKEN not in text
    schema = ServeDeploySchema.model_validate(yaml.safe_load(text))
    assert schema.grpc_options.port == 9100
    app = schema.applications[0]
    assert app.name == APP_NAME and app.import_path == "edgespec.server.ray_deployment:build_app"
    assert ReplicaSpec.from_args(app.args).target == "qwen2.5-coder-1.5b"
    deployment = app.deployments[0]
    assert deployment.max_ongoing_requests == 48
    assert (
        deployment.autoscaling_config["max_replicas"] == 8
        and deployment.autoscaling_config["target_ongoing_requests"] == 16
    )
    assert deployment.ray_actor_options.num_gpus == 1


def test_fixed_replicas_in_the_config() -> None:
    deployment = serve_config(ClusterConfig(spec=ReplicaSpec(target="t"), replicas=4))["applications"][0][
        "deployments"
    ][0]
    assert deployment["num_replicas"] == 4 and "autoscaling_config" not in deployment


def test_unknown_replica_settings_are_named() -> None:
    with pytest.raises(ValueError, match="unknown replica settings"):
        ReplicaSpec.from_args({"target": "t", "max_sesions": 3})


def test_with_tls_the_config_comes_with_an_nginx_front(tmp_path: Path) -> None:
    cert, key = self_signed_pair()
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    args = parse("--replicas", "2", "--port", "9200",
                 "--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem"),
                 "--write-serve-config", str(tmp_path / "serve.yaml"))  # fmt: skip
    config = cluster_config(args)
    assert config.tls
    front = write_serve_config(config, tmp_path / "serve.yaml")
    assert front is not None and front.name == "serve-tls-nginx.conf"
    text = front.read_text()
    assert "server 127.0.0.1:9200 max_fails=1" in text and "grpc_pass grpc://edgespec_verifiers;" in text
    assert "listen 0.0.0.0:443 ssl http2;" in text
    assert f"ssl_certificate {(tmp_path / 'cert.pem').resolve()};" in text
