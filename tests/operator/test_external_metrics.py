"""The external metrics API the HPA reads: bodies, errors, and client certificates over real TLS."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl

import pytest

from rankq.operator import external_metrics as em


def _pki(root):
    """A CA, a serving certificate for 127.0.0.1 and a client certificate, all from one CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(path, obj, key=False):
        data = (
            obj.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            if key
            else obj.public_bytes(serialization.Encoding.PEM)
        )
        (root / path).write_bytes(data)
        return str(root / path)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("test CA"))
        .issuer_name(name("test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn, usage, san=None):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(name("test CA"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(ca_key, hashes.SHA256()), key

    server, server_key = leaf(
        "metrics", ExtendedKeyUsageOID.SERVER_AUTH, [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    client, client_key = leaf("front-proxy-client", ExtendedKeyUsageOID.CLIENT_AUTH)
    return {
        "ca": write("ca.crt", ca),
        "cert": write("tls.crt", server),
        "key": write("tls.key", server_key, True),
        "client_cert": write("client.crt", client),
        "client_key": write("client.key", client_key, True),
    }


def test_bodies_follow_the_external_metrics_api():
    d = em.discovery()
    assert d["groupVersion"] == "external.metrics.k8s.io/v1beta1"
    assert d["resources"][0] == {
        "name": "rankq_queue_backlog",
        "singularName": "",
        "namespaced": True,
        "kind": "ExternalMetricValueList",
        "verbs": ["get"],
    }
    body = em.value_list("rankq_queue_backlog", "orders", 0, 1_700_000_000)
    assert body["items"] == [
        {
            "metricName": "rankq_queue_backlog",
            "metricLabels": {"rankq.io/queue": "orders"},
            "timestamp": "2023-11-14T22:13:20Z",
            "value": "0",
        }
    ]  # never an empty list
    assert em.parse_selector("rankq.io/queue=orders, team==a") == {"rankq.io/queue": "orders", "team": "a"}
    for bad in ("rankq.io/queue in (a,b)", "!x", "x!=y", "=v"):
        with pytest.raises(em.BadSelector):
            em.parse_selector(bad)


def test_served_over_tls_only_to_the_request_header_ca(tmp_path, unused_port=None):
    import httpx
    from serverproc import free_port

    pki = _pki(tmp_path)
    backlog = {("shop", "orders"): 1234, ("shop", "empty"): 0}
    calls = []

    async def source(namespace, queue, include_delayed):
        calls.append((namespace, queue))
        if queue == "broken":
            raise em.MetricUnavailable("leader not reachable")
        if (namespace, queue) not in backlog:
            raise em.MetricNotFound(f"no Queue {queue!r} in namespace {namespace!r}")
        return backlog[(namespace, queue)]

    port = free_port()

    async def scenario():
        server = em.ExternalMetricsServer(
            source, em.ServingTLS(pki["cert"], pki["key"], pki["ca"]), host="127.0.0.1", port=port, max_age=5.0
        )
        await server.start()
        try:
            base = f"https://127.0.0.1:{port}"
            ctx = ssl.create_default_context(cafile=pki["ca"])
            ctx.load_cert_chain(pki["client_cert"], pki["client_key"])
            async with httpx.AsyncClient(verify=ctx) as http:

                async def get(path):
                    r = await http.get(base + path)
                    return r.status_code, r.json()

                assert (await get(em.BASE))[1]["resources"][0]["name"] == "rankq_queue_backlog"
                code, body = await get(
                    em.BASE + "/namespaces/shop/rankq_queue_backlog?labelSelector=rankq.io%2Fqueue%3Dorders"
                )
                assert code == 200 and body["items"][0]["value"] == "1234"
                await get(em.BASE + "/namespaces/shop/rankq_queue_backlog?labelSelector=rankq.io%2Fqueue%3Dorders")
                assert calls.count(("shop", "orders")) == 1  # cached within max_age
                code, body = await get(
                    em.BASE + "/namespaces/shop/rankq_queue_backlog?labelSelector=rankq.io%2Fqueue%3Dempty"
                )
                assert code == 200 and body["items"][0]["value"] == "0"
                code, body = await get(
                    em.BASE + "/namespaces/shop/rankq_queue_backlog?labelSelector=rankq.io%2Fqueue%3Dnope"
                )
                assert (code, body["kind"], body["reason"]) == (404, "Status", "NotFound")
                code, body = await get(
                    em.BASE + "/namespaces/shop/rankq_queue_backlog?labelSelector=rankq.io%2Fqueue%3Dbroken"
                )
                assert (code, body["reason"]) == (503, "ServiceUnavailable")
                code, body = await get(
                    em.BASE + "/namespaces/shop/other_metric?labelSelector=rankq.io%2Fqueue%3Dorders"
                )
                assert code == 404
                code, body = await get(em.BASE + "/namespaces/shop/rankq_queue_backlog")
                assert code == 400 and "labelSelector" in body["message"]
            # Without a client certificate from the request-header CA the handshake fails.
            async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=pki["ca"])) as anonymous:
                with pytest.raises((httpx.ConnectError, httpx.ReadError, ssl.SSLError, httpx.RemoteProtocolError)):
                    await anonymous.get(base + em.BASE)
        finally:
            await server.stop()

    asyncio.run(asyncio.wait_for(scenario(), 30))
