"""CRD structural schemas: validation messages, pruning, defaulting and CRD checks."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from orbiter.orchestration.apiserver.fielderrors import FieldError, go_float, go_quote, go_value
from orbiter.orchestration.apiserver.schemas import (
    compile_schema,
    crd_resource_types,
    validate_crd,
)


def errors(prop: dict[str, Any], value: Any, *, required: bool = False) -> list[str]:
    """Validate ``{"spec": {"f": value}}`` against a schema whose ``spec.f`` is ``prop``."""
    spec: dict[str, Any] = {"type": "object", "properties": {"f": prop}}
    if required:
        spec["required"] = ["f"]
    schema = {"type": "object", "properties": {"spec": spec}}
    obj = {"spec": {} if value is ... else {"f": value}}
    return [str(e) for e in compile_schema(schema).validate(obj)]


def inv(value: str, text: str) -> str:
    """The message of a failed value validation of ``spec.f`` (kube-openapi's wording)."""
    return f"spec.f: Invalid value: {value}: spec.f in body {text}"


def typ(actual: str, want: str) -> str:
    return inv(f'"{actual}"', f'must be of type {want}: "{actual}"')


def junctor(text: str) -> str:
    return f'spec.f: Invalid value: "": "spec.f" {text}'


STR, INT = {"type": "string"}, {"type": "integer"}
STRINGS = {"type": "array", "items": STR}
EMBEDDED = {
    "type": "object",
    "x-kubernetes-embedded-resource": True,
    "x-kubernetes-preserve-unknown-fields": True,
}
MAP_LIST = {
    "type": "array",
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["name"],
    "items": {"type": "object"},
}
ITEMS_N = {"type": "array", "items": {"type": "object", "properties": {"n": INT}}}

# (schema of spec.f, a valid value, an invalid value, the exact message for the invalid one)
KEYWORDS: list[tuple[dict[str, Any], Any, Any, str]] = [
    (INT, 3, "three", typ("string", "integer")),
    (INT, 3, 2.5, typ("number", "integer")),
    ({"type": "number"}, 3, "x", typ("string", "number")),
    ({"type": "number"}, 2.5, True, typ("boolean", "number")),
    (STR, "x", 1, typ("integer", "string")),
    ({"type": "boolean"}, False, "true", typ("string", "boolean")),
    ({"type": "object"}, {}, [], typ("array", "object")),
    (STRINGS, ["a"], {}, typ("object", "array")),
    (STR, "x", None, typ("null", "string")),
    (
        {**STR, "enum": ["a", "b"]},
        "a",
        "x",
        'spec.f: Unsupported value: "x": supported values: "a", "b"',
    ),
    ({**INT, "enum": [1, 2]}, 2, 3, 'spec.f: Unsupported value: 3: supported values: "1", "2"'),
    ({**INT, "maximum": 10}, 10, 11, inv("11", "should be less than or equal to 10")),
    ({**INT, "maximum": 10, "exclusiveMaximum": True}, 9, 10, inv("10", "should be less than 10")),
    ({**INT, "minimum": 1}, 1, 0, inv("0", "should be greater than or equal to 1")),
    (
        {"type": "number", "minimum": 0, "exclusiveMinimum": True},
        0.5,
        0,
        inv("0", "should be greater than 0"),
    ),
    (
        {"type": "number", "maximum": 1e6},
        5.5,
        2e6,
        inv("2e+06", "should be less than or equal to 1e+06"),
    ),
    ({**INT, "multipleOf": 5}, 15, 7, inv("7", "should be a multiple of 5")),
    ({"type": "number", "multipleOf": 0.5}, 1.5, 1.2, inv("1.2", "should be a multiple of 0.5")),
    ({**STR, "pattern": "^[a-z]+$"}, "abc", "ABC", inv('"ABC"', "should match '^[a-z]+$'")),
    ({**STR, "minLength": 3}, "abc", "ab", inv('"ab"', "should be at least 3 chars long")),
    ({**STR, "maxLength": 3}, "abc", "abcd", "spec.f: Too long: may not be longer than 3"),
    ({**STRINGS, "minItems": 1}, ["a"], [], inv("0", "should have at least 1 items")),
    (
        {**STRINGS, "maxItems": 1},
        ["a"],
        ["a", "b"],
        "spec.f: Too many: 2: must have at most 1 items",
    ),
    (
        {**STRINGS, "uniqueItems": True},
        ["a", "b"],
        ["a", "a"],
        inv('""', "shouldn't contain duplicates"),
    ),
    (
        {"type": "object", "minProperties": 1},
        {"a": 1},
        {},
        inv("0", "should have at least 1 properties"),
    ),
    (
        {"type": "object", "maxProperties": 1},
        {"a": 1},
        {"a": 1, "b": 2},
        "spec.f: Too many: 2: must have at most 1 items",
    ),
    (
        {**STR, "format": "date-time"},
        "2024-05-01T10:00:00Z",
        "soon",
        inv('"soon"', 'must be of type date-time: "soon"'),
    ),
    (
        {**STR, "format": "date-time"},
        "2024-05-01t10:00:00.1+02:00",
        "2024-13-01T10:00:00Z",
        inv('"2024-13-01T10:00:00Z"', 'must be of type date-time: "2024-13-01T10:00:00Z"'),
    ),
    (
        {**INT, "format": "int32"},
        2**31 - 1,
        2**31,
        inv("2147483648", 'must be of type int32: "2147483648"'),
    ),
    (
        {**INT, "format": "int64"},
        -(2**63),
        2**63,
        inv(str(2**63), f'must be of type int64: "{2**63}"'),
    ),
    ({"x-kubernetes-int-or-string": True}, "50%", True, typ("boolean", "integer,string")),
    (
        {"type": "object", "additionalProperties": STR},
        {"a": "x"},
        {"a": 1},
        'spec.f.a: Invalid value: "integer": spec.f.a in body must be of type string: "integer"',
    ),
    (
        ITEMS_N,
        [{"n": 1}],
        [{"n": 1}, {"n": "2"}],
        'spec.f[1].n: Invalid value: "string": '
        'spec.f[1].n in body must be of type integer: "string"',
    ),
    (
        {**STRINGS, "x-kubernetes-list-type": "set"},
        ["a", "b"],
        ["a", "b", "a"],
        'spec.f[2]: Duplicate value: "a"',
    ),
    (
        MAP_LIST,
        [{"name": "a"}, {"name": "b"}],
        [{"name": "a"}, {"name": "a", "v": 1}],
        'spec.f[1]: Duplicate value: {"name":"a"}',
    ),
    (
        EMBEDDED,
        {"apiVersion": "v1", "kind": "Pod"},
        {"metadata": {}},
        "spec.f.kind: Required value: must not be empty",
    ),
    (
        {**INT, "anyOf": [{"minimum": 5}, {"maximum": 1}]},
        0,
        3,
        junctor("must validate at least one schema (anyOf)"),
    ),
    (
        {**INT, "allOf": [{"minimum": 1}, {"maximum": 5}]},
        3,
        9,
        junctor("must validate all the schemas (allOf)"),
    ),
    (
        {**INT, "oneOf": [{"minimum": 5}, {"maximum": 6}]},
        9,
        5,
        junctor("must validate one and only one schema (oneOf). Found 2 valid alternatives"),
    ),
    ({**STR, "not": {"enum": ["no"]}}, "fine", "no", junctor("must not validate the schema (not)")),
]


@pytest.mark.parametrize(("prop", "good", "bad", "message"), KEYWORDS)
def test_keyword_passes_and_fails_with_kubernetes_message(
    prop: dict[str, Any], good: Any, bad: Any, message: str
) -> None:
    assert errors(prop, good) == []
    assert message in errors(prop, bad)


def test_required_and_nested_properties() -> None:
    prop = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
    assert errors(prop, {"name": "x"}) == []
    assert errors(prop, {}) == ["spec.f.name: Required value"]
    assert errors({"type": "string"}, ..., required=True) == ["spec.f: Required value"]


def test_nullable_accepts_null_only_when_declared() -> None:
    assert errors({"type": "string", "nullable": True}, None) == []
    assert errors({"type": "string", "nullable": True}, 3) != []


def test_number_accepts_integers_and_integer_rejects_floats() -> None:
    assert errors({"type": "number"}, 3) == []
    assert errors({"type": "integer"}, 3.0) != []  # JSON 3.0 decodes as a float, as in Go


def test_int_or_string_accepts_both() -> None:
    prop = {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert errors(prop, 8080) == []
    assert errors(prop, "http") == []


def test_enum_keeps_booleans_apart_from_numbers() -> None:
    assert errors({"enum": [1]}, True) == ['spec.f: Unsupported value: true: supported values: "1"']
    assert errors({"enum": [1]}, 1.0) == []
    assert errors({"enum": [{"a": 1}]}, {"a": 1}) == []


def test_anyof_reports_the_closest_branch_too() -> None:
    prop = {"type": "string", "anyOf": [{"maxLength": 2}, {"pattern": "^x"}]}
    assert errors(prop, "xyz") == []
    assert errors(prop, "abc") == [
        'spec.f: Invalid value: "": "spec.f" must validate at least one schema (anyOf)',
        "spec.f: Too long: may not be longer than 2",
    ]


def test_allof_failing_reports_branches_and_summary() -> None:
    prop = {"type": "integer", "allOf": [{"minimum": 1}, {"maximum": 5}]}
    assert errors(prop, 9) == [
        "spec.f: Invalid value: 9: spec.f in body should be less than or equal to 5",
        'spec.f: Invalid value: "": "spec.f" must validate all the schemas (allOf)',
    ]


def test_oneof_with_no_match_says_so() -> None:
    prop = {"type": "integer", "oneOf": [{"minimum": 5}, {"maximum": 1}]}
    assert errors(prop, 3)[0].endswith(
        "must validate one and only one schema (oneOf). Found none valid"
    )


def test_embedded_resource_requires_kind_and_api_version() -> None:
    prop = {"type": "object", "x-kubernetes-embedded-resource": True, "properties": {}}
    assert errors(prop, {}) == [
        "spec.f.kind: Required value: must not be empty",
        "spec.f.apiVersion: Required value: must not be empty",
    ]


def test_error_fields_and_causes() -> None:
    schema = compile_schema({"type": "object", "properties": {"n": {"type": "integer"}}})
    (err,) = schema.validate({"n": "x"})
    assert (err.path, err.type, err.value) == ("n", "FieldValueTypeInvalid", "string")
    assert (
        err.detail
        == err.body
        == 'Invalid value: "string": n in body must be of type integer: "string"'
    )
    assert err.as_cause() == {"reason": "FieldValueTypeInvalid", "message": err.body, "field": "n"}
    assert str(FieldError("spec.x", "FieldValueRequired")) == "spec.x: Required value"
    assert str(FieldError("a", "FieldValueForbidden", "no")) == "a: Forbidden: no"


def test_go_formatting() -> None:
    floats = [10.0, 1e6, 123456.0, 1234567.0, 0.0001, 0.00001, 1.5, -2.25, 3e-7, 0.0]
    assert [go_float(f) for f in floats] == [
        "10", "1e+06", "123456", "1.234567e+06", "0.0001", "1e-05", "1.5", "-2.25", "3e-07", "0",
    ]  # fmt: skip
    assert go_quote('a"b\\c\n\x01é') == '"a\\"b\\\\c\\n\\x01é"'
    assert [go_value(v) for v in (None, True, 3, "s", [1])] == ["null", "true", "3", '"s"', "[1]"]


WIDGET: dict[str, Any] = {
    "type": "object",
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "properties": {
                "size": {"type": "integer", "default": 1},
                "mode": {"type": "string", "default": "fast"},
                "opt": {"type": "string", "nullable": True, "default": "d"},
                "plain": {"type": "string"},
                "tags": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "k": {"type": "string"},
                            "w": {"type": "integer", "default": 5},
                        },
                    },
                },
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "config": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": True,
                    "properties": {
                        "known": {"type": "object", "properties": {"a": {"type": "string"}}}
                    },
                },
                "any": {"type": "object", "additionalProperties": True},
                "template": {
                    "type": "object",
                    "x-kubernetes-embedded-resource": True,
                    "properties": {"spec": {"type": "object", "properties": {}}},
                },
                "nested": {
                    "type": "object",
                    "default": {"inner": {}},
                    "properties": {
                        "inner": {
                            "type": "object",
                            "properties": {"x": {"type": "integer", "default": 7}},
                        },
                    },
                },
            },
        },
        "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
    },
}


