"""Diff-and-apply for one `Queue`, and the one helper that writes its status.

`QueueController.tick()` runs about once a second per Queue:

1. children: every `REFRESH` seconds, or at once when the spec's generation moved, each builder's
   output is compared with what exists (a child is re-applied when a field we set differs or when
   our hash annotation changed) and applied with server-side apply; a missing child is recreated;
2. the group: each member's `/api/v1/cluster` is read, the role labels follow the leader
   (`leader.py`), the queue is created or its settings patched through the leader;
3. one step of scaling or of a rolling update (`membership.py`);
4. status: written only when it changed, so status writes never cause more work.

Errors never escape a tick: a Queue the operator cannot realise gets `Degraded` with a reason and a
Warning Event, and the next tick tries again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import time
from typing import Any

import httpx

from . import leader as leader_mod
from . import specs
from .endpoints import Endpoints
from .kube import Kube, KubeError, now_iso
from .membership import Action, ordinal, plan_rollout, plan_scale
from .models import QueueResource

log = logging.getLogger("rankq.operator")

HASH_ANNOTATION = "rankq.io/spec-hash"
REFRESH = 5.0  # seconds between full child comparisons when nothing changed
CAUGHT_UP_LAG = 100  # log entries a member may trail and still count as caught up


class GroupApi:
    """HTTP calls to the group's members with the operator's (admin) token; with TLS, a client of
    its own that trusts the group's CA, else the shared client."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.shared = self.http = http
        self.headers: dict[str, str] = {}
        self.ca: str | None = None

    async def trust(self, ca: str | None) -> None:
        """Verify the members' certificates against the PEM `ca` (None: plain HTTP)."""
        if ca == self.ca:
            return
        if self.http is not self.shared:
            await self.http.aclose()
        self.ca = ca
        if ca is None:
            self.http = self.shared
        else:
            import ssl

            self.http = httpx.AsyncClient(timeout=self.shared.timeout, verify=ssl.create_default_context(cadata=ca))

    def _kw(self, kw: dict) -> dict:
        if self.headers:
            kw["headers"] = {**self.headers, **(kw.get("headers") or {})}
        return kw

    async def get(self, url: str, **kw):
        return await self.http.get(url, **self._kw(kw))

    async def post(self, url: str, **kw):
        return await self.http.post(url, **self._kw(kw))

    async def patch(self, url: str, **kw):
        return await self.http.patch(url, **self._kw(kw))

    async def delete(self, url: str, **kw):
        return await self.http.delete(url, **self._kw(kw))


