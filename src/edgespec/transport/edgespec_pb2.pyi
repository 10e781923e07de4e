from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SessionKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SESSION_KIND_UNSPECIFIED: _ClassVar[SessionKind]
    CLOUD_AR: _ClassVar[SessionKind]
    SPECULATIVE: _ClassVar[SessionKind]
    CLOUD_SD: _ClassVar[SessionKind]

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    BAD_REQUEST: _ClassVar[ErrorCode]
    UNSUPPORTED_VERSION: _ClassVar[ErrorCode]
    OUT_OF_VOCABULARY: _ClassVar[ErrorCode]
    TOO_LARGE: _ClassVar[ErrorCode]
    OUT_OF_ORDER: _ClassVar[ErrorCode]
    INTERNAL: _ClassVar[ErrorCode]
    UNAUTHENTICATED: _ClassVar[ErrorCode]
    BUSY: _ClassVar[ErrorCode]
    EXPIRED: _ClassVar[ErrorCode]
SESSION_KIND_UNSPECIFIED: SessionKind
CLOUD_AR: SessionKind
SPECULATIVE: SessionKind
CLOUD_SD: SessionKind
ERROR_CODE_UNSPECIFIED: ErrorCode
BAD_REQUEST: ErrorCode
UNSUPPORTED_VERSION: ErrorCode
OUT_OF_VOCABULARY: ErrorCode
TOO_LARGE: ErrorCode
OUT_OF_ORDER: ErrorCode
INTERNAL: ErrorCode
UNAUTHENTICATED: ErrorCode
BUSY: ErrorCode
EXPIRED: ErrorCode

class ClientMessage(_message.Message):
    __slots__ = ("open", "block", "close")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    open: Open
    block: DraftBlock
    close: Close
    def __init__(self, open: _Optional[_Union[Open, _Mapping]] = ..., block: _Optional[_Union[DraftBlock, _Mapping]] = ..., close: _Optional[_Union[Close, _Mapping]] = ...) -> None: ...