def test_prune_removes_unknown_fields_and_returns_paths() -> None:
    obj: dict[str, Any] = {
        "apiVersion": "example.io/v1",
        "kind": "Widget",
        "metadata": {"name": "w", "labels": {"a": "b"}, "whatever": 1},
        "spec": {
            "size": 2,
            "extra": 1,
            "tags": [{"k": "a", "junk": True}, {"k": "b"}],
            "labels": {"free": "form"},
            "config": {"anything": {"goes": 1}, "known": {"a": "x", "b": "dropped"}},
            "any": {"x": {"y": 1}},
            "template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"n": 1}, "spec": {"z": 1}},
        },
        "status": {"ready": True, "phase": "x"},
        "unknownTop": 1,
    }
    schema = compile_schema(WIDGET)
    assert sorted(schema.prune(obj)) == [
        "spec.config.known.b",
        "spec.extra",
        "spec.tags[0].junk",
        "spec.template.spec.z",
        "status.phase",
        "unknownTop",
    ]
    assert obj["metadata"] == {"name": "w", "labels": {"a": "b"}, "whatever": 1}
    assert obj["spec"]["config"] == {"anything": {"goes": 1}, "known": {"a": "x"}}
    assert obj["spec"]["any"] == {"x": {"y": 1}}
    assert obj["spec"]["template"]["metadata"] == {"n": 1}
    assert schema.prune(obj) == []


