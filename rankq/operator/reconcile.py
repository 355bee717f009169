"""Diff-and-apply for one `Queue`, and the one helper that writes its status.

`QueueController.tick()` runs when a watch reports a change to the Queue or one of its children
(handlers.py), and otherwise on the Queue's slow Raft-state check:

1. children (only when the Queue's spec or one of its children changed, `full=True`): each
   builder's output is compared with what exists (a child is re-applied when a field we set differs
   or when our hash annotation changed) and applied with server-side apply; a missing child is
   recreated;
2. the group: each member's `/api/v1/cluster` is read, the role labels follow the leader
   (`leader.py`), the queue is created or its settings patched through the leader;
3. one step of scaling or of a rolling update (`membership.py`);
4. status: written only when it changed, so status writes never cause more work.

Pods and the StatefulSet come from kopf's watch-fed indexes, so a tick that changes nothing makes
no request to the API server. `tick()` returns whether the Queue looked settled (nothing done, the
same observation as last time), which lets the caller back off.

Errors never escape a tick: a Queue the operator cannot realise gets `Degraded` with a reason and a
Warning Event, and the next tick tries again.
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
from dataclasses import asdict
from typing import Any

import kopf

from ..client.errors import ConflictError, NotFoundError, RankQError
from . import leader as leader_mod
from . import specs
from .endpoints import Endpoints
from .group import QUEUE_TIMEOUT, GroupClients
from .kube import Kube, KubeError, code, now_iso
from .membership import Action, ordinal, plan_rollout, plan_scale
from .models import QueueResource
from .specs import HASH_ANNOTATION, spec_hash
from .workers import WorkerPools, backlog_of, summary

log = logging.getLogger("rankq.operator")

CAUGHT_UP_LAG = 100  # log entries a member may trail and still count as caught up


class Unrealisable(Exception):
    """The spec cannot be carried out as written; reported as Degraded, retried later."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def is_subset(want: Any, have: Any) -> bool:
    """True when every field in `want` has the same value in `have` (defaults added by the API
    server are ignored)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(k in have and is_subset(v, have[k]) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(want) == len(have) and all(is_subset(w, h) for w, h in zip(want, have))
    return want == have


def needs_apply(desired: dict[str, Any], observed: dict[str, Any] | None) -> bool:
    if observed is None:
        return True
    annotations = observed["metadata"].get("annotations") or {}
    if annotations.get(HASH_ANNOTATION) != desired["metadata"]["annotations"][HASH_ANNOTATION]:
        return True
    if desired["kind"] == "Secret":  # data is generated once and kept; compare metadata only
        return not is_subset({"metadata": {"labels": desired["metadata"]["labels"]}}, observed)
    want = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind", "stringData")}
    return not is_subset(want, observed)


def self_signed_tls(names: list[str], days: int = 3650) -> dict[str, str]:
    """A new CA and a certificate for `names` (plus 127.0.0.1) signed by it, as PEM: tls.crt,
    tls.key, ca.crt. The CA's key is not kept: nothing else can be signed with it later."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rankq CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    sans = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return {
        "tls.crt": cert.public_bytes(pem).decode(),
        "tls.key": key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode(),
        "ca.crt": ca.public_bytes(pem).decode(),
    }


def owned_by(obj: dict[str, Any], uid: str | None) -> bool:
    refs = obj["metadata"].get("ownerReferences") or []
    return any(r.get("uid") == uid for r in refs if r.get("controller"))


# ---- conditions and status ---------------------------------------------------------------------


def condition(
    type_: str, ok: bool, reason: str, message: str, generation: int | None, previous: list[dict[str, Any]] | None
) -> dict[str, Any]:
    status = "True" if ok else "False"
    before = next((c for c in previous or [] if c.get("type") == type_), None)
    since = (
        before["lastTransitionTime"]
        if before and before.get("status") == status and before.get("lastTransitionTime")
        else now_iso()
    )
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }


