from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers

DESCRIPTOR: _descriptor.FileDescriptor

class Weights(_message.Message):
    __slots__ = ("classes",)
    class ClassesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: int | None = ..., value: int | None = ...) -> None: ...

    CLASSES_FIELD_NUMBER: _ClassVar[int]
    classes: _containers.ScalarMap[int, int]
    def __init__(self, classes: _Mapping[int, int] | None = ...) -> None: ...

class QueueSettings(_message.Message):
    __slots__ = (
        "policy",
        "weights",
        "default_priority",
        "fair_groups",
        "group_max_inflight",
        "visibility_timeout",
        "max_deliveries",
        "dead_letter",
        "dead_letter_retention",
        "retention",
        "max_length",
        "max_payload_bytes",
        "dedup_window",
        "retry_base",
        "retry_max",
        "archive",
        "rate_limit",
        "rate_burst",
        "group_rate_limit",
        "max_inflight",
        "group_weights",
        "message_ttl",
        "dependency_failure",
        "dead_letter_queue",
    )
    POLICY_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    FAIR_GROUPS_FIELD_NUMBER: _ClassVar[int]
    GROUP_MAX_INFLIGHT_FIELD_NUMBER: _ClassVar[int]
    VISIBILITY_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    MAX_DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_RETENTION_FIELD_NUMBER: _ClassVar[int]
    RETENTION_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEDUP_WINDOW_FIELD_NUMBER: _ClassVar[int]
    RETRY_BASE_FIELD_NUMBER: _ClassVar[int]
    RETRY_MAX_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    RATE_BURST_FIELD_NUMBER: _ClassVar[int]
    GROUP_RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    MAX_INFLIGHT_FIELD_NUMBER: _ClassVar[int]
    GROUP_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_TTL_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCY_FAILURE_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_QUEUE_FIELD_NUMBER: _ClassVar[int]
    policy: str
    weights: Weights
    default_priority: int
    fair_groups: bool
    group_max_inflight: int
    visibility_timeout: float
    max_deliveries: int
    dead_letter: bool
    dead_letter_retention: float
    retention: float
    max_length: int
    max_payload_bytes: int
    dedup_window: float
    retry_base: float
    retry_max: float
    archive: bool
    rate_limit: int
    rate_burst: int
    group_rate_limit: int
    max_inflight: int
    group_weights: GroupWeights
    message_ttl: float
    dependency_failure: str
    dead_letter_queue: str
    def __init__(
        self,
        policy: str | None = ...,
        weights: Weights | _Mapping | None = ...,
        default_priority: int | None = ...,
        fair_groups: bool | None = ...,
        group_max_inflight: int | None = ...,
        visibility_timeout: float | None = ...,
        max_deliveries: int | None = ...,
        dead_letter: bool | None = ...,
        dead_letter_retention: float | None = ...,
        retention: float | None = ...,
        max_length: int | None = ...,
        max_payload_bytes: int | None = ...,
        dedup_window: float | None = ...,
        retry_base: float | None = ...,
        retry_max: float | None = ...,
        archive: bool | None = ...,
        rate_limit: int | None = ...,
        rate_burst: int | None = ...,
        group_rate_limit: int | None = ...,
        max_inflight: int | None = ...,
        group_weights: GroupWeights | _Mapping | None = ...,
        message_ttl: float | None = ...,
        dependency_failure: str | None = ...,
        dead_letter_queue: str | None = ...,
    ) -> None: ...

class GroupWeights(_message.Message):
    __slots__ = ("groups",)
    class GroupsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: str | None = ..., value: int | None = ...) -> None: ...

    GROUPS_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.ScalarMap[str, int]
    def __init__(self, groups: _Mapping[str, int] | None = ...) -> None: ...

