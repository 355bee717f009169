"""API access: tokens and their scopes over HTTP and gRPC, protected mode, empty tokens, TLS."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import subprocess
import sys

import grpc
import httpx
import pytest
from click.testing import CliRunner

from rankq import Client, ForbiddenError, TransportError, UnauthorizedError
from rankq.server import auth
from rankq.server.auth import GRPC_SCOPES, HTTP_SCOPES, AuthConfigError, Scope
from rankq.server.proto import rankq_pb2 as pb
from rankq.server.proto import rankq_pb2_grpc as pb_grpc

ALL, ADMIN, PRODUCE, CONSUME = "all-scopes-token", "admin-token", "produce-token", "consume-token"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """One server with an all-scope and an admin token (one file, `TOKEN [scopes]` lines) and a
    produce and a consume token (one file per scope)."""
    from serverproc import ServerProcess

    root = tmp_path_factory.mktemp("auth")
    (root / "tokens").write_text(f"# comment\n{ALL}\n\n{ADMIN} admin\n")
    (root / "produce").write_text(PRODUCE + "\n")
    (root / "consume").write_text(CONSUME + "\n")
    srv = ServerProcess(
        str(root / "node"),
        grpc=True,
        extra=[
            "--api-token-file",
            str(root / "tokens"),
            "--produce-token-file",
            str(root / "produce"),
            "--consume-token-file",
            str(root / "consume"),
        ],
    ).start()
    yield srv
    srv.stop()


def test_http_requires_the_token_but_health_stays_open(secured):
    r = httpx.get(secured.url + "/api/v1/queues")
    assert r.status_code == 401 and "token" in r.json()["detail"]
    r = httpx.get(secured.url + "/api/v1/queues", headers=bearer("wrong"))
    assert r.status_code == 401
    for token in (ALL, ADMIN, PRODUCE, CONSUME):  # reads need any valid token
        assert httpx.get(secured.url + "/api/v1/queues", headers=bearer(token)).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert httpx.get(secured.url + path).status_code == 200, path


def test_http_scopes(secured):
    api = secured.url + "/api/v1"
    # admin: queue settings; produce and consume may not
    for token in (PRODUCE, CONSUME):
        r = httpx.post(api + "/queues", json={"name": "scoped"}, headers=bearer(token))
        assert r.status_code == 403 and "'admin'" in r.json()["detail"], r.text
    assert httpx.post(api + "/queues", json={"name": "scoped"}, headers=bearer(ADMIN)).status_code == 201
    r = httpx.patch(api + "/queues/scoped", json={"max_deliveries": 1}, headers=bearer(PRODUCE))
    assert r.status_code == 403
    assert httpx.patch(api + "/queues/scoped", json={"max_deliveries": 1}, headers=bearer(ADMIN)).status_code == 200
    # produce: enqueue; consume and admin may not
    for token in (CONSUME, ADMIN):
        r = httpx.post(api + "/queues/scoped/messages", json={"payload": 1}, headers=bearer(token))
        assert r.status_code == 403 and "'produce'" in r.json()["detail"]
    r = httpx.post(api + "/queues/scoped/messages/batch", json={"messages": [{"payload": 1}]}, headers=bearer(CONSUME))
    assert r.status_code == 403
    assert httpx.post(api + "/queues/scoped/messages", json={"payload": 1}, headers=bearer(PRODUCE)).status_code == 201
    # consume: dequeue and nack; produce may not
    r = httpx.post(api + "/queues/scoped/dequeue", json={"max": 1}, headers=bearer(PRODUCE))
    assert r.status_code == 403 and "'consume'" in r.json()["detail"]
    r = httpx.post(api + "/queues/scoped/dequeue", json={"max": 1}, headers=bearer(CONSUME))
    [msg] = r.json()["messages"]
    nack = f"/queues/scoped/messages/{msg['id']}/nack"
    r = httpx.post(api + nack, json={"lease_token": msg["lease_token"]}, headers=bearer(PRODUCE))
    assert r.status_code == 403
    r = httpx.post(api + nack, json={"lease_token": msg["lease_token"]}, headers=bearer(CONSUME))
    assert r.status_code == 200 and r.json()["state"] == "dead"  # max_deliveries 1
    # admin: dead-letter redrive and membership; nothing changes on a refusal
    r = httpx.post(api + "/queues/scoped/dlq/redrive", json={}, headers=bearer(CONSUME))
    assert r.status_code == 403
    assert httpx.get(api + "/queues/scoped", headers=bearer(CONSUME)).json()["counts"]["dead"] == 1
    assert httpx.post(api + "/queues/scoped/dlq/redrive", json={}, headers=bearer(ADMIN)).status_code == 200
    before = httpx.get(api + "/cluster", headers=bearer(PRODUCE)).json()["members"]
    for path in ("/cluster/members", "/cluster/transfer-leader"):
        r = httpx.post(api + path, json={"address": "127.0.0.1:1"}, headers=bearer(PRODUCE))
        assert r.status_code == 403 and "'admin'" in r.json()["detail"], path
    r = httpx.delete(api + "/cluster/members/x", headers=bearer(CONSUME))
    assert r.status_code == 403
    assert httpx.get(api + "/cluster", headers=bearer(PRODUCE)).json()["members"] == before
    r = httpx.delete(api + "/queues/scoped", headers=bearer(PRODUCE))
    assert r.status_code == 403
    assert httpx.delete(api + "/queues/scoped", headers=bearer(ALL)).status_code == 204
    # an unknown route needs a valid token, and then gets the router's own answer
    assert httpx.get(api + "/nope").status_code == 401
    assert httpx.get(api + "/nope", headers=bearer(CONSUME)).status_code == 404


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_clients_send_the_token(secured, scheme, tmp_path):
    url = secured.url if scheme == "http" else f"grpc://127.0.0.1:{secured.grpc_port}"
    q = f"authq-{scheme}"
    (tmp_path / "token").write_text(ALL + "\n")
    with Client(url, token_file=str(tmp_path / "token")) as rq:
        rq.create_queue(q)
        rq.enqueue(q, {"ok": 1})
        assert rq.get_queue(q).counts.ready == 1
    with Client(url, token="nope", retries=0) as rq:
        with pytest.raises(UnauthorizedError):
            rq.list_queues()
    with Client(url, retries=0) as rq:
        with pytest.raises(UnauthorizedError):
            rq.enqueue(q, {"ok": 2})
    with Client(url, token=PRODUCE, retries=0) as rq:
        rq.enqueue(q, {"ok": 3})
        with pytest.raises(ForbiddenError, match="consume"):
            rq.dequeue(q)
        with pytest.raises(ForbiddenError, match="admin"):
            rq.delete_queue(q)
    with Client(url, token=CONSUME, retries=0) as rq:
        assert len(rq.dequeue(q, max=10)) == 2
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="no token"):
        Client(url, token_file=str(tmp_path / "empty"))


def test_grpc_codes_per_scope(secured):
    """Refusals carry gRPC's own codes, for unary and streaming calls alike."""

    async def run():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{secured.grpc_port}") as channel:
            stub = pb_grpc.RankQStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ListQueues(pb.ListQueuesRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            meta = (("authorization", f"Bearer {PRODUCE}"),)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.CreateQueue(pb.CreateQueueRequest(name="g-scoped"), timeout=5, metadata=meta)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "admin" in err.value.details()
            for _ in range(20):  # the refusal, never a failed write, whenever the server answers
                call = stub.DequeueStream(timeout=5, metadata=meta)
                await call.write(pb.Grant(queue="g-scoped", credits=1))
                assert await call.code() == grpc.StatusCode.PERMISSION_DENIED
                assert dict(await call.trailing_metadata())["rankq-status"] == "403"
            await stub.ListQueues(pb.ListQueuesRequest(), timeout=5, metadata=meta)  # reads pass
            # bytes that are no EnqueueRequest: without a token the answer is the refusal, not a
            # parse error (nothing a caller without a token sends is decoded); with one, 422
            raw = channel.unary_unary("/rankq.v1.RankQ/Enqueue")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await raw(b"\xff\xff\xff", timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await raw(b"\xff\xff\xff", timeout=5, metadata=meta)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    import asyncio

    asyncio.run(run())


# ---- the table --------------------------------------------------------------------------------------


def test_every_route_and_rpc_has_a_scope():
    from rankq.server.http_api import build_app

    app = build_app(None)
    paths = app.openapi()["paths"]
    routes = {(m.upper(), p) for p, ops in paths.items() if p.startswith("/api/") for m in ops}
    assert routes and routes <= set(HTTP_SCOPES), routes - set(HTTP_SCOPES)
    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["RankQ"].methods}
    assert methods <= set(GRPC_SCOPES), methods - set(GRPC_SCOPES)
    for (method, path), scope in HTTP_SCOPES.items():  # the matcher finds each route's own entry
        concrete = path.replace("{name}", "q").replace("{id}", "7").replace("{member}", "n1")
        assert auth.http_scope(method, concrete) == scope, (method, path)


def test_token_file_format():
    lines = auth.parse_token_lines("# c\nt1\nt2 produce,consume\n t3  admin \n", "f")
    assert lines == {"t1": auth.ALL_SCOPES, "t2": {Scope.PRODUCE, Scope.CONSUME}, "t3": {Scope.ADMIN}}
    for bad, why in [
        ("", "empty"),
        ("# only a comment\n", "empty"),
        ("t1 read", "unknown scope"),
        ("t1 ,", "unknown scope"),
        ("t1 admin extra", "expected"),
    ]:
        with pytest.raises(AuthConfigError, match=why):
            auth.parse_token_lines(bad, "f")
    with pytest.raises(AuthConfigError, match="one token per line"):
        auth.parse_token_lines("t1 admin", "f", only=Scope.PRODUCE)
    for name in auth.TOKEN_ENV:
        with pytest.raises(AuthConfigError, match=f"{name} is set but empty"):
            auth.load_tokens(environ={name: " "})
    found = auth.load_tokens(environ={"RANKQ_API_TOKEN": "a", "RANKQ_CONSUME_TOKEN": "c"})
    assert found == {"a": auth.ALL_SCOPES, "c": {Scope.CONSUME}}


# ---- protected mode ----------------------------------------------------------------------------------


def start_server(tmp_path, *args: str, env_token: str | None = None, wait: float = 60):
    """Run `rankq server` with `args`; returns the finished process, or the running one."""
    from serverproc import free_port

    env = {k: v for k, v in os.environ.items() if k not in auth.TOKEN_ENV}
    if env_token is not None:
        env["RANKQ_API_TOKEN"] = env_token
    cmd = [
        sys.executable,
        "-m",
        "rankq.cli",
        "server",
        "--data-dir",
        str(tmp_path / "data"),
        "--http-port",
        str(free_port()),
        "--grpc-port",
        "0",
        "--raft-port",
        str(free_port()),
        *args,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=wait)


def test_non_loopback_bind_without_token_refuses_to_start(tmp_path):
    done = start_server(tmp_path, "--host", "0.0.0.0")
    assert done.returncode == 2
    assert (
        "--insecure-no-auth" in done.stderr and "--api-token-file" in done.stderr and "RANKQ_API_TOKEN" in done.stderr
    )
    assert not (tmp_path / "data").exists() or not os.listdir(tmp_path / "data")


@pytest.mark.parametrize("how", ["insecure", "token"])
def test_non_loopback_bind_starts_with_a_token_or_insecure_no_auth(tmp_path, how):
    from serverproc import ServerProcess

    token = tmp_path / "token"
    token.write_text("t0k3n\n")
    args = ["--insecure-no-auth"] if how == "insecure" else ["--api-token-file", str(token)]
    srv = ServerProcess(str(tmp_path / "node"), extra=["--host", "0.0.0.0", *args])  # the last --host wins
    try:
        srv.start()
        r = httpx.get(srv.url + "/api/v1/queues")  # traffic only to loopback
        assert r.status_code == (200 if how == "insecure" else 401)
    finally:
        srv.stop()


@pytest.mark.parametrize("empty", ["file", "env", "scope-file"])  # finding 6
def test_empty_token_is_refused(tmp_path, empty):
    (tmp_path / "token").write_text("  \n\n")
    args = {
        "file": ["--api-token-file", str(tmp_path / "token")],
        "scope-file": ["--admin-token-file", str(tmp_path / "token")],
        "env": [],
    }[empty]
    done = start_server(tmp_path, "--host", "127.0.0.1", *args, env_token="" if empty == "env" else None)
    assert done.returncode == 2, done.stderr
    assert "empty" in done.stderr


def test_protected_mode_rules():
    none = auth.Tokens({})
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        auth.check_protected_mode(host, none, False)
    for host in ("0.0.0.0", "::", "10.0.0.5", "example.com", ""):
        with pytest.raises(AuthConfigError, match="--insecure-no-auth"):
            auth.check_protected_mode(host, none, False)
        auth.check_protected_mode(host, none, True)
    with pytest.raises(AuthConfigError, match="contradicts"):
        auth.check_protected_mode("0.0.0.0", auth.Tokens({"t": auth.ALL_SCOPES}), True)


# ---- TLS --------------------------------------------------------------------------------------------


def make_ca_and_cert(root) -> tuple[str, str, str]:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rankq test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = [os.path.join(root, n) for n in ("ca.crt", "tls.crt", "tls.key")]
    with open(paths[0], "wb") as fh:
        fh.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    os.chmod(paths[2], 0o600)
    return tuple(paths)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    from serverproc import ServerProcess

    root = tmp_path_factory.mktemp("tls")
    ca, cert, key = make_ca_and_cert(str(root))
    (root / "token").write_text(ALL + "\n")
    srv = ServerProcess(
        str(root / "node"),
        grpc=True,
        ca=ca,
        extra=["--tls-cert", cert, "--tls-key", key, "--api-token-file", str(root / "token")],
    ).start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("scheme", ["https", "grpcs"])
def test_tls_with_the_ca_works_and_without_it_fails(tls_server, scheme):
    port = tls_server.http_port if scheme == "https" else tls_server.grpc_port
    url = f"{scheme}://127.0.0.1:{port}"
    with Client(url, token=ALL, ca=tls_server.ca) as rq:
        rq.create_queue(f"tls-{scheme}")
        rq.enqueue(f"tls-{scheme}", {"secret": True})
        [msg] = rq.dequeue(f"tls-{scheme}")
        assert msg.payload == {"secret": True}
        rq.ack(msg)
    with Client(url, token=ALL, retries=0, timeout=5) as rq:  # the system CAs do not know the test CA
        with pytest.raises(TransportError):
            rq.list_queues()
    plain = "http" if scheme == "https" else "grpc"
    with Client(f"{plain}://127.0.0.1:{port}", token=ALL, retries=0, timeout=5) as rq:
        with pytest.raises(TransportError):
            rq.list_queues()
    with pytest.raises(ValueError, match="TLS"):
        Client(f"{plain}://127.0.0.1:{port}", ca=tls_server.ca)


def test_cli_with_ca_and_token_file(tls_server, tmp_path):
    from rankq.cli import main

    (tmp_path / "token").write_text(ALL + "\n")
    runner = CliRunner()
    base = ["--url", tls_server.url, "--ca", tls_server.ca, "--token-file", str(tmp_path / "token"), "-o", "json"]
    r = runner.invoke(main, [*base, "queue", "create", "tls-cli"], env={"RANKQ_API_TOKEN": None})
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, [*base, "queue", "list"], env={"RANKQ_API_TOKEN": None})
    assert r.exit_code == 0 and "tls-cli" in r.output
    r = runner.invoke(
        main,
        ["--url", tls_server.url, "--token-file", str(tmp_path / "token"), "--timeout", "3", "queue", "list"],
        env={"RANKQ_API_TOKEN": None},
    )
    assert r.exit_code == 1 and "error" in r.output