def status_changed(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    return any((old or {}).get(k) != v for k, v in new.items())


# ---- the controller -------------------------------------------------------------------------------


class QueueController:
    """Reconciles one Queue; `tick()` is called by the Queue's kopf daemon with the latest body."""

    def __init__(self, kube: Kube, endpoints: Endpoints) -> None:
        self.kube = kube
        self.endpoints = endpoints
        self.group = GroupClients()
        self.acted = False  # this tick wrote something or took a step
        self.seen: Any = None  # what the last tick observed, to tell a settled Queue
        self.last_written: dict[str, Any] | None = None
        self.degraded: tuple[str, str] | None = None
        self.progress: tuple[str, str] | None = None
        self.last_leader: str | None = None
        self.leader_since: float | None = None
        self.settings_applied: dict | None = None
        self.ever_led = False  # before a first leader the group is starting, not degraded
        self.workers = WorkerPools(kube)
        self.worker_status: list[dict[str, Any]] = []
        self.deployments: list[dict[str, Any]] = []
        self.queue: QueueResource | None = None  # the last spec seen (the metrics API reads backlog by it)

    async def close(self) -> None:
        await self.group.close()

    async def event(self, body: dict, reason: str, message: str, warning: bool = False) -> None:
        """Log it and post it as a Kubernetes Event (kopf posts in the background)."""
        self.acted = True
        log.info("%s/%s: %s: %s", body["metadata"].get("namespace"), body["metadata"]["name"], reason, message)
        try:
            kopf.event(body, type="Warning" if warning else "Normal", reason=reason, message=message[:1024])
        except LookupError:  # outside a running operator (unit tests): logged only
            pass

    # -- children --

    async def raft_password(self, q: QueueResource) -> str:
        existing = await self.kube.get("Secret", q.namespace, specs.raft_secret_name(q))
        if existing and (existing.get("data") or {}).get("password"):
            return base64.b64decode(existing["data"]["password"]).decode()
        return secrets.token_urlsafe(32)

    async def secret_value(self, q: QueueResource, name: str, key: str, field: str | None) -> str | None:
        """A key of a Secret; with `field` (the CR field that names it) a missing one is Unrealisable."""
        secret = await self.kube.get("Secret", q.namespace, name)
        data = (secret or {}).get("data") or {}
        if key not in data:
            if field is None:
                return None
            raise Unrealisable("AuthSecretMissing", f"{field} names {name}/{key}, which does not exist")
        return base64.b64decode(data[key]).decode()

    async def reconcile_children(self, body: dict, q: QueueResource, members: int) -> None:
        auth = q.spec.auth
        for field, ref in (
            ("secretRef", auth.secret_ref),
            ("produce", auth.produce),
            ("consume", auth.consume),
            ("admin", auth.admin),
        ):
            if ref is not None:
                await self.secret_value(q, ref.name, ref.key, f"spec.auth.{field}")
        token = ""
        if specs.generates_token(q):
            token = await self.secret_value(
                q, specs.token_secret_name(q), specs.TOKEN_KEY, None
            ) or secrets.token_urlsafe(32)
        else:
            ref = specs.operator_token_ref(q)
            token = await self.secret_value(q, ref.name, ref.key, "spec.auth") or ""
        await self.group.set_token(token.strip() or None)
        tls_pem = None
        tls_name = specs.tls_secret_name(q)
        if tls_name and q.spec.tls.generate:  # generate always names its Secret
            existing = await self.kube.get("Secret", q.namespace, tls_name)
            data = (existing or {}).get("data") or {}
            if all(data.get(k) for k in ("tls.crt", "tls.key", "ca.crt")):
                tls_pem = {k: base64.b64decode(data[k]).decode() for k in ("tls.crt", "tls.key", "ca.crt")}
            else:
                tls_pem = self_signed_tls(specs.tls_names(q))
            await self.group.trust(tls_pem["ca.crt"])
        elif tls_name:
            ca = await self.secret_value(q, tls_name, "ca.crt", None)
            if ca is None:
                raise Unrealisable(
                    "TLSSecretMissing",
                    f"spec.tls.secretName names {tls_name}, which has no ca.crt (it needs tls.crt, tls.key and ca.crt)",
                )
            await self.group.trust(ca)
        else:
            await self.group.trust(None)
        password = await self.raft_password(q)
        for desired in specs.build_children(q, members, password, token, tls_pem):
            meta = desired["metadata"]
            meta.setdefault("annotations", {})[HASH_ANNOTATION] = spec_hash(desired)
            observed = await self.kube.get(desired["kind"], q.namespace, meta["name"])
            if observed is not None and not owned_by(observed, q.uid) and not specs.outlives_queue(observed, q):
                raise Unrealisable(
                    "ChildConflict",
                    f"{desired['kind']} {meta['name']} exists and is not owned by "
                    f"this Queue; rename the Queue or delete that object",
                )
            if not needs_apply(desired, observed):
                continue
            if desired["kind"] == "Secret" and observed is not None:
                desired = {k: v for k, v in desired.items() if k != "stringData"}
            await self.kube.apply(desired)
            verb = "Created" if observed is None else "Updated"
            await self.event(body, verb, f"{verb} {desired['kind']} {meta['name']}")

    # -- one tick --

    async def tick(
        self, body: dict, sts: dict | None, pods: list[dict], full: bool, deployments: list[dict] | None = None
    ) -> bool:
        """One pass; `sts`, `pods` and the worker `deployments` as the watches last reported them.
        True when settled."""
        q = QueueResource.from_body(body)
        self.queue = q
        self.acted = False
        self.deployments = deployments or []
        try:
            await self._tick(body, q, sts, pods, full or self.degraded is not None)
        except Unrealisable as err:
            if self.degraded != (err.reason, str(err)):
                await self.event(body, err.reason, str(err), warning=True)
            self.degraded = (err.reason, str(err))
            await self.write_status(body, q, None, None, [], None)
            return False
        except KubeError as err:
            reason = "KubernetesError"
            if self.degraded != (reason, str(err)):
                await self.event(body, reason, str(err), warning=True)
            self.degraded = (reason, str(err))
            log.warning("%s/%s: %s", q.namespace, q.name, err)
            return False
        return not self.acted and self.degraded is None and self.progress is None

    async def _tick(self, body: dict, q: QueueResource, sts: dict | None, pods: list[dict], full: bool) -> None:
        if sts is not None and not owned_by(sts, q.uid):
            sts = None  # reconcile_children reports the conflict
        if full or sts is None:
            observed = await self.kube.get("StatefulSet", q.namespace, q.name)
            members = observed["spec"]["replicas"] if observed and owned_by(observed, q.uid) else q.spec.replicas
            await self.reconcile_children(body, q, members)
            self.degraded = None
            sts = await self.kube.get("StatefulSet", q.namespace, q.name)

        pods = sorted(pods, key=lambda p: ordinal(p["metadata"]["name"]))
        live = [p["metadata"]["name"] for p in pods if p["metadata"].get("deletionTimestamp") is None]
        obs = await leader_mod.observe(self.group, self.endpoints, q, live)
        changes = await leader_mod.apply_roles(self.kube, q, pods, obs.leader)
        self.acted = self.acted or bool(changes)
        seen = (
            obs.leader,
            sorted(obs.answers),
            (obs.leader_status or {}).get("term"),
            [(m["id"], m["role"], bool(m.get("healthy"))) for m in (obs.leader_status or {}).get("members", [])],
        )
        self.acted = self.acted or seen != self.seen
        self.seen = seen
        if obs.leader != self.last_leader:
            if obs.leader:
                term = (obs.leader_status or {}).get("term")
                await self.event(
                    body, "LeaderElected", f"{obs.leader} leads (term {term}); Service {q.name} now selects it"
                )
            elif self.last_leader:
                await self.event(
                    body,
                    "LeaderLost",
                    f"no member confirms leadership; Service {q.name} has no endpoints until one does",
                    warning=True,
                )
            self.last_leader = obs.leader
            self.leader_since = time.monotonic()
            self.ever_led = self.ever_led or obs.leader is not None
        elif changes:
            log.info("%s/%s: relabelled %s", q.namespace, q.name, changes)

        counts = await self.sync_queue(body, q, obs)
        if q.spec.workers or self.deployments:
            self.worker_status = await self.workers.reconcile(
                q,
                self.deployments,
                counts,
                full,
                lambda reason, message, warning=False: self.event(body, reason, message, warning),
            )
        if sts is not None:
            await self.step(body, q, sts, pods, obs)
        await self.write_status(body, q, sts, obs, pods, counts)

    # -- the queue inside the group --

    async def sync_queue(self, body: dict, q: QueueResource, obs: leader_mod.Observation) -> dict | None:
        if obs.leader is None:
            return None
        client = self.group.at(self.endpoints.http_url(q, obs.leader), QUEUE_TIMEOUT)
        name = q.spec.queue_name(q.name)
        desired = specs.queue_settings(q)
        try:
            try:
                info = await client.get_queue(name)
            except NotFoundError:
                info = await client.create_queue(name, **desired)
                await self.event(body, "QueueCreated", f"created queue {name!r} in the group")
                self.settings_applied = desired
                return asdict(info.counts)
            stale = {k: v for k, v in desired.items() if not _same_setting(v, info.settings.get(k))}
            if stale:
                info = await client.update_queue(name, **stale)
                await self.event(body, "SettingsApplied", f"applied {', '.join(sorted(stale))} to queue {name!r} live")
            return asdict(info.counts)
        except RankQError as err:
            log.info("%s/%s: queue settings not synced yet: %s", q.namespace, q.name, err)
            return None

    async def read_backlog(self, include_delayed: bool) -> int | None:
        """The queue's backlog read from the leader now (for the external metrics API), or None
        when no leader is known or it does not answer."""
        q = self.queue
        if q is None or not self.last_leader:
            return None
        client = self.group.at(self.endpoints.http_url(q, self.last_leader), QUEUE_TIMEOUT)
        try:
            info = await client.get_queue(q.spec.queue_name(q.name))
        except RankQError:
            return None
        return backlog_of(asdict(info.counts), include_delayed)

    # -- scaling and rolling, one action per tick --

    def member_pods(self, q: QueueResource, obs: leader_mod.Observation) -> tuple[set[str] | None, set[str]]:
        """Members and healthy members as pod names (a member that has not yet published its
        node id is known by its Raft address)."""
        status = obs.leader_status
        if status is None:
            return None, set()
        by_address = {
            self.endpoints.raft_address(q, specs.pod_name(q, i)): specs.pod_name(q, i)
            for i in range(specs.MAX_REPLICAS)
        }
        members, healthy = set(), set()
        for m in status["members"]:
            pod = by_address.get(m["address"], m["id"])
            members.add(pod)
            if m["role"] == "leader" or (m.get("healthy") and (m.get("lag") or 0) <= CAUGHT_UP_LAG):
                healthy.add(pod)
        return members, healthy

    async def step(
        self, body: dict, q: QueueResource, sts: dict, pods: list[dict], obs: leader_mod.Observation
    ) -> None:
        sts_replicas = sts["spec"]["replicas"]
        members, healthy = self.member_pods(q, obs)
        action = plan_scale(q.name, q.spec.replicas, sts_replicas, members, obs.leader, healthy, set(obs.answers))
        if action.kind == "done":
            revisions = {
                p["metadata"]["name"]: (p["metadata"].get("labels") or {}).get("controller-revision-hash")
                for p in pods
                if p["metadata"].get("deletionTimestamp") is None
            }
            terminating = {p["metadata"]["name"] for p in pods if p["metadata"].get("deletionTimestamp")}
            ready = {p["metadata"]["name"] for p in pods if _pod_ready(p)}
            update_revision = (sts.get("status") or {}).get("updateRevision")
            action = plan_rollout(revisions, update_revision, obs.leader, healthy, ready, terminating, sts_replicas)
            self.progress = None if action.kind == "done" else ("RollingUpdate", action.reason)
        else:
            self.progress = ("Scaling", action.reason)
        if action.kind in ("done", "wait"):
            return
        await self.carry_out(body, q, action, obs)

    async def carry_out(self, body: dict, q: QueueResource, action: Action, obs: leader_mod.Observation) -> None:
        leader = self.group.at(self.endpoints.http_url(q, obs.leader)) if obs.leader else None
        pod = action.pod
        self.acted = True
        try:
            if action.kind == "set_replicas":
                members = action.replicas
                # Peers first, so the new pod starts with the full list; then the StatefulSet.
                for child in (specs.build_configmap(q, members), specs.build_statefulset(q, members)):
                    child["metadata"].setdefault("annotations", {})[HASH_ANNOTATION] = spec_hash(child)
                    await self.kube.apply(child)
                await self.event(body, "Scaling", f"StatefulSet {q.name} to {members} pods ({action.reason})")
            elif pod is None:
                log.warning("%s/%s: %s names no pod; not carried out", q.namespace, q.name, action.kind)
            elif action.kind == "delete_pod":
                await self.kube.delete("Pod", q.namespace, pod)
                await self.event(body, "RollingUpdate", f"deleted {pod} to restart it on the new revision")
            elif leader is None:  # membership changes go through the leader (planned only when one is known)
                log.info("%s/%s: %s waits for a leader", q.namespace, q.name, action.kind)
            elif action.kind == "add_member":
                address = self.endpoints.raft_address(q, pod)
                # A conflict (already a member, or another change still committing) is decided by
                # the next observation, which plans again from the group's configuration.
                await leader.add_member(address)
                await self.event(body, "MemberAdded", f"added {pod} ({address}) to the Raft group")
            elif action.kind == "remove_member":
                await leader.remove_member(pod)
                await self.event(body, "MemberRemoved", f"removed {pod} from the Raft group")
            elif action.kind == "transfer_leader":
                await leader.transfer_leader(action.to)
                await self.event(body, "LeaderTransferred", f"moved leadership off {pod} ({action.reason})")
        except ConflictError as err:
            log.info("%s/%s: %s not carried out, the group says: %s", q.namespace, q.name, action.kind, err)
        except RankQError as err:
            log.info("%s/%s: %s did not succeed yet: %s", q.namespace, q.name, action.kind, err)

    # -- status --

    async def write_status(
        self,
        body: dict,
        q: QueueResource,
        sts: dict | None,
        obs: leader_mod.Observation | None,
        pods: list[dict],
        counts: dict | None,
    ) -> None:
        old = body.get("status") or {}
        previous = old.get("conditions")
        gen = q.generation
        self.ever_led = self.ever_led or bool(old.get("term"))  # survives an operator restart
        ready_pods = sum(1 for p in pods if _pod_ready(p))
        leader = obs.leader if obs else None
        replicas = (sts or {}).get("spec", {}).get("replicas")
        conditions = [
            condition(
                "LeaderElected",
                leader is not None,
                "LeaderConfirmed" if leader else "NoLeader",
                f"{leader} leads" if leader else "no member confirms leadership",
                gen,
                previous,
            ),
        ]
        if self.degraded:
            reason, message = self.degraded
            conditions.append(condition("Degraded", True, reason, message, gen, previous))
        elif obs is not None and leader is None and pods and self.ever_led:
            conditions.append(
                condition(
                    "Degraded",
                    True,
                    "NoQuorum",
                    f"{len(obs.answers)} of {len(pods)} members answer; none leads",
                    gen,
                    previous,
                )
            )
        else:
            conditions.append(condition("Degraded", False, "AsExpected", "", gen, previous))
        if self.progress:
            conditions.append(condition("Progressing", True, self.progress[0], self.progress[1], gen, previous))
        else:
            conditions.append(condition("Progressing", False, "Reconciled", "spec carried out", gen, previous))
        is_ready = (
            leader is not None and not self.degraded and replicas == q.spec.replicas and ready_pods >= q.spec.replicas
        )
        conditions.insert(
            0,
            condition(
                "Ready",
                is_ready,
                "GroupReady" if is_ready else "NotReady",
                f"{ready_pods}/{q.spec.replicas} pods ready, leader {leader or 'unknown'}",
                gen,
                previous,
            ),
        )
        if self.degraded or (obs is not None and leader is None and pods and self.ever_led):
            phase = "Degraded"
        elif sts is None:
            phase = "Pending"
        elif self.progress:
            phase = "Scaling" if self.progress[0] == "Scaling" else "Updating"
        elif is_ready:
            phase = "Running"
        else:
            phase = "Creating"
        new: dict[str, Any] = {
            "phase": phase,
            "leader": leader,
            "replicas": replicas if replicas is not None else 0,
            "readyReplicas": ready_pods,
            "selector": specs.selector_string(q),
            "observedGeneration": gen,
            "currentImage": q.spec.image,
            "conditions": conditions,
        }
        if obs is not None and obs.leader_status:
            st = obs.leader_status
            new["term"] = st.get("term")
            new["members"] = [
                {
                    "pod": m["id"],
                    "address": m["address"],
                    "role": m["role"],
                    "healthy": bool(m.get("healthy") or m["role"] == "leader"),
                    **({"lag": m["lag"]} if m.get("lag") is not None else {}),
                }
                for m in st["members"]
            ]
        if q.spec.workers:
            new["workers"] = self.worker_status
            new["workersSummary"] = summary(self.worker_status)
        if counts is not None:
            msgs = {k: int(counts.get(k, 0)) for k in ("ready", "leased", "delayed", "dead")}
            new["messages"] = msgs
            new["depth"] = msgs["ready"] + msgs["leased"] + msgs["delayed"]
        if not status_changed(old, new) or new == self.last_written:
            return  # the second test: our last write may not have come back through the watch yet
        self.acted = True
        try:
            await self.kube.merge_patch("Queue", q.namespace, q.name, {"status": new}, status=True)
        except KubeError as err:
            if code(err) != 404:
                raise
        self.last_written = new
        body["status"] = {**old, **new}


def _pod_ready(pod: dict[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def _same_setting(want: Any, have: Any) -> bool:
    if isinstance(want, dict) and isinstance(have, dict):
        return {str(k): v for k, v in want.items()} == {str(k): v for k, v in have.items()}
    if isinstance(want, (int, float)) and isinstance(have, (int, float)) and not isinstance(want, bool):
        return float(want) == float(have)
    return want == have