class QueueCounts(_message.Message):
    __slots__ = ("ready", "delayed", "leased", "dead", "acked_retained", "backlog", "waiting")
    READY_FIELD_NUMBER: _ClassVar[int]
    DELAYED_FIELD_NUMBER: _ClassVar[int]
    LEASED_FIELD_NUMBER: _ClassVar[int]
    DEAD_FIELD_NUMBER: _ClassVar[int]
    ACKED_RETAINED_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    ready: int
    delayed: int
    leased: int
    dead: int
    acked_retained: int
    backlog: int
    waiting: int
    def __init__(
        self,
        ready: int | None = ...,
        delayed: int | None = ...,
        leased: int | None = ...,
        dead: int | None = ...,
        acked_retained: int | None = ...,
        backlog: int | None = ...,
        waiting: int | None = ...,
    ) -> None: ...

class QueueInfo(_message.Message):
    __slots__ = ("name", "settings", "counts", "totals", "created_at")
    class TotalsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: str | None = ..., value: int | None = ...) -> None: ...

    NAME_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    settings: QueueSettings
    counts: QueueCounts
    totals: _containers.ScalarMap[str, int]
    created_at: int
    def __init__(
        self,
        name: str | None = ...,
        settings: QueueSettings | _Mapping | None = ...,
        counts: QueueCounts | _Mapping | None = ...,
        totals: _Mapping[str, int] | None = ...,
        created_at: int | None = ...,
    ) -> None: ...

class CreateQueueRequest(_message.Message):
    __slots__ = ("name", "settings")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    name: str
    settings: QueueSettings
    def __init__(self, name: str | None = ..., settings: QueueSettings | _Mapping | None = ...) -> None: ...

class ListQueuesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListQueuesResponse(_message.Message):
    __slots__ = ("queues",)
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    queues: _containers.RepeatedCompositeFieldContainer[QueueInfo]
    def __init__(self, queues: _Iterable[QueueInfo | _Mapping] | None = ...) -> None: ...

class GetQueueRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: str | None = ...) -> None: ...

class UpdateQueueRequest(_message.Message):
    __slots__ = ("name", "settings", "clear")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    CLEAR_FIELD_NUMBER: _ClassVar[int]
    name: str
    settings: QueueSettings
    clear: _containers.RepeatedScalarFieldContainer[str]
    def __init__(
        self,
        name: str | None = ...,
        settings: QueueSettings | _Mapping | None = ...,
        clear: _Iterable[str] | None = ...,
    ) -> None: ...

class DeleteQueueRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: str | None = ...) -> None: ...

class DeleteQueueResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NewMessage(_message.Message):
    __slots__ = (
        "payload",
        "content_type",
        "priority",
        "group",
        "delay",
        "deliver_at",
        "headers",
        "dedup_key",
        "ttl",
        "expires_at",
        "depends_on",
    )
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: str | None = ..., value: str | None = ...) -> None: ...

    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    DELAY_FIELD_NUMBER: _ClassVar[int]
    DELIVER_AT_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    DEDUP_KEY_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    DEPENDS_ON_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    content_type: str
    priority: int
    group: str
    delay: float
    deliver_at: int
    headers: _containers.ScalarMap[str, str]
    dedup_key: str
    ttl: float
    expires_at: int
    depends_on: _containers.RepeatedCompositeFieldContainer[Dependency]
    def __init__(
        self,
        payload: bytes | None = ...,
        content_type: str | None = ...,
        priority: int | None = ...,
        group: str | None = ...,
        delay: float | None = ...,
        deliver_at: int | None = ...,
        headers: _Mapping[str, str] | None = ...,
        dedup_key: str | None = ...,
        ttl: float | None = ...,
        expires_at: int | None = ...,
        depends_on: _Iterable[Dependency | _Mapping] | None = ...,
    ) -> None: ...

class Dependency(_message.Message):
    __slots__ = ("queue", "id", "batch_index")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_INDEX_FIELD_NUMBER: _ClassVar[int]
    queue: str
    id: int
    batch_index: int
    def __init__(self, queue: str | None = ..., id: int | None = ..., batch_index: int | None = ...) -> None: ...