def test_object_without_properties_prunes_everything() -> None:
    schema = compile_schema({"type": "object", "properties": {"spec": {"type": "object"}}})
    obj = {"kind": "K", "spec": {"a": 1}}
    assert schema.prune(obj) == ["spec.a"]
    assert obj == {"kind": "K", "spec": {}}


def test_default_fills_missing_fields_and_drops_nulls() -> None:
    obj: dict[str, Any] = {
        "spec": {"size": None, "opt": None, "plain": None, "tags": [{"k": "a"}, {"w": 1}]}
    }
    compile_schema(WIDGET).default(obj)
    spec = obj["spec"]
    assert spec["size"] == 1  # null of a non-nullable field with a default: defaulted
    assert spec["opt"] is None  # nullable: a null is a value
    assert "plain" not in spec  # null without default: dropped, as the apiserver does
    assert spec["mode"] == "fast"
    assert spec["tags"] == [{"k": "a", "w": 5}, {"w": 1}]
    assert spec["nested"] == {"inner": {"x": 7}}  # defaults apply inside defaulted values


def test_defaults_are_copies() -> None:
    schema = compile_schema(WIDGET)
    a: dict[str, Any] = {"spec": {}}
    b: dict[str, Any] = {"spec": {}}
    schema.default(a)
    schema.default(b)
    a["spec"]["nested"]["inner"]["x"] = 99
    assert b["spec"]["nested"]["inner"]["x"] == 7
    assert WIDGET["properties"]["spec"]["properties"]["nested"]["default"] == {"inner": {}}