class Sampling(_message.Message):
    __slots__ = ("temperature", "top_k", "top_p")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_k: int
    top_p: float
    def __init__(self, temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class Open(_message.Message):
    __slots__ = ("protocol_version", "kind", "prompt_ids", "messages", "sampling", "seed", "max_new_tokens", "early_verdicts", "committed_ids", "gamma", "adaptive_gamma", "max_gamma", "draft_stop", "logprobs", "top_logprobs", "grammar")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PROMPT_IDS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    EARLY_VERDICTS_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_IDS_FIELD_NUMBER: _ClassVar[int]
    GAMMA_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_GAMMA_FIELD_NUMBER: _ClassVar[int]
    MAX_GAMMA_FIELD_NUMBER: _ClassVar[int]
    DRAFT_STOP_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    kind: SessionKind
    prompt_ids: _containers.RepeatedScalarFieldContainer[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    sampling: Sampling
    seed: int
    max_new_tokens: int
    early_verdicts: bool
    committed_ids: _containers.RepeatedScalarFieldContainer[int]
    gamma: int
    adaptive_gamma: bool
    max_gamma: int
    draft_stop: float
    logprobs: bool
    top_logprobs: int
    grammar: Grammar
    def __init__(self, protocol_version: _Optional[int] = ..., kind: _Optional[_Union[SessionKind, str]] = ..., prompt_ids: _Optional[_Iterable[int]] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., seed: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., early_verdicts: _Optional[bool] = ..., committed_ids: _Optional[_Iterable[int]] = ..., gamma: _Optional[int] = ..., adaptive_gamma: _Optional[bool] = ..., max_gamma: _Optional[int] = ..., draft_stop: _Optional[float] = ..., logprobs: _Optional[bool] = ..., top_logprobs: _Optional[int] = ..., grammar: _Optional[_Union[Grammar, _Mapping]] = ...) -> None: ...

class Grammar(_message.Message):
    __slots__ = ("kind", "source", "vocabulary")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    VOCABULARY_FIELD_NUMBER: _ClassVar[int]
    kind: str
    source: str
    vocabulary: str
    def __init__(self, kind: _Optional[str] = ..., source: _Optional[str] = ..., vocabulary: _Optional[str] = ...) -> None: ...

class SparseDistribution(_message.Message):
    __slots__ = ("ids", "probs")
    IDS_FIELD_NUMBER: _ClassVar[int]
    PROBS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    probs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., probs: _Optional[_Iterable[float]] = ...) -> None: ...

class CandidateIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class Assumption(_message.Message):
    __slots__ = ("round", "accepted", "next_token")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    NEXT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    round: int
    accepted: int
    next_token: int
    def __init__(self, round: _Optional[int] = ..., accepted: _Optional[int] = ..., next_token: _Optional[int] = ...) -> None: ...

class DraftBlock(_message.Message):
    __slots__ = ("round", "tokens", "probs", "assumes", "candidates")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROBS_FIELD_NUMBER: _ClassVar[int]
    ASSUMES_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    round: int
    tokens: _containers.RepeatedScalarFieldContainer[int]
    probs: _containers.RepeatedCompositeFieldContainer[SparseDistribution]
    assumes: Assumption
    candidates: _containers.RepeatedCompositeFieldContainer[CandidateIds]
    def __init__(self, round: _Optional[int] = ..., tokens: _Optional[_Iterable[int]] = ..., probs: _Optional[_Iterable[_Union[SparseDistribution, _Mapping]]] = ..., assumes: _Optional[_Union[Assumption, _Mapping]] = ..., candidates: _Optional[_Iterable[_Union[CandidateIds, _Mapping]]] = ...) -> None: ...

class Close(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("opened", "early", "final", "tokens", "dropped", "error")
    OPENED_FIELD_NUMBER: _ClassVar[int]
    EARLY_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    opened: Opened
    early: EarlyVerdict
    final: FinalVerdict
    tokens: Tokens
    dropped: Dropped
    error: Error
    def __init__(self, opened: _Optional[_Union[Opened, _Mapping]] = ..., early: _Optional[_Union[EarlyVerdict, _Mapping]] = ..., final: _Optional[_Union[FinalVerdict, _Mapping]] = ..., tokens: _Optional[_Union[Tokens, _Mapping]] = ..., dropped: _Optional[_Union[Dropped, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class Opened(_message.Message):
    __slots__ = ("session_id", "protocol_version", "prompt_ids", "eos_ids", "exit_layers", "num_layers", "prefill_ms", "target", "grammar")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_IDS_FIELD_NUMBER: _ClassVar[int]
    EOS_IDS_FIELD_NUMBER: _ClassVar[int]
    EXIT_LAYERS_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_MS_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    protocol_version: int
    prompt_ids: _containers.RepeatedScalarFieldContainer[int]
    eos_ids: _containers.RepeatedScalarFieldContainer[int]
    exit_layers: _containers.RepeatedScalarFieldContainer[int]
    num_layers: int
    prefill_ms: float
    target: str
    grammar: bool
    def __init__(self, session_id: _Optional[str] = ..., protocol_version: _Optional[int] = ..., prompt_ids: _Optional[_Iterable[int]] = ..., eos_ids: _Optional[_Iterable[int]] = ..., exit_layers: _Optional[_Iterable[int]] = ..., num_layers: _Optional[int] = ..., prefill_ms: _Optional[float] = ..., target: _Optional[str] = ..., grammar: _Optional[bool] = ...) -> None: ...

class EarlyVerdict(_message.Message):
    __slots__ = ("round", "exit_layer", "accepted", "next_token", "confidence", "elapsed_ms")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    EXIT_LAYER_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    NEXT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    round: int
    exit_layer: int
    accepted: int
    next_token: int
    confidence: float
    elapsed_ms: float
    def __init__(self, round: _Optional[int] = ..., exit_layer: _Optional[int] = ..., accepted: _Optional[int] = ..., next_token: _Optional[int] = ..., confidence: _Optional[float] = ..., elapsed_ms: _Optional[float] = ...) -> None: ...

class TokenLogprob(_message.Message):
    __slots__ = ("token", "logprob", "top_ids", "top_logprobs")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    TOP_IDS_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    token: int
    logprob: float
    top_ids: _containers.RepeatedScalarFieldContainer[int]
    top_logprobs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, token: _Optional[int] = ..., logprob: _Optional[float] = ..., top_ids: _Optional[_Iterable[int]] = ..., top_logprobs: _Optional[_Iterable[float]] = ...) -> None: ...

class SegmentTiming(_message.Message):
    __slots__ = ("name", "ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    ms: float
    def __init__(self, name: _Optional[str] = ..., ms: _Optional[float] = ...) -> None: ...

class FinalVerdict(_message.Message):
    __slots__ = ("round", "accepted", "next_token", "finished", "verify_ms", "queued_ms", "pipelined", "timings", "logprobs")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    NEXT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    VERIFY_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_MS_FIELD_NUMBER: _ClassVar[int]
    PIPELINED_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    round: int
    accepted: int
    next_token: int
    finished: bool
    verify_ms: float
    queued_ms: float
    pipelined: bool
    timings: _containers.RepeatedCompositeFieldContainer[SegmentTiming]
    logprobs: _containers.RepeatedCompositeFieldContainer[TokenLogprob]
    def __init__(self, round: _Optional[int] = ..., accepted: _Optional[int] = ..., next_token: _Optional[int] = ..., finished: _Optional[bool] = ..., verify_ms: _Optional[float] = ..., queued_ms: _Optional[float] = ..., pipelined: _Optional[bool] = ..., timings: _Optional[_Iterable[_Union[SegmentTiming, _Mapping]]] = ..., logprobs: _Optional[_Iterable[_Union[TokenLogprob, _Mapping]]] = ...) -> None: ...

class Tokens(_message.Message):
    __slots__ = ("ids", "finished", "compute_ms", "draft_ms", "drafted", "accepted", "logprobs")
    IDS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_MS_FIELD_NUMBER: _ClassVar[int]
    DRAFTED_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    finished: bool
    compute_ms: float
    draft_ms: float
    drafted: int
    accepted: int
    logprobs: _containers.RepeatedCompositeFieldContainer[TokenLogprob]
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., finished: _Optional[bool] = ..., compute_ms: _Optional[float] = ..., draft_ms: _Optional[float] = ..., drafted: _Optional[int] = ..., accepted: _Optional[int] = ..., logprobs: _Optional[_Iterable[_Union[TokenLogprob, _Mapping]]] = ...) -> None: ...

class Dropped(_message.Message):
    __slots__ = ("round",)
    ROUND_FIELD_NUMBER: _ClassVar[int]
    round: int
    def __init__(self, round: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ...) -> None: ...

class LimitsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerLimits(_message.Message):
    __slots__ = ("max_prompt_tokens", "max_new_tokens", "context_tokens", "max_message_bytes", "max_block")
    MAX_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_BLOCK_FIELD_NUMBER: _ClassVar[int]
    max_prompt_tokens: int
    max_new_tokens: int
    context_tokens: int
    max_message_bytes: int
    max_block: int
    def __init__(self, max_prompt_tokens: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., context_tokens: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_block: _Optional[int] = ...) -> None: ...