class EnqueueRequest(_message.Message):
    __slots__ = ("queue", "message", "ref")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    queue: str
    message: NewMessage
    ref: int
    def __init__(
        self, queue: str | None = ..., message: NewMessage | _Mapping | None = ..., ref: int | None = ...
    ) -> None: ...

class EnqueueResponse(_message.Message):
    __slots__ = ("id", "duplicate")
    ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    id: int
    duplicate: bool
    def __init__(self, id: int | None = ..., duplicate: bool | None = ...) -> None: ...

class EnqueueBatchRequest(_message.Message):
    __slots__ = ("queue", "messages")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    queue: str
    messages: _containers.RepeatedCompositeFieldContainer[NewMessage]
    def __init__(self, queue: str | None = ..., messages: _Iterable[NewMessage | _Mapping] | None = ...) -> None: ...

class EnqueueBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[EnqueueResponse]
    def __init__(self, results: _Iterable[EnqueueResponse | _Mapping] | None = ...) -> None: ...

class EnqueueStreamRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[EnqueueRequest]
    def __init__(self, requests: _Iterable[EnqueueRequest | _Mapping] | None = ...) -> None: ...

class EnqueueStreamResponse(_message.Message):
    __slots__ = ("acks",)
    ACKS_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedCompositeFieldContainer[EnqueueAck]
    def __init__(self, acks: _Iterable[EnqueueAck | _Mapping] | None = ...) -> None: ...

class EnqueueAck(_message.Message):
    __slots__ = ("ref", "id", "duplicate", "status", "code", "detail")
    REF_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ref: int
    id: int
    duplicate: bool
    status: int
    code: int
    detail: str
    def __init__(
        self,
        ref: int | None = ...,
        id: int | None = ...,
        duplicate: bool | None = ...,
        status: int | None = ...,
        code: int | None = ...,
        detail: str | None = ...,
    ) -> None: ...

class DequeueRequest(_message.Message):
    __slots__ = ("queue", "max", "wait", "visibility_timeout")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    VISIBILITY_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    queue: str
    max: int
    wait: float
    visibility_timeout: float
    def __init__(
        self,
        queue: str | None = ...,
        max: int | None = ...,
        wait: float | None = ...,
        visibility_timeout: float | None = ...,
    ) -> None: ...

class Delivery(_message.Message):
    __slots__ = (
        "id",
        "payload",
        "content_type",
        "priority",
        "group",
        "deliveries",
        "lease_token",
        "lease_expires_at",
        "enqueued_at",
        "headers",
    )
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: str | None = ..., value: str | None = ...) -> None: ...

    ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ENQUEUED_AT_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    id: int
    payload: bytes
    content_type: str
    priority: int
    group: str
    deliveries: int
    lease_token: str
    lease_expires_at: int
    enqueued_at: int
    headers: _containers.ScalarMap[str, str]
    def __init__(
        self,
        id: int | None = ...,
        payload: bytes | None = ...,
        content_type: str | None = ...,
        priority: int | None = ...,
        group: str | None = ...,
        deliveries: int | None = ...,
        lease_token: str | None = ...,
        lease_expires_at: int | None = ...,
        enqueued_at: int | None = ...,
        headers: _Mapping[str, str] | None = ...,
    ) -> None: ...

class DequeueResponse(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Delivery]
    def __init__(self, messages: _Iterable[Delivery | _Mapping] | None = ...) -> None: ...

class Grant(_message.Message):
    __slots__ = ("queue", "visibility_timeout", "credits")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    VISIBILITY_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    queue: str
    visibility_timeout: float
    credits: int
    def __init__(
        self, queue: str | None = ..., visibility_timeout: float | None = ..., credits: int | None = ...
    ) -> None: ...

class SetPriorityRequest(_message.Message):
    __slots__ = ("queue", "id", "priority")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    queue: str
    id: int
    priority: int
    def __init__(self, queue: str | None = ..., id: int | None = ..., priority: int | None = ...) -> None: ...