def test_schema_is_compiled_once_and_reused() -> None:
    schema = compile_schema(copy.deepcopy(WIDGET))
    for size in (1, 2, 3):
        assert schema.validate({"spec": {"size": size}}) == []
    assert len(schema.validate({"spec": {"size": "x"}})) == 1


def crd(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.io"},
        "spec": {
            "group": "example.io",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Size", "type": "integer", "jsonPath": ".spec.size"}
                    ],
                    "schema": {"openAPIV3Schema": copy.deepcopy(WIDGET)},
                }
            ],
        },
    }
    for path, value in overrides.items():
        node = base
        *parents, last = path.split("__")
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if value is ...:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return base


def crd_errors(**overrides: Any) -> list[str]:
    return [str(e) for e in validate_crd(crd(**overrides))]


def test_valid_crd_passes() -> None:
    assert crd_errors() == []


SCHEMA = "spec.versions[0].schema.openAPIV3Schema"
STATUS = f"{SCHEMA}.properties[status]"
V0 = "spec.versions[0]"


def status(schema: dict[str, Any]) -> dict[str, Any]:
    """Overrides that replace the root schema's ``status`` property."""
    return {"spec__versions__0__schema__openAPIV3Schema__properties__status": schema}


def root(key: str, value: Any) -> dict[str, Any]:
    return {f"spec__versions__0__schema__openAPIV3Schema__{key}": value}


DNS = "a DNS-1035 label must consist of lower case alphanumeric characters"
NO_SIZE_TYPE: dict[str, Any] = {
    "spec__versions__0__schema__openAPIV3Schema__properties__spec__properties__size": {}
}
BOTH = {"type": "object", "properties": {"a": STR}, "additionalProperties": STR}