def test_tls_server_refuses_a_bad_key(tmp_path):
    ca, cert, _ = make_ca_and_cert(str(tmp_path))
    done = start_server(tmp_path, "--tls-cert", cert, "--tls-key", ca)
    assert done.returncode == 2 and "TLS" in done.stderr


def test_group_over_tls_forwards_a_transfer_to_the_leader(tmp_path):
    """A follower hands transfer-leader to the leader over HTTPS (trusting --tls-ca) with the
    caller's token; the caller needs the admin scope."""
    from serverproc import Cluster, ServerProcess, wait_for

    ca, cert, key = make_ca_and_cert(str(tmp_path))
    (tmp_path / "tokens").write_text(f"{ADMIN} admin\n{PRODUCE} produce\n")
    group = Cluster(str(tmp_path / "g"), 3)
    for node in group.nodes:
        node.ca = ca
        node.extra += [
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--tls-ca",
            ca,
            "--api-token-file",
            str(tmp_path / "tokens"),
        ]
    verify = ssl.create_default_context(cafile=ca)
    try:
        group.start()

        def status(node: ServerProcess) -> dict:
            return httpx.get(node.url + "/api/v1/cluster", headers=bearer(PRODUCE), verify=verify, timeout=2).json()

        ids = {n.node_id for n in group.nodes}
        # A leader is named by its node id once it has published it (before that, by its address).
        leader_id = wait_for(lambda: (lead := status(group.nodes[0]).get("leader")) in ids and lead, 20, "a leader")
        follower = next(n for n in group.nodes if n.node_id != leader_id)
        target = next(n for n in group.nodes if n.node_id not in (leader_id, follower.node_id))

        def follower_can_reach_the_leader() -> bool:
            # Members publish their URLs through the log after they start: wait until the
            # follower knows the leader's, as a forwarded call needs it.
            st = status(follower)
            lead = next((m for m in st["members"] if m["role"] == "leader"), {})
            return st.get("leader") == leader_id and (lead.get("http_url") or "").startswith("https://")

        def both_know_the_target() -> bool:  # node ids are published through the log too
            return all(
                target.node_id in {m["id"] for m in status(n)["members"]}
                for n in group.nodes
                if n.node_id in (leader_id, follower.node_id)
            )

        wait_for(follower_can_reach_the_leader, 20, "the follower to know the leader's URL")
        wait_for(both_know_the_target, 20, "the follower and the leader to know the target's node id")
        url = follower.url + "/api/v1/cluster/transfer-leader"
        r = httpx.post(url, json={"to": target.node_id}, headers=bearer(PRODUCE), verify=verify, timeout=15)
        assert r.status_code == 403
        r = httpx.post(url, json={"to": target.node_id}, headers=bearer(ADMIN), verify=verify, timeout=15)
        assert r.status_code == 200, r.text
        wait_for(lambda: status(follower).get("leader") == target.node_id, 20, "leadership on the target")
    finally:
        group.stop()


def test_drain_hook_presents_the_admin_token_over_tls(tls_server, monkeypatch):
    """The preStop drain reaches its own node at https://127.0.0.1 trusting --ca, with the pod's token."""
    from rankq.node_cli import drain

    said: list[str] = []
    for name in auth.TOKEN_ENV:
        monkeypatch.delenv(name, raising=False)
    assert drain(tls_server.url, 5, echo=said.append, ca=tls_server.ca) == 1  # no token: says so, never hangs
    assert "401" in said[-1]
    monkeypatch.setenv("RANKQ_ADMIN_TOKEN", ALL)
    assert drain(tls_server.url, 5, echo=said.append, ca=tls_server.ca) == 0
    assert "single-member group" in said[-1]
