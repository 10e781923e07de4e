"""What the edge learns from the verifier before serving: is it reachable, and what does it host.

The model id that ``/v1/models`` reports and the EOS set come from the verifier itself: a probe
opens a session on a one-token prompt, reads the server's ``Opened`` reply (target name, EOS
ids, exit layers) and closes it, which costs the server one one-token prefill. Its limits come
from ``VerifierInfo.GetLimits`` (no session); a verifier without that call gets the defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import grpc

from edgespec.client.channel import open_channel, session_call
from edgespec.client.recovery import describe, wait_connected
from edgespec.openai_api.limits import FALLBACK_LIMITS, PromptLimits
from edgespec.transport import edgespec_pb2 as pb
from edgespec.transport import edgespec_pb2_grpc as pb_grpc
from edgespec.transport.codec import PROTOCOL_VERSION
from edgespec.transport.security import AUTH_METADATA_KEY, AUTH_SCHEME, ClientSecurity

logger = logging.getLogger(__name__)


class CloudUnavailable(RuntimeError):
    """The verifier could not be reached."""


class CloudRefused(RuntimeError):
    """The verifier answered but refused (a wrong token, an incompatible protocol)."""


@dataclass(frozen=True)
class CloudInfo:
    target: str
    eos_ids: frozenset[int]
    exit_layers: tuple[int, ...]
    limits: PromptLimits = FALLBACK_LIMITS


async def check_reachable(address: str, security: ClientSecurity, timeout_s: float) -> None:
    """Raise CloudUnavailable unless a connection to the verifier comes up within ``timeout_s``."""
    try:
        async with open_channel(address, security) as channel:
            await wait_connected(channel, timeout_s)
    except (ConnectionError, asyncio.TimeoutError) as error:
        raise CloudUnavailable(f"the cloud verifier at {address} is unreachable: {describe(error)}") from None


async def describe_cloud(address: str, security: ClientSecurity, timeout_s: float, probe_token: int = 0) -> CloudInfo:
    """Open and close one session to learn the target's name, EOS ids and exits."""
    await check_reachable(address, security, timeout_s)
    async with open_channel(address, security) as channel:
        call = session_call(channel, security)
        try:
            await call.write(
                pb.ClientMessage(
                    open=pb.Open(
                        protocol_version=PROTOCOL_VERSION,
                        kind=pb.SPECULATIVE,
                        prompt_ids=[probe_token],
                        max_new_tokens=1,
                    )
                )
            )
            reply = await asyncio.wait_for(call.read(), timeout_s)
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise CloudUnavailable(f"the cloud verifier at {address} is unreachable: {describe(error)}") from None
            raise CloudRefused(f"the cloud verifier at {address} refused the probe: {describe(error)}") from None
        except (asyncio.TimeoutError, asyncio.InvalidStateError) as error:
            raise CloudUnavailable(f"the cloud verifier at {address} did not answer: {describe(error)}") from None
        finally:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
                await call.write(pb.ClientMessage(close=pb.Close()))
            call.cancel()
    if reply is grpc.aio.EOF or reply.WhichOneof("kind") != "opened":
        detail = (
            "the stream ended"
            if reply is grpc.aio.EOF
            else f"{pb.ErrorCode.Name(reply.error.code)}: {reply.error.message}"
            if reply.WhichOneof("kind") == "error"
            else reply.WhichOneof("kind")
        )
        raise CloudRefused(f"the cloud verifier at {address} refused the probe: {detail}")
    opened = reply.opened
    limits = await fetch_limits(address, security, timeout_s)
    info = CloudInfo(
        target=opened.target, eos_ids=frozenset(opened.eos_ids), exit_layers=tuple(opened.exit_layers), limits=limits
    )
    logger.info(
        "cloud verifier at %s hosts %r (EOS %s, exits %s; prompts up to %d tokens, up to %d new tokens, context %s)",
        address,
        info.target,
        sorted(info.eos_ids),
        list(info.exit_layers),
        limits.max_prompt_tokens,
        limits.max_new_tokens,
        limits.context_tokens or "unbounded",
    )
    return info


async def fetch_limits(address: str, security: ClientSecurity, timeout_s: float) -> PromptLimits:
    """The verifier's advertised limits; its defaults when it does not advertise them."""
    metadata = ((AUTH_METADATA_KEY, AUTH_SCHEME + security.token),) if security.token else None
    async with open_channel(address, security) as channel:
        try:
            stub = pb_grpc.VerifierInfoStub(channel)
            reply = await stub.GetLimits(pb.LimitsRequest(), metadata=metadata, timeout=timeout_s)
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise CloudUnavailable(f"the cloud verifier at {address} is unreachable: {describe(error)}") from None
            logger.warning(
                "the cloud verifier at %s does not advertise its limits (%s): assuming serve's defaults",
                address,
                describe(error),
            )
            return FALLBACK_LIMITS
    return PromptLimits.from_wire(reply)
