"""API access: bearer tokens with scopes, the table of which call needs which scope, protected mode.

A token carries one or more scopes: `produce` (enqueue), `consume` (dequeue, ack, nack, extend)
and `admin` (queue settings, deletion, dead-letter redrive, membership, leadership). Reads (GET,
and the read-only gRPC calls) need any valid token. `HTTP_SCOPES` and `GRPC_SCOPES` below are the
one place that says which call needs what; the HTTP middleware and the gRPC interceptor here
both read them, and a test checks that every route and every RPC is listed.

Token files hold one token per line, optionally followed by its scopes: ``TOKEN`` (all scopes) or
``TOKEN produce,consume``; blank lines and ``#`` comments are skipped. A per-scope file
(``--admin-token-file`` ...) holds tokens of that scope only, one per line. The variables in
`TOKEN_ENV` hold one token each (``RANKQ_API_TOKEN``: all scopes; ``RANKQ_ADMIN_TOKEN``: admin ...).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from enum import Enum

import grpc


class Scope(str, Enum):
    PRODUCE = "produce"
    CONSUME = "consume"
    ADMIN = "admin"


ALL_SCOPES: frozenset[Scope] = frozenset(Scope)
READ = None  # any valid token, whatever its scopes

# (method, path template) -> scope needed. Templates are the FastAPI route paths.
HTTP_SCOPES: dict[tuple[str, str], Scope | None] = {
    ("POST", "/api/v1/queues"): Scope.ADMIN,
    ("GET", "/api/v1/queues"): READ,
    ("GET", "/api/v1/queues/{name}"): READ,
    ("PATCH", "/api/v1/queues/{name}"): Scope.ADMIN,
    ("DELETE", "/api/v1/queues/{name}"): Scope.ADMIN,
    ("POST", "/api/v1/queues/{name}/messages"): Scope.PRODUCE,
    ("POST", "/api/v1/queues/{name}/messages/batch"): Scope.PRODUCE,
    ("PUT", "/api/v1/queues/{name}/messages/{id}/priority"): Scope.PRODUCE,
    ("POST", "/api/v1/queues/{name}/dequeue"): Scope.CONSUME,
    ("POST", "/api/v1/queues/{name}/messages/{id}/ack"): Scope.CONSUME,
    ("POST", "/api/v1/queues/{name}/ack"): Scope.CONSUME,
    ("POST", "/api/v1/queues/{name}/messages/{id}/nack"): Scope.CONSUME,
    ("POST", "/api/v1/queues/{name}/messages/{id}/extend"): Scope.CONSUME,
    ("POST", "/api/v1/queues/{name}/messages/{id}/release"): Scope.CONSUME,
    ("GET", "/api/v1/queues/{name}/messages/{id}"): READ,
    # cancels a waiting message or deletes a dead letter
    ("DELETE", "/api/v1/queues/{name}/messages/{id}"): Scope.ADMIN,
    ("GET", "/api/v1/queues/{name}/dlq"): READ,
    ("POST", "/api/v1/queues/{name}/dlq/redrive"): Scope.ADMIN,
    ("GET", "/api/v1/queues/{name}/redrive"): READ,
    ("DELETE", "/api/v1/queues/{name}/redrive"): Scope.ADMIN,
    ("GET", "/api/v1/cluster"): READ,
    ("POST", "/api/v1/cluster/members"): Scope.ADMIN,
    ("DELETE", "/api/v1/cluster/members/{member}"): Scope.ADMIN,
    ("POST", "/api/v1/cluster/transfer-leader"): Scope.ADMIN,
    ("GET", "/api/v1/backup"): Scope.ADMIN,  # every message of every queue: not a plain read
    ("POST", "/api/v1/restore"): Scope.ADMIN,
    ("GET", "/api/v1/archive"): READ,
    ("GET", "/api/v1/queues/{name}/peek"): READ,  # the dashboard's reads: as GET message and the DLQ list
    ("GET", "/api/v1/dashboard/stream"): READ,
    ("GET", "/api/v1/dashboard/snapshot"): READ,
}

# rankq.v1.RankQ method -> scope needed.
GRPC_SCOPES: dict[str, Scope | None] = {
    "CreateQueue": Scope.ADMIN,
    "ListQueues": READ,
    "GetQueue": READ,
    "UpdateQueue": Scope.ADMIN,
    "DeleteQueue": Scope.ADMIN,
    "Enqueue": Scope.PRODUCE,
    "EnqueueBatch": Scope.PRODUCE,
    "EnqueueStream": Scope.PRODUCE,
    "SetPriority": Scope.PRODUCE,
    "Dequeue": Scope.CONSUME,
    "DequeueStream": Scope.CONSUME,
    "Ack": Scope.CONSUME,
    "AckBatch": Scope.CONSUME,
    "Nack": Scope.CONSUME,
    "Extend": Scope.CONSUME,
    "Release": Scope.CONSUME,
    "GetMessage": READ,
    "CancelMessage": Scope.ADMIN,
    "ListDeadLetters": READ,
    "Redrive": Scope.ADMIN,
    "GetRedrive": READ,
    "StopRedrive": Scope.ADMIN,
}

# Anything under /api/ that the table does not name (a typo, an unknown route) needs a valid token
# and is then answered by the router (404/405); a route added without a table entry needs admin.
UNLISTED = Scope.ADMIN

UNAUTHENTICATED_DETAIL = "missing or wrong API token: send Authorization: Bearer <token>"


class AuthConfigError(ValueError):
    """The server's token or TLS configuration cannot be used; the server refuses to start."""


