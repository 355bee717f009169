"""The committed CRD (and the chart's copy) equal what the models generate; the schema is structural."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rankq.operator import crd
from rankq.operator.models import QueueSpec

ROOT = Path(__file__).resolve().parents[2]


def test_committed_crd_equals_generated() -> None:
    committed = (ROOT / "crds" / "queue.yaml").read_text()
    assert committed == crd.render(), "crds/queue.yaml is stale: run `python -m rankq.operator.crd > crds/queue.yaml`"


def test_chart_crd_equals_generated() -> None:
    chart_copy = ROOT / "helm" / "rankq" / "crds" / "queue.yaml"
    assert chart_copy.read_text() == crd.render(), "helm/rankq/crds/queue.yaml differs from crds/queue.yaml"


def _walk(node, path="$"):
    yield path, node
    for key, value in node.get("properties", {}).items():
        yield from _walk(value, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural() -> None:
    schema = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node and "anyOf" not in node and "title" not in node, path
        assert "type" in node, f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path


def test_defaults_in_crd_match_model_defaults() -> None:
    """An empty spec defaulted by the apiserver must mean what QueueSpec() means."""
    schema = crd.spec_schema()

    def apply_defaults(node, value):
        if node.get("type") == "object" and "properties" in node:
            value = dict(value)
            for key, sub in node["properties"].items():
                if key not in value and "default" in sub:
                    value[key] = sub["default"]
                if key in value:
                    value[key] = apply_defaults(sub, value[key])
        return value

    defaulted = apply_defaults(schema, {})
    assert QueueSpec.model_validate(defaulted).wire() == QueueSpec().wire()


def test_printer_columns_and_subresources() -> None:
    version = crd.build_crd()["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Replicas",
        "Ready",
        "Leader",
        "Depth",
        "DLQ",
        "Workers",
        "Phase",
        "Age",
    ]
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert "status" in version["subresources"]


def test_crd_yaml_parses_as_one_document() -> None:
    docs = list(yaml.safe_load_all(crd.render()))
    assert len(docs) == 1 and docs[0]["metadata"]["name"] == "queues.rankq.io"


@pytest.mark.parametrize("replicas", [1, 3, 5, 7])
def test_replicas_rule_names_allowed_sizes(replicas: int) -> None:
    rule = crd.spec_schema()["properties"]["replicas"]["x-kubernetes-validations"][0]
    assert rule["rule"] == "self in [1, 3, 5, 7]" and "odd" in rule["message"]
