"""The operator's few Kubernetes calls, through lightkube's async client, on plain dicts.

`specs.py` builds plain dicts, and reconcile compares plain dicts, so this module only maps a
`kind` to lightkube's resource class and converts models back to dicts. Credentials (in-cluster
ServiceAccount or kubeconfig), TLS, retries of the transport and error decoding are lightkube's.
Reads of pods and StatefulSets mostly come from kopf's watch-fed indexes instead (handlers.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from lightkube import ApiError, AsyncClient, codecs
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apps_v1 import Deployment, StatefulSet
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler
from lightkube.resources.batch_v1 import CronJob
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import ConfigMap, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount
from lightkube.resources.policy_v1 import PodDisruptionBudget
from lightkube.resources.rbac_authorization_v1 import Role, RoleBinding
from lightkube.types import PatchType

from .models import GROUP, KIND, PLURAL, VERSION

FIELD_MANAGER = "rankq-operator"

Queue = create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)
# KEDA's kinds, for pools with autoscaling.provider keda (a cluster without KEDA answers 404).
ScaledObject = create_namespaced_resource("keda.sh", "v1alpha1", "ScaledObject", "scaledobjects")
TriggerAuthentication = create_namespaced_resource(
    "keda.sh", "v1alpha1", "TriggerAuthentication", "triggerauthentications"
)

KINDS: dict[str, Any] = {
    "ServiceAccount": ServiceAccount,
    "Secret": Secret,
    "ConfigMap": ConfigMap,
    "Service": Service,
    "Pod": Pod,
    "Role": Role,
    "RoleBinding": RoleBinding,
    "StatefulSet": StatefulSet,
    "PodDisruptionBudget": PodDisruptionBudget,
    "Lease": Lease,
    KIND: Queue,
    "Deployment": Deployment,
    "HorizontalPodAutoscaler": HorizontalPodAutoscaler,
    "ScaledObject": ScaledObject,
    "TriggerAuthentication": TriggerAuthentication,
    "CronJob": CronJob,
    "PersistentVolumeClaim": PersistentVolumeClaim,
}

KubeError = ApiError  # lightkube's error: `.status.code` is the HTTP status


def code(err: ApiError) -> int:
    return int(err.status.code or 0)


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _plain(obj: Any) -> dict[str, Any]:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


class Kube:
    """Dict-in, dict-out calls by kind and name over one lightkube `AsyncClient`."""

    def __init__(self, client: AsyncClient | None = None) -> None:
        self.client = client or AsyncClient(field_manager=FIELD_MANAGER)

    async def close(self) -> None:
        await self.client.close()

    async def get(self, kind: str, namespace: str, name: str) -> dict | None:
        try:
            return _plain(await self.client.get(KINDS[kind], name, namespace=namespace))
        except ApiError as err:
            if code(err) == 404:
                return None
            raise

    async def create(self, obj: dict) -> dict:
        return _plain(await self.client.create(codecs.from_dict(obj)))

    async def apply(self, obj: dict) -> dict:
        """Server-side apply as the operator's field manager (fields it stops sending are removed)."""
        meta = obj["metadata"]
        return _plain(
            await self.client.patch(
                KINDS[obj["kind"]],
                meta["name"],
                obj,
                namespace=meta["namespace"],
                patch_type=PatchType.APPLY,
                field_manager=FIELD_MANAGER,
                force=True,
            )
        )

    async def merge_patch(self, kind: str, namespace: str, name: str, patch: dict, status: bool = False) -> dict:
        res = KINDS[kind].Status if status else KINDS[kind]
        return _plain(await self.client.patch(res, name, patch, namespace=namespace, patch_type=PatchType.MERGE))

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        try:
            await self.client.delete(KINDS[kind], name, namespace=namespace)
            return True
        except ApiError as err:
            if code(err) in (404, 409):
                return False
            raise