# (overrides of the valid CRD, how one of the errors starts)
CRD_MISTAKES: list[tuple[dict[str, Any], str]] = [
    (
        {"metadata__name": "widget.example.io"},
        'metadata.name: Invalid value: "widget.example.io": '
        'must be spec.names.plural+"."+spec.group',
    ),
    ({"spec__group": ...}, "spec.group: Required value"),
    (
        {"spec__group": "example"},
        'spec.group: Invalid value: "example": should be a domain with at least one dot',
    ),
    (
        {"spec__group": "Ex.io", "metadata__name": "widgets.Ex.io"},
        'spec.group: Invalid value: "Ex.io": a lowercase RFC 1123 subdomain',
    ),
    (
        {"spec__scope": "Global"},
        'spec.scope: Unsupported value: "Global": supported values: "Cluster", "Namespaced"',
    ),
    ({"spec__scope": ...}, "spec.scope: Required value"),
    ({"spec__names__plural": ...}, "spec.names.plural: Required value"),
    (
        {"spec__names__plural": "Ws", "metadata__name": "Ws.example.io"},
        f'spec.names.plural: Invalid value: "Ws": {DNS}',
    ),
    ({"spec__names__kind": ...}, "spec.names.kind: Required value"),
    (
        {"spec__names__kind": "W_x"},
        'spec.names.kind: Invalid value: "W_x": '
        f"may have mixed case, but should otherwise match: {DNS}",
    ),
    (
        {"spec__names__listKind": "Widget"},
        'spec.names.listKind: Invalid value: "Widget": kind and listKind cannot be the same',
    ),
    ({"spec__names__singular": "1w"}, f'spec.names.singular: Invalid value: "1w": {DNS}'),
    (
        {"spec__names__shortNames": ["ok", "Bad"]},
        f'spec.names.shortNames[1]: Invalid value: "Bad": {DNS}',
    ),
    ({"spec__versions": []}, "spec.versions: Required value: must have at least one version"),
    (
        {"spec__versions__0__storage": False},
        'spec.versions: Invalid value: ["v1"]: '
        "must have exactly one version marked as storage version",
    ),
    ({"spec__versions__0__name": "V1"}, f'{V0}.name: Invalid value: "V1": {DNS}'),
    ({"spec__versions__0__schema": ...}, f"{SCHEMA}: Required value: schemas are required"),
    (root("type", "array"), f'{SCHEMA}.type: Invalid value: "array": must be object at the root'),
    (root("type", ...), f"{SCHEMA}.type: Required value: must not be empty at the root"),
    (
        root("additionalProperties", True),
        f"{SCHEMA}.additionalProperties: Forbidden: must not be used at the root",
    ),
    (
        NO_SIZE_TYPE,
        f"{SCHEMA}.properties[spec].properties[size].type: "
        "Required value: must not be empty for specified object fields",
    ),
    (status({"type": "array"}), f"{STATUS}.items: Required value: must be specified"),
    (
        status({"type": "array", "items": {}}),
        f"{STATUS}.items.type: Required value: must not be empty for specified array items",
    ),
    (
        status(BOTH),
        f"{STATUS}.additionalProperties: "
        "Forbidden: additionalProperties and properties are mutual exclusive",
    ),
    (
        status({**STRINGS, "uniqueItems": True}),
        f"{STATUS}.uniqueItems: Forbidden: "
        "uniqueItems cannot be set to true since the runtime complexity becomes quadratic",
    ),
    (
        status({"type": "strng"}),
        f'{STATUS}.type: Unsupported value: "strng": supported values: '
        '"array", "boolean", "integer", "number", "object", "string"',
    ),
    (status({"$ref": "#/x"}), f"{STATUS}.$ref: Forbidden: $ref is not supported"),
    (
        status({**STR, "anyOf": [STR]}),
        f"{STATUS}.anyOf[0].type: Forbidden: must be empty to be structural",
    ),
    (
        status({**STR, "pattern": "(["}),
        f'{STATUS}.pattern: Invalid value: "([": must be a valid regular expression',
    ),
    (
        status({**INT, "default": "x"}),
        f'{STATUS}.default: Invalid value: "string": in body must be of type integer: "string"',
    ),
    (
        status({"type": "object", "x-kubernetes-embedded-resource": True}),
        f"{STATUS}.properties: "
        "Required value: must not be empty if x-kubernetes-embedded-resource is true",
    ),
    (
        root(
            "properties__metadata", {"type": "object", "properties": {"labels": {"type": "object"}}}
        ),
        f"{SCHEMA}.properties[metadata]: "
        "Forbidden: must not specify anything other than name and generateName",
    ),
    (
        {"spec__versions__0__subresources": {"scale": {"specReplicasPath": "spec.n"}}},
        f'{V0}.subresources.scale.specReplicasPath: Invalid value: "spec.n": '
        "should be a json path under .spec",
    ),
    (
        {"spec__versions__0__subresources": {"scale": {"specReplicasPath": ".spec.n"}}},
        f"{V0}.subresources.scale.statusReplicasPath: Required value",
    ),
    (
        {
            "spec__versions__0__additionalPrinterColumns": [
                {"name": "A", "type": "float", "jsonPath": ".a"}
            ]
        },
        f'{V0}.additionalPrinterColumns[0].type: Unsupported value: "float"',
    ),
    (
        {"spec__versions__0__additionalPrinterColumns": [{"name": "A", "type": "string"}]},
        f"{V0}.additionalPrinterColumns[0].jsonPath: Required value",
    ),
    ({"spec__versions__0__served": "yes"}, f'{V0}.served: Invalid value: "yes": must be a boolean'),
    (
        {"spec__names__shortNames": "wd"},
        'spec.names.shortNames: Invalid value: "wd": must be an array',
    ),
    (
        {"spec__preserveUnknownFields": True},
        "spec.preserveUnknownFields: Invalid value: true: cannot set to true",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), CRD_MISTAKES)
