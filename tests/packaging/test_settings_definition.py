"""Every queue setting is declared once (rankq.engine.config.SETTINGS); this walks every place that
speaks of queue settings -- the HTTP schema, gRPC, the CLI, the Queue resource -- and fails when one
differs from the definition in name, default or bounds, or lacks a setting."""

from __future__ import annotations

import dataclasses

import pytest

from rankq import schemas
from rankq.cli import main as cli
from rankq.engine.config import INT64_MAX, INT64_MIN, SETTINGS, QueueConfig
from rankq.engine.errors import Invalid
from rankq.operator import models
from rankq.operator.specs import queue_settings
from rankq.server.grpc_api import settings_to_engine
from rankq.server.proto import rankq_pb2 as pb

SPECS = list(SETTINGS.values())
IDS = [s.name for s in SPECS]


def test_every_queueconfig_field_is_a_defined_setting():
    assert [f.name for f in dataclasses.fields(QueueConfig)] == list(SETTINGS)
    defaults = QueueConfig()
    for spec in SPECS:
        assert getattr(defaults, spec.name) == spec.default


def _bounds(prop: dict) -> tuple:
    option = next(o for o in prop["anyOf"] if o.get("type") != "null")
    return option.get("minimum", option.get("exclusiveMinimum")), option.get("maximum"), option


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_http_schema(spec):
    props = schemas.QueueSettings.model_json_schema()["properties"]
    prop = props[spec.wire]
    low, high, option = _bounds(prop)
    if spec.kind is int:
        assert high == spec.wire_value(spec.high)
        if spec.is_duration and spec.low:
            assert "exclusiveMinimum" in option and low == 0
        else:
            assert low == spec.wire_value(spec.low if spec.low is not None else INT64_MIN)
    if spec.choices:
        assert tuple(option["enum"]) == spec.choices
    if spec.default is not None and not isinstance(spec.default, dict):
        shown = spec.wire_value(spec.default)
        shown = str(shown).lower() if isinstance(shown, bool) else shown
        shown = int(shown) if isinstance(shown, float) and shown.is_integer() else shown
        assert f"(default {shown})" in prop["description"]
    # The round trip in engine units.
    if spec.kind is int and spec.high is not None:
        wire_high = spec.wire_value(spec.high)
        assert schemas.QueueSettings.model_validate({spec.wire: wire_high}).to_engine() == {spec.name: spec.high}
        with pytest.raises(ValueError):
            schemas.QueueSettings.model_validate({spec.wire: wire_high * 2 + 1})


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_grpc(spec):
    assert spec.wire in pb.QueueSettings.DESCRIPTOR.fields_by_name
    if spec.kind is int and spec.high is not None and spec.high < INT64_MAX:
        wire_high = spec.wire_value(spec.high)
        engine = settings_to_engine(pb.QueueSettings(**{spec.wire: wire_high}))
        assert engine == {spec.name: spec.high}
        above = wire_high + (0.001 if spec.is_duration else 1)
        with pytest.raises(Invalid):
            QueueConfig().with_changes(settings_to_engine(pb.QueueSettings(**{spec.wire: above})))


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_cli_options(spec):
    create = cli.commands["queue"].commands["create"]
    update = cli.commands["queue"].commands["update"]
    for command in (create, update):
        option = next(p for p in command.params if p.name == spec.wire)
        assert "--" + spec.wire.replace("_", "-") in option.opts
    option = next(p for p in create.params if p.name == spec.wire)
    if spec.kind is int and not spec.nullable and spec.high is not None and spec.high < INT64_MAX:
        assert option.type.max == spec.wire_value(spec.high)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_queue_resource(spec):
    if spec.name in models.NOT_IN_CR:
        assert spec.name not in models.CR_SETTINGS
        return
    section, field_name = models.CR_SETTINGS[spec.name]
    model = {"queue": models.QueueSettingsSpec, "dead_letter": models.DeadLetterSpec}[section]
    field = model.model_fields[field_name]
    scale = 1000 if spec.is_duration else 1
    if field.default is not None:  # None: the server's default applies
        assert field.default == spec.wire_value(spec.default), "the resource's default differs from the server's"
    if spec.kind is int:
        ge = next((m.ge for m in field.metadata if getattr(m, "ge", None) is not None), None)
        le = next((m.le for m in field.metadata if getattr(m, "le", None) is not None), None)
        assert ge == (None if spec.low is None or spec.low <= INT64_MIN else -(-spec.low // scale))
        assert le == (None if spec.high is None or spec.high >= INT64_MAX else spec.high // scale)
    # The resource's value reaches the server under the setting's wire name.
    sample = {
        bool: True,
        int: spec.high // scale if spec.high and spec.high < INT64_MAX else 7,
        str: spec.choices[-1] if spec.choices else "x",
        dict: {"2": 9},
    }[spec.kind]
    resource = models.QueueResource(metadata={"name": "q"}, spec={section: {field_name: sample}})
    sent = queue_settings(resource)
    expected = {"2": 9} if spec.kind is dict else sample
    got = sent[spec.wire]
    assert ({str(k): v for k, v in got.items()} if isinstance(got, dict) else got) == expected


def test_new_queue_from_a_resource_without_settings_gets_the_servers_defaults():
    sent = queue_settings(models.QueueResource(metadata={"name": "q"}))
    engine = schemas.QueueSettings.model_validate(sent).to_engine()
    assert QueueConfig().with_changes(engine).as_dict() == QueueConfig().as_dict()
