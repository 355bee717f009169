"""The `Queue` CustomResourceDefinition, generated from the pydantic models in `models.py`.

    python -m rankq.operator.crd > crds/queue.yaml

pydantic emits JSON Schema; Kubernetes wants a *structural* OpenAPI v3 schema: no `$ref`, no
`anyOf` for optional fields, `x-kubernetes-preserve-unknown-fields` where Kubernetes types are kept
verbatim, and `default: {}` on nested objects so that their own defaults apply. `structural()` does
that translation; tests check that the committed YAML equals `render()`.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import yaml

from . import models as m

CRD_NAME = f"{m.PLURAL}.{m.GROUP}"
HEADER = "# Generated from rankq/operator/models.py by `python -m rankq.operator.crd`; do not edit.\n"

_DROP = {"title", "$defs"}


def structural(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema rewritten as a Kubernetes structural schema."""
    defs = schema.get("$defs", {})

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in node:
            target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[1]])
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return resolve({**target, **rest})
        if "anyOf" in node:
            options = [o for o in node["anyOf"] if o.get("type") != "null"]
            if len(options) != 1:
                raise ValueError(f"cannot express a union in a structural schema: {node}")
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            base = resolve(options[0])
            return {**base, **rest}
        return node

    def walk(node: dict[str, Any], defaulted_object: bool = False) -> dict[str, Any]:
        node = resolve(node)
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _DROP:
                continue
            if key == "default" and value is None:
                continue
            if key == "additionalProperties":
                if isinstance(value, bool) or value == {}:
                    continue
                out[key] = walk(value)
                continue
            if key == "properties":
                out[key] = {name: walk(sub, defaulted_object=True) for name, sub in value.items()}
                continue
            if key == "items":
                out[key] = walk(value)
                continue
            if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
                out[key.replace("exclusiveM", "m")] = value
                out[key] = True
                continue
            out[key] = value
        if out.get("x-kubernetes-preserve-unknown-fields"):
            out.pop("additionalProperties", None)
        if (
            defaulted_object
            and out.get("type") == "object"
            and "properties" in out
            and "default" not in out
            and not out.get("required")
        ):
            out["default"] = {}
        # Field order: type first, then the rest as pydantic gave them, for a readable diff.
        if "type" in out:
            out = {"type": out.pop("type"), **out}
        return out

    return walk(schema)


def spec_schema() -> dict[str, Any]:
    schema = structural(m.QueueSpec.model_json_schema(by_alias=True, mode="validation"))
    schema["default"] = {}
    schema["description"] = "Desired state of a replicated queue."
    return schema


def status_schema() -> dict[str, Any]:
    schema = structural(m.QueueStatus.model_json_schema(by_alias=True, mode="validation"))
    schema["description"] = "Observed state, written by the operator."
    return schema


PRINTER_COLUMNS = [
    {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
    {"name": "Leader", "type": "string", "jsonPath": ".status.leader"},
    {"name": "Depth", "type": "integer", "jsonPath": ".status.depth"},
    {"name": "DLQ", "type": "integer", "jsonPath": ".status.messages.dead"},
    {"name": "Workers", "type": "string", "jsonPath": ".status.workersSummary"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def build_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME, "labels": {"app.kubernetes.io/part-of": "rankq"}},
        "spec": {
            "group": m.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": m.KIND,
                "listKind": f"{m.KIND}List",
                "plural": m.PLURAL,
                "singular": m.SINGULAR,
                "shortNames": list(m.SHORT_NAMES),
                "categories": ["rankq"],
            },
            "versions": [
                {
                    "name": m.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A replicated RankQ queue: a Raft group of servers behind a leader-only Service.",
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


def render() -> str:
    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=120)


if __name__ == "__main__":
    sys.stdout.write(render())