def missing_scope_detail(scope: Scope) -> str:
    return f"this token lacks the '{scope.value}' scope this call needs"


# ---- tokens ---------------------------------------------------------------------------------------


def _digest(token: str | bytes) -> bytes:
    return hashlib.sha256(token.encode() if isinstance(token, str) else token).digest()


class Tokens:
    """The accepted tokens and their scopes. Tokens are kept as SHA-256 digests and looked up by
    digest, so a lookup's time does not depend on how much of a wrong token matches."""

    def __init__(self, scopes_by_token: Mapping[str, Iterable[Scope]]) -> None:
        self._by_digest: dict[bytes, frozenset[Scope]] = {}
        for token, scopes in scopes_by_token.items():
            if not token:
                raise AuthConfigError("an API token is empty")
            digest = _digest(token)
            self._by_digest[digest] = self._by_digest.get(digest, frozenset()) | frozenset(scopes)

    def __bool__(self) -> bool:
        return bool(self._by_digest)

    def __len__(self) -> int:
        return len(self._by_digest)

    def scopes(self, token: str | bytes) -> frozenset[Scope] | None:
        """The scopes of `token`, or None when it is not a token of this server."""
        return self._by_digest.get(_digest(token)) if token else None

    def check(self, authorization: str | bytes | None, needed: Scope | None) -> tuple[int, str] | None:
        """None when an `Authorization` value may make a call that needs `needed`; else the HTTP
        status (401 or 403) and the detail to answer with."""
        if isinstance(authorization, str):
            authorization = authorization.encode()
        scheme, _, token = (authorization or b"").partition(b" ")
        granted = self.scopes(token.strip()) if scheme.lower() == b"bearer" else None
        if granted is None:
            return 401, UNAUTHENTICATED_DETAIL
        if needed is not None and needed not in granted:
            return 403, missing_scope_detail(needed)
        return None


