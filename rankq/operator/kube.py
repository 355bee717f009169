"""A thin async client for the Kubernetes API: raw JSON in and out, by kind and name.

The operator works with plain dicts (what `specs.py` builds), so a typed client buys nothing here;
one `request()` plus the path of each kind keeps every call visible. Credentials are loaded by the
kubernetes client library; requests go through httpx so they never block the event loop.
"""

from __future__ import annotations

import json
import ssl
from datetime import datetime, timezone
from typing import Any

import httpx
from kubernetes import client as kclient
from kubernetes import config as kconfig

FIELD_MANAGER = "rankq-operator"

# kind -> (API prefix, plural)
KINDS: dict[str, tuple[str, str]] = {
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Secret": ("/api/v1", "secrets"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "Pod": ("/api/v1", "pods"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "Event": ("/api/v1", "events"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    "StatefulSet": ("/apis/apps/v1", "statefulsets"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "Lease": ("/apis/coordination.k8s.io/v1", "leases"),
    "Queue": ("/apis/rankq.io/v1alpha1", "queues"),
}


class KubeError(Exception):
    def __init__(self, status: int, reason: str, body: Any = None) -> None:
        self.status, self.reason, self.body = status, reason, body
        message = body.get("message") if isinstance(body, dict) else None
        super().__init__(f"{status} {reason}: {message or body}")


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def path(kind: str, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
    prefix, plural = KINDS[kind]
    out = f"{prefix}/namespaces/{namespace}/{plural}"
    if name:
        out += f"/{name}"
    if subresource:
        out += f"/{subresource}"
    return out


class Kube:
    """Async requests to the API server with the credentials of the kubeconfig (or the pod's
    ServiceAccount in cluster), as the kubernetes client library loads them."""

    def __init__(self, configuration: kclient.Configuration | None = None) -> None:
        if configuration is None:
            configuration = kclient.Configuration()
            try:
                kconfig.load_incluster_config(client_configuration=configuration)
            except kconfig.ConfigException:
                kconfig.load_kube_config(client_configuration=configuration)
        self.configuration = configuration
        ssl_ctx = ssl.create_default_context(cafile=configuration.ssl_ca_cert) if configuration.ssl_ca_cert \
            else ssl.create_default_context()
        if not configuration.verify_ssl:
            ssl_ctx.check_hostname = False
            ssl_ctx.verify_mode = ssl.CERT_NONE
        if configuration.cert_file:
            ssl_ctx.load_cert_chain(configuration.cert_file, configuration.key_file)
        self.http = httpx.AsyncClient(base_url=configuration.host, verify=ssl_ctx, timeout=15)

    def _headers(self, content_type: str) -> dict[str, str]:
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        # Refreshes rotated tokens; the key's name differs between client library versions.
        token = self.configuration.get_api_key_with_prefix("BearerToken", alias="authorization")
        if token:
            headers["Authorization"] = token
        return headers

    async def request(self, method: str, url: str, body: Any = None, content_type: str = "application/json",
                      query: list[tuple[str, str]] | None = None) -> Any:
        content = None if body is None else json.dumps(body)
        r = await self.http.request(method, url, params=query, content=content, headers=self._headers(content_type))
        try:
            data = r.json() if r.content else None
        except ValueError:
            data = r.text
        if r.status_code >= 400:
            raise KubeError(r.status_code, r.reason_phrase, data)
        return data

    async def close(self) -> None:
        await self.http.aclose()

    async def get(self, kind: str, namespace: str, name: str) -> dict | None:
        try:
            return await self.request("GET", path(kind, namespace, name))
        except KubeError as err:
            if err.status == 404:
                return None
            raise

    async def list(self, kind: str, namespace: str, selector: str | None = None) -> list[dict]:
        query = [("labelSelector", selector)] if selector else None
        return (await self.request("GET", path(kind, namespace), query=query)).get("items", [])

    async def create(self, obj: dict) -> dict:
        meta = obj["metadata"]
        return await self.request("POST", path(obj["kind"], meta["namespace"]), body=obj)

    async def apply(self, obj: dict) -> dict:
        """Server-side apply as the operator's field manager (fields it stops sending are removed)."""
        meta = obj["metadata"]
        return await self.request(
            "PATCH", path(obj["kind"], meta["namespace"], meta["name"]), body=obj,
            content_type="application/apply-patch+yaml",
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")])

    async def merge_patch(self, kind: str, namespace: str, name: str, patch: dict,
                          subresource: str | None = None) -> dict:
        return await self.request("PATCH", path(kind, namespace, name, subresource), body=patch,
                                  content_type="application/merge-patch+json")

    async def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> bool:
        body = {"preconditions": {"uid": uid}} if uid else None
        try:
            await self.request("DELETE", path(kind, namespace, name), body=body)
            return True
        except KubeError as err:
            if err.status in (404, 409):
                return False
            raise

    async def event(self, owner: dict, reason: str, message: str, type_: str = "Normal") -> None:
        """A core/v1 Event about `owner` (best effort: never fails the caller)."""
        meta = owner["metadata"]
        ts = now_iso()
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": owner.get("apiVersion"), "kind": owner.get("kind"),
                               "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid")},
            "reason": reason, "message": message[:1024], "type": type_,
            "source": {"component": FIELD_MANAGER},
            "firstTimestamp": ts, "lastTimestamp": ts, "count": 1,
            "reportingComponent": FIELD_MANAGER, "reportingInstance": FIELD_MANAGER,
        }
        try:
            await self.create(body)
        except Exception:  # noqa: BLE001 - events are advisory
            pass