class Unrealisable(Exception):
    """The spec cannot be carried out as written; reported as Degraded, retried later."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def spec_hash(obj: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


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

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rankq CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    sans = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
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

def condition(type_: str, ok: bool, reason: str, message: str, generation: int | None,
              previous: list[dict[str, Any]] | None) -> dict[str, Any]:
    status = "True" if ok else "False"
    before = next((c for c in previous or [] if c.get("type") == type_), None)
    since = before["lastTransitionTime"] if before and before.get("status") == status and \
        before.get("lastTransitionTime") else now_iso()
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": since, "observedGeneration": generation}


def status_changed(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    return any((old or {}).get(k) != v for k, v in new.items())


# ---- the controller -------------------------------------------------------------------------------

class QueueController:
    """Reconciles one Queue; `tick()` is called by the handlers' loop with the latest body."""

    def __init__(self, kube: Kube, endpoints: Endpoints, http: httpx.AsyncClient) -> None:
        self.kube = kube
        self.endpoints = endpoints
        self.http = GroupApi(http)
        self.applied_generation: int | None = None
        self.last_refresh = 0.0
        self.degraded: tuple[str, str] | None = None
        self.progress: tuple[str, str] | None = None
        self.last_leader: str | None = None
        self.leader_since: float | None = None
        self.settings_applied: dict | None = None
        self.ever_led = False  # before a first leader the group is starting, not degraded

    async def event(self, body: dict, reason: str, message: str, warning: bool = False) -> None:
        log.info("%s/%s: %s: %s", body["metadata"].get("namespace"), body["metadata"]["name"], reason, message)
        await self.kube.event(body, reason, message, "Warning" if warning else "Normal")

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
        for field, ref in (("secretRef", auth.secret_ref), ("produce", auth.produce), ("consume", auth.consume),
                           ("admin", auth.admin)):
            if ref is not None:
                await self.secret_value(q, ref.name, ref.key, f"spec.auth.{field}")
        token = ""
        if specs.generates_token(q):
            token = (await self.secret_value(q, specs.token_secret_name(q), specs.TOKEN_KEY, None)
                     or secrets.token_urlsafe(32))
        else:
            ref = specs.operator_token_ref(q)
            token = await self.secret_value(q, ref.name, ref.key, "spec.auth") or ""
        self.http.headers = {"Authorization": f"Bearer {token.strip()}"}
        tls_pem = None
        tls_name = specs.tls_secret_name(q)
        if q.spec.tls.generate:
            existing = await self.kube.get("Secret", q.namespace, tls_name)
            data = (existing or {}).get("data") or {}
            if all(data.get(k) for k in ("tls.crt", "tls.key", "ca.crt")):
                tls_pem = {k: base64.b64decode(data[k]).decode() for k in ("tls.crt", "tls.key", "ca.crt")}
            else:
                tls_pem = self_signed_tls(specs.tls_names(q))
            await self.http.trust(tls_pem["ca.crt"])
        elif tls_name:
            ca = await self.secret_value(q, tls_name, "ca.crt", None)
            if ca is None:
                raise Unrealisable("TLSSecretMissing", f"spec.tls.secretName names {tls_name}, which has no ca.crt "
                                                       f"(it needs tls.crt, tls.key and ca.crt)")
            await self.http.trust(ca)
        else:
            await self.http.trust(None)
        password = await self.raft_password(q)
        for desired in specs.build_children(q, members, password, token, tls_pem):
            meta = desired["metadata"]
            meta.setdefault("annotations", {})[HASH_ANNOTATION] = spec_hash(desired)
            observed = await self.kube.get(desired["kind"], q.namespace, meta["name"])
            if observed is not None and not owned_by(observed, q.uid):
                raise Unrealisable("ChildConflict", f"{desired['kind']} {meta['name']} exists and is not owned by "
                                                    f"this Queue; rename the Queue or delete that object")
            if not needs_apply(desired, observed):
                continue
            if desired["kind"] == "Secret" and observed is not None:
                desired = {k: v for k, v in desired.items() if k != "stringData"}
            await self.kube.apply(desired)
            verb = "Created" if observed is None else "Updated"
            await self.event(body, verb, f"{verb} {desired['kind']} {meta['name']}")

    # -- one tick --

    async def tick(self, body: dict) -> None:
        q = QueueResource.from_body(body)
        try:
            await self._tick(body, q)
        except Unrealisable as err:
            if self.degraded != (err.reason, str(err)):
                await self.event(body, err.reason, str(err), warning=True)
            self.degraded = (err.reason, str(err))
            await self.write_status(body, q, None, None, [], None)
        except KubeError as err:
            reason = "KubernetesError"
            if self.degraded != (reason, str(err)):
                await self.event(body, reason, str(err), warning=True)
            self.degraded = (reason, str(err))
            log.warning("%s/%s: %s", q.namespace, q.name, err)

    async def _tick(self, body: dict, q: QueueResource) -> None:
        sts = await self.kube.get("StatefulSet", q.namespace, q.name)
        members = sts["spec"]["replicas"] if sts and owned_by(sts, q.uid) else q.spec.replicas
        due = time.monotonic() - self.last_refresh >= REFRESH or self.applied_generation != q.generation or sts is None
        if due:
            await self.reconcile_children(body, q, members)
            self.applied_generation = q.generation
            self.last_refresh = time.monotonic()
            self.degraded = None
            sts = await self.kube.get("StatefulSet", q.namespace, q.name)

        pods = sorted(await self.kube.list("Pod", q.namespace, specs.selector_string(q)),
                      key=lambda p: ordinal(p["metadata"]["name"]))
        live = [p["metadata"]["name"] for p in pods if p["metadata"].get("deletionTimestamp") is None]
        obs = await leader_mod.observe(self.http, self.endpoints, q, live)
        changes = await leader_mod.apply_roles(self.kube, q, pods, obs.leader)
        if obs.leader != self.last_leader:
            if obs.leader:
                await self.event(body, "LeaderElected", f"{obs.leader} leads (term {obs.leader_status['term']}); "
                                                        f"Service {q.name} now selects it")
            elif self.last_leader:
                await self.event(body, "LeaderLost", f"no member confirms leadership; Service {q.name} has no "
                                                     f"endpoints until one does", warning=True)
            self.last_leader = obs.leader
            self.leader_since = time.monotonic()
            self.ever_led = self.ever_led or obs.leader is not None
        elif changes:
            log.info("%s/%s: relabelled %s", q.namespace, q.name, changes)

        counts = await self.sync_queue(body, q, obs)
        if sts is not None:
            await self.step(body, q, sts, pods, obs)
        await self.write_status(body, q, sts, obs, pods, counts)

    # -- the queue inside the group --

    async def sync_queue(self, body: dict, q: QueueResource, obs: leader_mod.Observation) -> dict | None:
        if obs.leader is None:
            return None
        base = self.endpoints.http_url(q, obs.leader) + "/api/v1/queues"
        name = q.spec.queue_name(q.name)
        desired = specs.queue_settings(q)
        try:
            r = await self.http.get(f"{base}/{name}", timeout=2)
            if r.status_code == 404:
                r = await self.http.post(base, json={"name": name, **desired}, timeout=5)
                r.raise_for_status()
                await self.event(body, "QueueCreated", f"created queue {name!r} in the group")
                self.settings_applied = desired
                return r.json().get("counts")
            r.raise_for_status()
            info = r.json()
            stale = {k: v for k, v in desired.items() if not _same_setting(v, info["settings"].get(k))}
            if stale:
                r = await self.http.patch(f"{base}/{name}", json=stale, timeout=5)
                r.raise_for_status()
                info = r.json()
                await self.event(body, "SettingsApplied", f"applied {', '.join(sorted(stale))} to queue {name!r} live")
            return info.get("counts")
        except (httpx.HTTPError, ValueError, KeyError) as err:
            log.info("%s/%s: queue settings not synced yet: %s", q.namespace, q.name, err)
            return None

    # -- scaling and rolling, one action per tick --

    def member_pods(self, q: QueueResource, obs: leader_mod.Observation) -> tuple[set[str] | None, set[str]]:
        """Members and healthy members as pod names (a member that has not yet published its
        node id is known by its Raft address)."""
        status = obs.leader_status
        if status is None:
            return None, set()
        by_address = {self.endpoints.raft_address(q, specs.pod_name(q, i)): specs.pod_name(q, i)
                      for i in range(specs.MAX_REPLICAS)}
        members, healthy = set(), set()
        for m in status["members"]:
            pod = by_address.get(m["address"], m["id"])
            members.add(pod)
            if m["role"] == "leader" or (m.get("healthy") and (m.get("lag") or 0) <= CAUGHT_UP_LAG):
                healthy.add(pod)
        return members, healthy

    async def step(self, body: dict, q: QueueResource, sts: dict, pods: list[dict], obs: leader_mod.Observation) -> None:
        sts_replicas = sts["spec"]["replicas"]
        members, healthy = self.member_pods(q, obs)
        action = plan_scale(q.name, q.spec.replicas, sts_replicas, members, obs.leader, healthy, set(obs.answers))
        if action.kind == "done":
            revisions = {p["metadata"]["name"]: (p["metadata"].get("labels") or {}).get("controller-revision-hash")
                         for p in pods if p["metadata"].get("deletionTimestamp") is None}
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
        leader_url = self.endpoints.http_url(q, obs.leader) if obs.leader else None
        try:
            if action.kind == "set_replicas":
                members = action.replicas
                # Peers first, so the new pod starts with the full list; then the StatefulSet.
                for child in (specs.build_configmap(q, members), specs.build_statefulset(q, members)):
                    child["metadata"].setdefault("annotations", {})[HASH_ANNOTATION] = spec_hash(child)
                    await self.kube.apply(child)
                await self.event(body, "Scaling", f"StatefulSet {q.name} to {members} pods ({action.reason})")
            elif action.kind == "add_member":
                address = self.endpoints.raft_address(q, action.pod)
                r = await self.http.post(leader_url + "/api/v1/cluster/members", json={"address": address}, timeout=10)
                if r.status_code == 409 and "already a member" in r.text:
                    return
                r.raise_for_status()
                await self.event(body, "MemberAdded", f"added {action.pod} ({address}) to the Raft group")
            elif action.kind == "remove_member":
                r = await self.http.delete(f"{leader_url}/api/v1/cluster/members/{action.pod}", timeout=10)
                r.raise_for_status()
                await self.event(body, "MemberRemoved", f"removed {action.pod} from the Raft group")
            elif action.kind == "transfer_leader":
                r = await self.http.post(leader_url + "/api/v1/cluster/transfer-leader", json={"to": action.to},
                                         timeout=10)
                r.raise_for_status()
                await self.event(body, "LeaderTransferred", f"moved leadership off {action.pod} ({action.reason})")
            elif action.kind == "delete_pod":
                await self.kube.delete("Pod", q.namespace, action.pod)
                await self.event(body, "RollingUpdate", f"deleted {action.pod} to restart it on the new revision")
        except httpx.HTTPError as err:
            detail = getattr(getattr(err, "response", None), "text", "")
            log.info("%s/%s: %s did not succeed yet: %s %s", q.namespace, q.name, action.kind, err, detail[:200])

    # -- status --

    async def write_status(self, body: dict, q: QueueResource, sts: dict | None, obs: leader_mod.Observation | None,
                           pods: list[dict], counts: dict | None) -> None:
        old = body.get("status") or {}
        previous = old.get("conditions")
        gen = q.generation
        self.ever_led = self.ever_led or bool(old.get("term"))  # survives an operator restart
        ready_pods = sum(1 for p in pods if _pod_ready(p))
        leader = obs.leader if obs else None
        replicas = (sts or {}).get("spec", {}).get("replicas")
        conditions = [
            condition("LeaderElected", leader is not None, "LeaderConfirmed" if leader else "NoLeader",
                      f"{leader} leads" if leader else "no member confirms leadership", gen, previous),
        ]
        if self.degraded:
            reason, message = self.degraded
            conditions.append(condition("Degraded", True, reason, message, gen, previous))
        elif obs is not None and leader is None and pods and self.ever_led:
            conditions.append(condition("Degraded", True, "NoQuorum",
                                        f"{len(obs.answers)} of {len(pods)} members answer; none leads", gen, previous))
        else:
            conditions.append(condition("Degraded", False, "AsExpected", "", gen, previous))
        if self.progress:
            conditions.append(condition("Progressing", True, self.progress[0], self.progress[1], gen, previous))
        else:
            conditions.append(condition("Progressing", False, "Reconciled", "spec carried out", gen, previous))
        is_ready = (leader is not None and not self.degraded and replicas == q.spec.replicas
                    and ready_pods >= q.spec.replicas)
        conditions.insert(0, condition(
            "Ready", is_ready, "GroupReady" if is_ready else "NotReady",
            f"{ready_pods}/{q.spec.replicas} pods ready, leader {leader or 'unknown'}", gen, previous))
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
            new["members"] = [{"pod": m["id"], "address": m["address"], "role": m["role"],
                               "healthy": bool(m.get("healthy") or m["role"] == "leader"),
                               **({"lag": m["lag"]} if m.get("lag") is not None else {})}
                              for m in st["members"]]
        if counts is not None:
            msgs = {k: int(counts.get(k, 0)) for k in ("ready", "leased", "delayed", "dead")}
            new["messages"] = msgs
            new["depth"] = msgs["ready"] + msgs["leased"] + msgs["delayed"]
        if not status_changed(old, new):
            return
        try:
            await self.kube.merge_patch("Queue", q.namespace, q.name, {"status": new}, subresource="status")
        except KubeError as err:
            if err.status != 404:
                raise
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
