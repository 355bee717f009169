"""Pure builders of a Queue's children: shapes a user or Kubernetes would notice."""

from __future__ import annotations

import json

from rankq.operator import specs
from rankq.operator.models import QueueResource
from rankq.operator.reconcile import self_signed_tls
from rankq.server.auth import TOKEN_ENV


def queue(spec: dict | None = None, name: str = "orders", ns: str = "shop") -> QueueResource:
    return QueueResource.from_body(
        {
            "apiVersion": "rankq.io/v1alpha1",
            "kind": "Queue",
            "metadata": {"name": name, "namespace": ns, "uid": "u-1", "generation": 1},
            "spec": spec or {},
        }
    )


def test_every_child_is_owned_by_the_queue() -> None:
    for child in specs.build_children(queue(), password="pw"):
        [ref] = child["metadata"]["ownerReferences"]
        assert ref == {
            "apiVersion": "rankq.io/v1alpha1",
            "kind": "Queue",
            "name": "orders",
            "uid": "u-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert child["metadata"]["namespace"] == "shop"
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "rankq-operator"


def test_statefulset_shape() -> None:
    sts = specs.build_statefulset(queue({"replicas": 5, "image": "rankq:9"}))
    spec = sts["spec"]
    assert spec["replicas"] == 5 and spec["serviceName"] == "orders-peers"
    assert spec["updateStrategy"] == {"type": "OnDelete"}
    assert spec["podManagementPolicy"] == "Parallel"
    pod = spec["template"]["spec"]
    [c] = pod["containers"]
    assert c["image"] == "rankq:9"
    assert "--raft-host=$(POD_NAME).orders-peers.$(POD_NAMESPACE).svc" in c["args"]
    assert "--peers=$(RANKQ_PEERS)" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert env["RANKQ_PEERS"]["valueFrom"]["configMapKeyRef"] == {"name": "orders-config", "key": "peers"}
    assert env["RANKQ_RAFT_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "orders-raft", "key": "password"}
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["lifecycle"]["preStop"]["exec"]["command"][:3] == ["rankq", "node", "drain"]
    assert pod["terminationGracePeriodSeconds"] > specs.DRAIN_TIMEOUT
    assert pod["serviceAccountName"] == "orders"
    # Default: members spread across nodes.
    [spread] = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["maxSkew"] == 1
    assert spec["template"]["metadata"]["labels"][specs.QUEUE_LABEL] == "orders"
    assert specs.ROLE_LABEL not in spec["selector"]["matchLabels"]


def test_statefulset_replicas_override_for_scaling_steps() -> None:
    assert specs.build_statefulset(queue({"replicas": 5}), replicas=4)["spec"]["replicas"] == 4


def test_statefulset_storage_policies() -> None:
    kept = specs.build_statefulset(queue({"storage": {"size": "5Gi", "storageClassName": "fast"}}))["spec"]
    [claim] = kept["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    assert kept["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Delete"}
    dropped = specs.build_statefulset(queue({"storage": {"keepOnDelete": False}}))["spec"]
    assert dropped["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"
    eph = specs.build_statefulset(queue({"storage": {"ephemeral": True}}))["spec"]
    assert "volumeClaimTemplates" not in eph
    assert eph["template"]["spec"]["volumes"] == [{"name": "data", "emptyDir": {}}]


def test_scheduling_knobs_replace_defaults() -> None:
    tol = [{"key": "dedicated", "operator": "Equal", "value": "queues", "effect": "NoSchedule"}]
    aff = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}
    pod = specs.build_statefulset(
        queue({"tolerations": tol, "affinity": aff, "topologySpreadConstraints": [], "nodeSelector": {"disk": "ssd"}})
    )["spec"]["template"]["spec"]
    assert pod["tolerations"] == tol and pod["affinity"] == aff
    assert pod["topologySpreadConstraints"] == [] and pod["nodeSelector"] == {"disk": "ssd"}


def container(q: QueueResource) -> dict:
    return specs.build_statefulset(q)["spec"]["template"]["spec"]["containers"][0]


def token_env(q: QueueResource) -> dict[str, dict]:
    return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container(q)["env"] if e["name"] in TOKEN_ENV}


def kinds(q: QueueResource) -> list[tuple[str, str]]:
    return [(c["kind"], c["metadata"]["name"]) for c in specs.build_children(q, password="pw", token="t")]


def test_auth_secret_becomes_env() -> None:
    q = queue({"auth": {"secretRef": {"name": "tok"}}})
    assert token_env(q) == {"RANKQ_API_TOKEN": {"name": "tok", "key": "token"}}
    assert ("Secret", "orders-token") not in kinds(q)  # the all-scope token serves the operator too
    assert specs.operator_token_ref(q).name == "tok"


def test_without_auth_the_operator_generates_an_all_scope_token() -> None:
    """Server pods bind 0.0.0.0, so they always get a token: an open API is never the default."""
    q = queue()
    assert token_env(q) == {"RANKQ_API_TOKEN": {"name": "orders-token", "key": "token"}}
    [secret] = [
        c for c in specs.build_children(q, password="pw", token="gen") if c["metadata"]["name"] == "orders-token"
    ]
    assert secret["stringData"] == {"token": "gen"} and secret["kind"] == "Secret"


def test_a_secret_per_scope() -> None:
    q = queue({"auth": {"produce": {"name": "p"}, "consume": {"name": "c", "key": "k"}}})
    assert token_env(q) == {
        "RANKQ_PRODUCE_TOKEN": {"name": "p", "key": "token"},
        "RANKQ_CONSUME_TOKEN": {"name": "c", "key": "k"},
        "RANKQ_ADMIN_TOKEN": {"name": "orders-token", "key": "token"},
    }  # generated, admin only
    assert ("Secret", "orders-token") in kinds(q)
    q = queue({"auth": {"produce": {"name": "p"}, "admin": {"name": "a"}}})
    assert token_env(q) == {
        "RANKQ_PRODUCE_TOKEN": {"name": "p", "key": "token"},
        "RANKQ_ADMIN_TOKEN": {"name": "a", "key": "token"},
    }
    assert ("Secret", "orders-token") not in kinds(q) and specs.operator_token_ref(q).name == "a"


def test_every_auth_spec_gives_the_pods_a_token() -> None:
    for auth in (
        {},
        {"produce": {"name": "p"}},
        {"consume": {"name": "c"}},
        {"admin": {"name": "a"}},
        {"secretRef": {"name": "s"}},
    ):
        env = token_env(queue({"auth": auth}))
        assert env and ("RANKQ_ADMIN_TOKEN" in env or "RANKQ_API_TOKEN" in env), auth


def test_tls_from_a_cert_manager_secret() -> None:
    q = queue({"tls": {"secretName": "orders-cert"}})
    c = container(q)
    pod = specs.build_statefulset(q)["spec"]["template"]["spec"]
    assert {"name": "tls", "secret": {"secretName": "orders-cert", "defaultMode": 0o444}} in pod["volumes"]
    assert {"name": "tls", "mountPath": specs.TLS_DIR, "readOnly": True} in c["volumeMounts"]
    assert {
        f"--tls-cert={specs.TLS_DIR}/tls.crt",
        f"--tls-key={specs.TLS_DIR}/tls.key",
        f"--tls-ca={specs.TLS_DIR}/ca.crt",
    } <= set(c["args"])
    assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS" and c["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    drain = c["lifecycle"]["preStop"]["exec"]["command"]
    assert "--url=https://127.0.0.1:8080" in drain and f"--ca={specs.TLS_DIR}/ca.crt" in drain
    assert specs.http_url(q, "orders-0") == "https://orders-0.orders-peers.shop.svc:8080"
    assert not any(k == "Secret" and n == "orders-tls" for k, n in kinds(q))


def test_tls_generated_by_the_operator() -> None:
    q = queue({"tls": {"generate": True}, "storage": {"ephemeral": True}})
    pem = {"tls.crt": "C", "tls.key": "K", "ca.crt": "A"}
    [secret] = [
        c
        for c in specs.build_children(q, password="pw", token="t", tls_pem=pem)
        if c["metadata"]["name"] == "orders-tls"
    ]
    assert secret["type"] == "kubernetes.io/tls" and secret["stringData"] == pem
    volumes = {v["name"]: v for v in specs.build_statefulset(q)["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "orders-tls" and "emptyDir" in volumes["data"]


def test_without_tls_everything_is_plain_http() -> None:
    q = queue()
    c = container(q)
    assert not any(a.startswith("--tls") for a in c["args"]) and c["readinessProbe"]["httpGet"]["scheme"] == "HTTP"
    assert specs.http_url(q, "orders-0").startswith("http://")


def test_generated_certificate_covers_every_member() -> None:
    from cryptography import x509

    q = queue()
    pem = self_signed_tls(specs.tls_names(q))
    ca = x509.load_pem_x509_certificate(pem["ca.crt"].encode())
    cert = x509.load_pem_x509_certificate(pem["tls.crt"].encode())
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "*.orders-peers.shop.svc" in names and "orders.shop.svc" in names and "localhost" in names
    host = specs.raft_host(q, "orders-4")
    assert host.split(".", 1)[1] == "orders-peers.shop.svc"  # one label under the wildcard


def test_leader_service_selects_only_the_leader() -> None:
    svc = specs.build_leader_service(queue())
    assert svc["metadata"]["name"] == "orders"
    assert svc["spec"]["selector"] == {
        "app.kubernetes.io/name": "rankq",
        "rankq.io/queue": "orders",
        "rankq.io/role": "leader",
    }
    assert {p["name"] for p in svc["spec"]["ports"]} == {"http", "grpc"}


def test_peer_service_is_headless_and_publishes_not_ready() -> None:
    svc = specs.build_peer_service(queue())
    assert svc["metadata"]["name"] == "orders-peers"
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert specs.ROLE_LABEL not in svc["spec"]["selector"]


def test_pdb_never_allows_losing_quorum() -> None:
    for replicas, min_available in [(1, 1), (3, 2), (5, 3), (7, 4)]:
        pdb = specs.build_pdb(queue({"replicas": replicas}))
        assert pdb["spec"]["minAvailable"] == min_available
        assert replicas - min_available < min_available  # those left still form a majority


def test_configmap_holds_settings_and_peers() -> None:
    q = queue(
        {
            "replicas": 3,
            "queue": {
                "name": "jobs",
                "policy": "strict",
                "weights": {"2": 5, "1": 9},
                "visibilityTimeoutSeconds": 12,
                "maxLength": 100,
            },
            "deadLetter": {"enabled": False, "maxDeliveries": 2, "retentionSeconds": 60},
        }
    )
    data = specs.build_configmap(q)["data"]
    assert data["queue"] == "jobs"
    assert data["peers"] == (
        "orders-0=orders-0.orders-peers.shop.svc:7070,"
        "orders-1=orders-1.orders-peers.shop.svc:7070,"
        "orders-2=orders-2.orders-peers.shop.svc:7070"
    )
    settings = json.loads(data["settings.json"])
    assert settings["policy"] == "strict" and settings["visibility_timeout"] == 12.0
    assert settings["weights"] == {"1": 9, "2": 5}
    assert settings["dead_letter"] is False and settings["max_deliveries"] == 2
    assert settings["dead_letter_retention"] == 60.0 and settings["max_length"] == 100
    assert specs.build_configmap(q, members=4)["data"]["peers"].count("=") == 4


def test_queue_settings_are_valid_server_settings() -> None:
    from rankq.schemas import QueueSettings

    settings = QueueSettings.model_validate(specs.queue_settings(queue({"queue": {"weights": {"1": 3}}})))
    assert settings.weights == {1: 3}


def test_secret_and_rbac() -> None:
    secret = specs.build_secret(queue(), "s3cret")
    assert secret["metadata"]["name"] == "orders-raft" and secret["stringData"] == {"password": "s3cret"}
    sa, role, binding = specs.build_rbac(queue())
    assert sa["kind"] == "ServiceAccount" and sa["metadata"]["name"] == "orders"
    [rule] = role["rules"]
    assert rule["resources"] == ["pods"] and set(rule["verbs"]) == {"get", "patch"}
    assert rule["resourceNames"] == [f"orders-{i}" for i in range(7)]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "orders", "namespace": "shop"}]
    assert binding["roleRef"]["name"] == "orders"


def test_server_pods_can_write_their_volume() -> None:
    """The image runs as uid 10001; without fsGroup a fresh volume stays root's and the server
    crash-loops on its journal (seen on a real node)."""
    pod = specs.build_statefulset(queue())["spec"]["template"]["spec"]
    assert pod["securityContext"]["fsGroup"] == specs.IMAGE_UID == pod["securityContext"]["runAsUser"]


def test_archive_dsn_from_a_secret_turns_archiving_on() -> None:
    q = queue({"archive": {"dsnSecretRef": {"name": "pg", "key": "dsn"}}})
    env = {e["name"]: e for e in specs.server_env(q)}
    assert env["RANKQ_ARCHIVE_DSN"]["valueFrom"] == {"secretKeyRef": {"name": "pg", "key": "dsn"}}
    assert env["RANKQ_ARCHIVE_GROUP"]["value"] == "shop/orders"
    assert specs.queue_settings(q)["archive"] is True
    assert specs.queue_settings(queue())["archive"] is False
    assert "RANKQ_ARCHIVE_DSN" not in {e["name"] for e in specs.server_env(queue())}


def test_scheduled_backups_write_to_a_volume_that_outlives_the_queue() -> None:
    q = queue({"backup": {"schedule": "0 * * * *", "keep": 5, "size": "20Gi"}})
    kinds = [c["kind"] for c in specs.build_children(q, 3, "pw", "tok")]
    assert kinds[-2:] == ["PersistentVolumeClaim", "CronJob"]
    claim, cron = specs.build_backup_claim(q), specs.build_backup_cronjob(q)
    assert "ownerReferences" not in claim["metadata"] and specs.outlives_queue(claim, q)
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    script = pod["containers"][0]["command"][2]
    assert "rankq --url http://orders.shop.svc:8080 backup" in script and "tail -n +6" in script
    assert pod["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "orders-token"  # admin scope
    assert cron["spec"]["concurrencyPolicy"] == "Forbid" and cron["spec"]["schedule"] == "0 * * * *"
    assert "CronJob" not in [c["kind"] for c in specs.build_children(queue(), 3, "pw", "tok")]