class GetMessageRequest(_message.Message):
    __slots__ = ("queue", "id")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    queue: str
    id: int
    def __init__(self, queue: str | None = ..., id: int | None = ...) -> None: ...

class MessageStatus(_message.Message):
    __slots__ = (
        "id",
        "queue",
        "state",
        "priority",
        "group",
        "deliveries",
        "enqueued_at",
        "available_at",
        "lease_expires_at",
        "acked_at",
        "last_error",
        "result_json",
        "headers",
        "dedup_key",
        "payload",
        "content_type",
        "depends_on",
        "expires_at",
        "dead_reason",
    )
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: str | None = ..., value: str | None = ...) -> None: ...

    ID_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    ENQUEUED_AT_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_AT_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ACKED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    DEDUP_KEY_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    DEPENDS_ON_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    DEAD_REASON_FIELD_NUMBER: _ClassVar[int]
    id: int
    queue: str
    state: str
    priority: int
    group: str
    deliveries: int
    enqueued_at: int
    available_at: int
    lease_expires_at: int
    acked_at: int
    last_error: str
    result_json: str
    headers: _containers.ScalarMap[str, str]
    dedup_key: str
    payload: bytes
    content_type: str
    depends_on: _containers.RepeatedCompositeFieldContainer[Dependency]
    expires_at: int
    dead_reason: str
    def __init__(
        self,
        id: int | None = ...,
        queue: str | None = ...,
        state: str | None = ...,
        priority: int | None = ...,
        group: str | None = ...,
        deliveries: int | None = ...,
        enqueued_at: int | None = ...,
        available_at: int | None = ...,
        lease_expires_at: int | None = ...,
        acked_at: int | None = ...,
        last_error: str | None = ...,
        result_json: str | None = ...,
        headers: _Mapping[str, str] | None = ...,
        dedup_key: str | None = ...,
        payload: bytes | None = ...,
        content_type: str | None = ...,
        depends_on: _Iterable[Dependency | _Mapping] | None = ...,
        expires_at: int | None = ...,
        dead_reason: str | None = ...,
    ) -> None: ...

class CancelMessageRequest(_message.Message):
    __slots__ = ("queue", "id")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    queue: str
    id: int
    def __init__(self, queue: str | None = ..., id: int | None = ...) -> None: ...

class CancelMessageResponse(_message.Message):
    __slots__ = ("id", "state", "was")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    WAS_FIELD_NUMBER: _ClassVar[int]
    id: int
    state: str
    was: str
    def __init__(self, id: int | None = ..., state: str | None = ..., was: str | None = ...) -> None: ...

class AckRequest(_message.Message):
    __slots__ = ("queue", "id", "lease_token", "result_json")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    queue: str
    id: int
    lease_token: str
    result_json: str
    def __init__(
        self,
        queue: str | None = ...,
        id: int | None = ...,
        lease_token: str | None = ...,
        result_json: str | None = ...,
    ) -> None: ...

class AckResponse(_message.Message):
    __slots__ = ("id", "state")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    id: int
    state: str
    def __init__(self, id: int | None = ..., state: str | None = ...) -> None: ...