def parse_token_lines(text: str, source: str, only: Scope | None = None) -> dict[str, frozenset[Scope]]:
    """Tokens from a token file's text: `TOKEN [scope,scope]` per line. With `only`, the file is a
    per-scope file: every token gets that scope and naming scopes is an error."""
    out: dict[str, frozenset[Scope]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        token, *rest = line.split()
        if only is not None:
            if rest:
                raise AuthConfigError(f"{source}:{n}: a {only.value} token file holds one token per line, nothing else")
            scopes = frozenset({only})
        elif len(rest) > 1:
            raise AuthConfigError(
                f"{source}:{n}: expected 'TOKEN' or 'TOKEN scope,scope' (scopes: {', '.join(s.value for s in Scope)})"
            )
        elif rest:
            try:
                scopes = frozenset(Scope(s.strip()) for s in rest[0].split(",") if s.strip())
            except ValueError:
                scopes = frozenset()
            if not scopes:
                raise AuthConfigError(
                    f"{source}:{n}: unknown scope in {rest[0]!r} (scopes: {', '.join(s.value for s in Scope)})"
                )
        else:
            scopes = ALL_SCOPES
        out[token] = out.get(token, frozenset()) | scopes
    if not out:
        raise AuthConfigError(f"{source} holds no token (it is empty): put a token in it, or leave the option out")
    return out


# Environment variables holding one token each, and the scopes it gets (Kubernetes passes Secrets so).
TOKEN_ENV: dict[str, frozenset[Scope]] = {
    "RANKQ_API_TOKEN": ALL_SCOPES,
    "RANKQ_PRODUCE_TOKEN": frozenset({Scope.PRODUCE}),
    "RANKQ_CONSUME_TOKEN": frozenset({Scope.CONSUME}),
    "RANKQ_ADMIN_TOKEN": frozenset({Scope.ADMIN}),
}


def load_tokens(
    api_token_files: Iterable[str] = (),
    scope_files: Mapping[Scope, Iterable[str]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, frozenset[Scope]]:
    """All tokens the server accepts, from `--api-token-file`, the per-scope files and the
    `TOKEN_ENV` variables. An empty source is an error, never 'no authentication'."""
    merged: dict[str, frozenset[Scope]] = {}

    def add(found: dict[str, frozenset[Scope]]) -> None:
        for token, scopes in found.items():
            merged[token] = merged.get(token, frozenset()) | scopes

    for name, scopes in TOKEN_ENV.items():
        value = (environ or {}).get(name)
        if value is None:
            continue
        if not value.strip() or len(value.split()) != 1:
            raise AuthConfigError(
                f"{name} is set but {'empty' if not value.strip() else 'not one token'}: set it to a token, or unset it"
            )
        add({value.strip(): scopes})
    for path in api_token_files:
        add(parse_token_lines(_read(path), path))
    for scope, paths in (scope_files or {}).items():
        for path in paths:
            add(parse_token_lines(_read(path), path, only=scope))
    return merged


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError) as err:
        raise AuthConfigError(f"cannot read token file {path}: {err}") from None


# ---- protected mode -------------------------------------------------------------------------------

TOKEN_OPTIONS = (
    "--api-token-file FILE, --produce-token-file / --consume-token-file / --admin-token-file FILE, "
    "or RANKQ_API_TOKEN / RANKQ_PRODUCE_TOKEN / RANKQ_CONSUME_TOKEN / RANKQ_ADMIN_TOKEN"
)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_protected_mode(host: str, tokens: Tokens, insecure_no_auth: bool) -> None:
    """A server reachable from other machines must have a token unless told otherwise."""
    if tokens and insecure_no_auth:
        raise AuthConfigError("--insecure-no-auth contradicts the API tokens given; drop one of them")
    if not tokens and not insecure_no_auth and not is_loopback(host):
        raise AuthConfigError(
            f"refusing to serve the API on {host or 'all addresses'} without authentication: give a token "
            f"({TOKEN_OPTIONS}), bind to 127.0.0.1, or pass --insecure-no-auth to serve without one"
        )


# ---- HTTP -----------------------------------------------------------------------------------------


def _template_regex(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "/?$")


_HTTP_PATTERNS: dict[str, list[tuple[re.Pattern[str], Scope | None]]] = {}
for (_method, _template), _scope in HTTP_SCOPES.items():
    _HTTP_PATTERNS.setdefault(_method, []).append((_template_regex(_template), _scope))


def http_scope(method: str, path: str) -> Scope | None:
    """The scope an /api/ request needs (HEAD reads like GET)."""
    for pattern, scope in _HTTP_PATTERNS.get("GET" if method == "HEAD" else method, ()):
        if pattern.match(path):
            return scope
    return UNLISTED if method not in ("GET", "HEAD") else READ


class ApiAuth:
    """ASGI middleware: `/api/` requests need `Authorization: Bearer <token>` with the scope the
    route needs (401 / 403 with a JSON `detail`); health, metrics and docs stay open."""

    def __init__(self, app, tokens: Tokens) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            return await self.app(scope, receive, send)
        authorization = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
                break
        refusal = self.tokens.check(authorization, http_scope(scope["method"], scope["path"]))
        if refusal is None:
            return await self.app(scope, receive, send)
        status, detail = refusal
        body = json.dumps({"detail": detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


# ---- gRPC -----------------------------------------------------------------------------------------

GRPC_CODES = {401: grpc.StatusCode.UNAUTHENTICATED, 403: grpc.StatusCode.PERMISSION_DENIED}


class GrpcAuth(grpc.aio.ServerInterceptor):
    """The gRPC twin of `ApiAuth`: calls of `service` need `authorization: Bearer <token>` metadata
    with the method's scope (UNAUTHENTICATED / PERMISSION_DENIED, `rankq-status` 401 / 403).
    Server reflection stays open."""

    def __init__(self, tokens: Tokens, service: str) -> None:
        self.tokens = tokens
        self.prefix = f"/{service}/"

    async def intercept_service(self, continuation, details):
        method = details.method
        if not method.startswith(self.prefix):
            return await continuation(details)
        authorization = next((v for k, v in details.invocation_metadata or () if k == "authorization"), None)
        refusal = self.tokens.check(authorization, GRPC_SCOPES.get(method[len(self.prefix) :], UNLISTED))
        handler = await continuation(details)
        if refusal is None or handler is None:
            return handler
        return _refusal(handler, *refusal)


def _refusal(handler: grpc.RpcMethodHandler, status: int, detail: str) -> grpc.RpcMethodHandler:
    code, trailer = GRPC_CODES[status], (("rankq-status", str(status)),)

    async def refuse(request, context):
        await context.abort(code, detail, trailing_metadata=trailer)

    async def refuse_stream(request, context):
        await context.abort(code, detail, trailing_metadata=trailer)
        yield  # pragma: no cover - makes this an async generator like the streaming handlers

    async def after_first(requests) -> None:
        """Take the client's first frame before refusing a request stream: a client still writing
        it when the call ends would see its write fail (INTERNAL) instead of the refusal."""
        async for _ in requests:
            break

    async def refuse_in(requests, context):
        await after_first(requests)
        await refuse(None, context)

    async def refuse_in_stream(requests, context):
        await after_first(requests)
        await context.abort(code, detail, trailing_metadata=trailer)
        yield  # pragma: no cover

    kind = (handler.request_streaming, handler.response_streaming)
    if kind == (False, False):
        return grpc.unary_unary_rpc_method_handler(refuse)
    if kind == (False, True):
        return grpc.unary_stream_rpc_method_handler(refuse_stream)
    if kind == (True, False):
        return grpc.stream_unary_rpc_method_handler(refuse_in)
    return grpc.stream_stream_rpc_method_handler(refuse_in_stream)