def test_crd_mistakes_are_refused(overrides: dict[str, Any], message: str) -> None:
    found = crd_errors(**overrides)
    assert any(e.startswith(message) for e in found), found


def test_duplicate_version_names_are_refused() -> None:
    doc = crd()
    doc["spec"]["versions"].append({**doc["spec"]["versions"][0], "storage": False})
    assert 'spec.versions: Invalid value: ["v1","v1"]: must contain unique version names' in [
        str(e) for e in validate_crd(doc)
    ]


def test_structural_exceptions_are_accepted() -> None:
    props = {
        "port": {"x-kubernetes-int-or-string": True, "anyOf": [INT, STR]},
        "blob": {"x-kubernetes-preserve-unknown-fields": True},
        "either": {
            "type": "object",
            "properties": {"a": STR, "b": STR},
            "oneOf": [{"required": ["a"]}, {"required": ["b"]}],
        },
        "pod": EMBEDDED,
        "meta": {"type": "object", "properties": {"name": {**STR, "maxLength": 10}}},
    }
    doc = crd()
    root_props = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    root_props["spec"]["properties"] = props
    root_props["metadata"] = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20}},
    }
    assert validate_crd(doc) == []


@pytest.mark.parametrize(
    "prop",
    [
        {"type": "string", "maxLength": "5", "pattern": 7, "enum": "x"},
        {"type": "integer", "maximum": "10", "multipleOf": 0, "minimum": True},
        {"type": "object", "required": "a", "properties": [], "additionalProperties": "no"},
        {"type": "array", "items": [{"type": "string"}], "minItems": None},
        {"type": ["string"], "anyOf": "x", "allOf": [1], "not": []},
    ],
)
def test_odd_keyword_values_compile_and_validate_without_crashing(prop: dict[str, Any]) -> None:
    schema = compile_schema({"type": "object", "properties": {"spec": {"properties": {"f": prop}}}})
    for value in (None, 1, 2.5, "s", True, [1], {"a": 1}):
        obj = {"spec": {"f": value}}
        schema.prune(obj)
        schema.default(obj)
        assert all(isinstance(str(e), str) for e in schema.validate(obj))


def test_crd_resource_types_one_per_served_version() -> None:
    doc = crd()
    v2 = copy.deepcopy(doc["spec"]["versions"][0])
    v2.update(name="v2", storage=False, subresources={"status": {}, "scale": {}})
    v3 = {**copy.deepcopy(v2), "name": "v3", "served": False}
    doc["spec"]["versions"] += [v2, v3]
    doc["spec"]["names"]["categories"] = ["all"]
    first, second = crd_resource_types(doc)
    assert (first.group, first.version, first.kind, first.plural) == (
        "example.io",
        "v1",
        "Widget",
        "widgets",
    )
    assert first.singular == "widget"  # defaulted from the kind
    assert first.namespaced and first.custom
    assert first.short_names == ("wd",) and first.categories == ("all",)
    assert first.subresources == frozenset({"status"})
    assert second.subresources == frozenset({"status", "scale"})
    assert first.schema == WIDGET
    assert first.printer_columns == ({"name": "Size", "type": "integer", "jsonPath": ".spec.size"},)
    doc["spec"]["scope"] = "Cluster"
    assert not crd_resource_types(doc)[0].namespaced
