"""The operator's side of API access: the token it generates and presents, and the CA it trusts.

`reconcile_children` runs against an in-memory stand-in for the Kubernetes API (the objects it
reads and applies); the real API server is exercised by tests/k8s."""

from __future__ import annotations

import asyncio
import base64
import ssl

import pytest

from rankq.operator.endpoints import Endpoints
from rankq.operator.models import QueueResource
from rankq.operator.reconcile import QueueController, Unrealisable


class MemoryKube:
    """Objects by (kind, name); `apply` stores stringData as data, as the API server does."""

    def __init__(self, objects: list[dict] | None = None) -> None:
        self.objects: dict[tuple[str, str], dict] = {}
        for obj in objects or []:
            self.objects[(obj["kind"], obj["metadata"]["name"])] = obj

    async def get(self, kind: str, namespace: str, name: str) -> dict | None:
        return self.objects.get((kind, name))

    async def apply(self, obj: dict) -> dict:
        obj = dict(obj)
        old = self.objects.get((obj["kind"], obj["metadata"]["name"])) or {}
        if "stringData" in obj:
            obj["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in obj.pop("stringData").items()}
        elif "data" in old:
            obj["data"] = old["data"]
        self.objects[(obj["kind"], obj["metadata"]["name"])] = obj
        return obj

    async def event(self, owner: dict, reason: str, message: str, type_: str = "Normal") -> None:
        pass


def body(spec: dict | None = None) -> dict:
    return {
        "apiVersion": "rankq.io/v1alpha1",
        "kind": "Queue",
        "metadata": {"name": "orders", "namespace": "shop", "uid": "u-1", "generation": 1},
        "spec": spec or {},
    }


def secret(name: str, **data: str) -> dict:
    return {
        "kind": "Secret",
        "metadata": {"name": name},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def reconcile(kube: MemoryKube, spec: dict | None = None) -> QueueController:
    async def run() -> QueueController:
        ctl = QueueController(kube, Endpoints())
        b = body(spec)
        try:
            await ctl.reconcile_children(b, QueueResource.from_body(b), 3)
        finally:
            await ctl.close()
        return ctl

    return asyncio.run(run())


def headers(ctl: QueueController) -> dict[str, str]:
    """The Authorization header the operator's clients to the group send."""
    sent = ctl.group.at("http://127.0.0.1:1")._transport._http.headers.get("authorization")
    asyncio.run(ctl.group.close())
    return {"Authorization": sent} if sent else {}


def test_generated_token_is_kept_and_presented() -> None:
    kube = MemoryKube()
    ctl = reconcile(kube)
    stored = base64.b64decode(kube.objects[("Secret", "orders-token")]["data"]["token"]).decode()
    assert len(stored) >= 32 and headers(ctl) == {"Authorization": f"Bearer {stored}"}
    again = reconcile(kube)  # a later reconcile (or a restarted operator) keeps the same token
    assert headers(again) == headers(ctl)


def test_named_admin_token_is_presented_and_nothing_generated() -> None:
    kube = MemoryKube([secret("adm", token="admin-secret"), secret("prod", token="p")])
    ctl = reconcile(kube, {"auth": {"admin": {"name": "adm"}, "produce": {"name": "prod"}}})
    assert headers(ctl) == {"Authorization": "Bearer admin-secret"}
    assert ("Secret", "orders-token") not in kube.objects


def test_missing_scope_secret_is_unrealisable() -> None:
    with pytest.raises(Unrealisable) as err:
        reconcile(MemoryKube(), {"auth": {"consume": {"name": "nope"}}})
    assert err.value.reason == "AuthSecretMissing" and "spec.auth.consume" in str(err.value)


def test_generated_tls_is_kept_and_trusted() -> None:
    kube = MemoryKube()
    ctl = reconcile(kube, {"tls": {"generate": True}})
    stored = kube.objects[("Secret", "orders-tls")]
    assert stored["type"] == "kubernetes.io/tls" and set(stored["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    assert ctl.group.ca == base64.b64decode(stored["data"]["ca.crt"]).decode()
    ssl.create_default_context(cadata=ctl.group.ca)  # a usable CA
    again = reconcile(kube, {"tls": {"generate": True}})
    assert again.group.ca == ctl.group.ca


def test_tls_secret_without_a_ca_is_unrealisable() -> None:
    kube = MemoryKube([secret("cert", **{"tls.crt": "c", "tls.key": "k"})])
    with pytest.raises(Unrealisable) as err:
        reconcile(kube, {"tls": {"secretName": "cert"}})
    assert err.value.reason == "TLSSecretMissing"