class AckItem(_message.Message):
    __slots__ = ("id", "lease_token", "result_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    id: int
    lease_token: str
    result_json: str
    def __init__(self, id: int | None = ..., lease_token: str | None = ..., result_json: str | None = ...) -> None: ...

class AckBatchRequest(_message.Message):
    __slots__ = ("queue", "items")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    queue: str
    items: _containers.RepeatedCompositeFieldContainer[AckItem]
    def __init__(self, queue: str | None = ..., items: _Iterable[AckItem | _Mapping] | None = ...) -> None: ...

class AckOutcome(_message.Message):
    __slots__ = ("id", "ok", "status", "detail")
    ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    id: int
    ok: bool
    status: int
    detail: str
    def __init__(
        self, id: int | None = ..., ok: bool | None = ..., status: int | None = ..., detail: str | None = ...
    ) -> None: ...

class AckBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[AckOutcome]
    def __init__(self, results: _Iterable[AckOutcome | _Mapping] | None = ...) -> None: ...

class NackRequest(_message.Message):
    __slots__ = ("queue", "id", "lease_token", "delay", "error", "dead")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DELAY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DEAD_FIELD_NUMBER: _ClassVar[int]
    queue: str
    id: int
    lease_token: str
    delay: float
    error: str
    dead: bool
    def __init__(
        self,
        queue: str | None = ...,
        id: int | None = ...,
        lease_token: str | None = ...,
        delay: float | None = ...,
        error: str | None = ...,
        dead: bool | None = ...,
    ) -> None: ...

class NackResponse(_message.Message):
    __slots__ = ("id", "state", "available_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_AT_FIELD_NUMBER: _ClassVar[int]
    id: int
    state: str
    available_at: int
    def __init__(self, id: int | None = ..., state: str | None = ..., available_at: int | None = ...) -> None: ...

class ExtendRequest(_message.Message):
    __slots__ = ("queue", "id", "lease_token", "visibility_timeout")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    VISIBILITY_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    queue: str
    id: int
    lease_token: str
    visibility_timeout: float
    def __init__(
        self,
        queue: str | None = ...,
        id: int | None = ...,
        lease_token: str | None = ...,
        visibility_timeout: float | None = ...,
    ) -> None: ...

class ExtendResponse(_message.Message):
    __slots__ = ("id", "lease_expires_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    id: int
    lease_expires_at: int
    def __init__(self, id: int | None = ..., lease_expires_at: int | None = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("queue", "id", "lease_token")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    queue: str
    id: int
    lease_token: str
    def __init__(self, queue: str | None = ..., id: int | None = ..., lease_token: str | None = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("id", "state")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    id: int
    state: str
    def __init__(self, id: int | None = ..., state: str | None = ...) -> None: ...

class ListDeadLettersRequest(_message.Message):
    __slots__ = ("queue", "after", "limit")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    queue: str
    after: int
    limit: int
    def __init__(self, queue: str | None = ..., after: int | None = ..., limit: int | None = ...) -> None: ...

class ListDeadLettersResponse(_message.Message):
    __slots__ = ("messages", "next_after")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[MessageStatus]
    next_after: int
    def __init__(
        self, messages: _Iterable[MessageStatus | _Mapping] | None = ..., next_after: int | None = ...
    ) -> None: ...

class RedriveRequest(_message.Message):
    __slots__ = ("queue", "ids", "all", "rate")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    queue: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    all: bool
    rate: int
    def __init__(
        self, queue: str | None = ..., ids: _Iterable[int] | None = ..., all: bool | None = ..., rate: int | None = ...
    ) -> None: ...

class RedriveResponse(_message.Message):
    __slots__ = ("redriven", "not_found", "job")
    REDRIVEN_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    redriven: _containers.RepeatedScalarFieldContainer[int]
    not_found: _containers.RepeatedScalarFieldContainer[int]
    job: RedriveJob
    def __init__(
        self,
        redriven: _Iterable[int] | None = ...,
        not_found: _Iterable[int] | None = ...,
        job: RedriveJob | _Mapping | None = ...,
    ) -> None: ...

class RedriveJobRequest(_message.Message):
    __slots__ = ("queue",)
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    queue: str
    def __init__(self, queue: str | None = ...) -> None: ...

class RedriveJob(_message.Message):
    __slots__ = ("rate", "total", "moved", "remaining", "started_at", "state")
    RATE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    MOVED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    rate: int
    total: int
    moved: int
    remaining: int
    started_at: int
    state: str
    def __init__(
        self,
        rate: int | None = ...,
        total: int | None = ...,
        moved: int | None = ...,
        remaining: int | None = ...,
        started_at: int | None = ...,
        state: str | None = ...,
    ) -> None: ...
