"""Label and field selectors: Kubernetes' syntax, validation and matching rules."""

from __future__ import annotations

from typing import Any

import pytest
from orbiter.orchestration.apiserver.selectors import (
    FIELDS_BY_KIND,
    FieldSelector,
    LabelSelector,
    SelectorError,
    default_fields,
    event_fields,
    fields_for,
    namespace_fields,
    node_fields,
    pod_fields,
    secret_fields,
    supported_fields,
)

WEB = {"app": "web", "tier": "frontend", "example.com/team": "a"}
DB = {"app": "db", "tier": "backend"}
BARE: dict[str, str] = {}


def selects(text: str) -> list[str]:
    selector = LabelSelector.parse(text)
    return [
        name
        for name, labels in (("web", WEB), ("db", DB), ("bare", BARE))
        if selector.matches(labels)
    ]


# --- label selectors: syntax ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("", ["web", "db", "bare"]),
        ("   ", ["web", "db", "bare"]),
        ("app=web", ["web"]),
        ("app==web", ["web"]),
        ("app = web", ["web"]),
        ("app!=web", ["db", "bare"]),  # also objects without the label
        ("app in (web,db)", ["web", "db"]),
        ("app in ( web , db )", ["web", "db"]),
        ("app notin (web)", ["db", "bare"]),
        ("app", ["web", "db"]),
        ("!app", ["bare"]),
        ("app,tier=backend", ["db"]),
        ("app=web,tier=backend", []),
        ("example.com/team=a", ["web"]),
        ("example.com/team", ["web"]),
        ("!example.com/team", ["db", "bare"]),
        (" app in (db) , ! tier ", []),
        ("tier notin (frontend,backend),!app", ["bare"]),
    ],
)
def test_label_selector_forms(text: str, want: list[str]) -> None:
    assert selects(text) == want


def test_label_selector_empty_values() -> None:
    # "a=" and "in (x,)" select the empty value, as in Kubernetes.
    assert LabelSelector.parse("a=").matches({"a": ""})
    assert not LabelSelector.parse("a=").matches({"a": "x"})
    assert not LabelSelector.parse("a=").matches({})
    assert LabelSelector.parse("a=,b").matches({"a": "", "b": "1"})
    assert LabelSelector.parse("a==").matches({"a": ""})
    assert LabelSelector.parse("a in (x,)").matches({"a": ""})
    assert LabelSelector.parse("a in (x,)").matches({"a": "x"})
    assert LabelSelector.parse("a in ()").matches({"a": ""})


def test_label_selector_gt_lt() -> None:
    assert LabelSelector.parse("gen>3").matches({"gen": "4"})
    assert not LabelSelector.parse("gen>3").matches({"gen": "3"})
    assert not LabelSelector.parse("gen>3").matches({"gen": "x"})
    assert not LabelSelector.parse("gen>3").matches({})
    assert LabelSelector.parse("gen<3").matches({"gen": "-1"})
    with pytest.raises(SelectorError, match="integer"):
        LabelSelector.parse("gen>x")


def test_label_selector_str_is_canonical() -> None:
    selector = LabelSelector.parse("b in (y, x, y),  a, !c, d!=1, e==2, f notin (z)")
    assert str(selector) == "a,b in (x,y),!c,d!=1,e=2,f notin (z)"
    assert LabelSelector.parse(str(selector)) == selector
    assert [r.key for r in selector] == ["a", "b", "c", "d", "e", "f"]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a=b,", "ends with ','"),
        (",a", "found ','"),
        ("a b", "found 'b', expected '=', '==', '!='"),
        ("a in (x))", "found ')', expected ',' or the end"),
        ("=b", "found '='"),
        ("a in x", "found 'x', expected '('"),
        ("a in (x", "found the end"),
        ("a in (x y)", "found 'y'"),
        ("a in (x,(y))", "found '('"),
        ("!", "expected a label key after '!'"),
        ("!a=b", "found '='"),
        ("a=b=c", "found '='"),
        ("a=(", "expected a label value, found '('"),
        ("a!b", "found '!'"),
    ],
)
def test_label_selector_syntax_errors(text: str, fragment: str) -> None:
    with pytest.raises(SelectorError) as info:
        LabelSelector.parse(text)
    assert fragment in str(info.value)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("Example.com/app=x", "prefix must be a DNS subdomain"),
        ("/app=x", "prefix must be a DNS subdomain"),
        ("a/b/c=x", "prefix must be a DNS subdomain"),
        (f"{'a' * 64}=x", "name must be 1-63 characters"),
        ("example.com/=x", "name must be 1-63 characters"),
        ("-app=x", "name must be 1-63 characters"),
        ("app_=x", "name must be 1-63 characters"),
        (f"app={'v' * 64}", "invalid label value"),
        ("app=-v", "invalid label value"),
        ("app=v!", "found '!'"),
        ("app in (ok,bad_)", "invalid label value 'bad_'"),
    ],
)
def test_label_selector_validates_keys_and_values(text: str, fragment: str) -> None:
    with pytest.raises(SelectorError) as info:
        LabelSelector.parse(text)
    assert fragment in str(info.value)


def test_label_selector_accepts_limits() -> None:
    key = f"{'p' * 63}.example.com/{'n' * 63}"
    assert LabelSelector.parse(f"{key}={'v' * 63}").matches({key: "v" * 63})
    assert LabelSelector.parse("a.b_c-d=E.f_G-1").matches({"a.b_c-d": "E.f_G-1"})
    assert LabelSelector.parse("in=notin").matches({"in": "notin"})


def test_label_selector_empty() -> None:
    assert LabelSelector.parse("").empty
    assert LabelSelector().matches({"anything": "x"})
    assert not LabelSelector.parse("a").empty


# --- label selectors: metav1.LabelSelector --------------------------------------------------


def test_from_dict() -> None:
    selector = LabelSelector.from_dict(
        {
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["frontend", "edge"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "example.com/team", "operator": "Exists"},
                {"key": "zone", "operator": "NotIn", "values": ["z9"]},
            ],
        }
    )
    assert selector.matches(WEB)
    assert not selector.matches({**WEB, "canary": "1"})
    assert not selector.matches({**WEB, "zone": "z9"})
    assert not selector.matches(DB)
    assert (
        str(selector) == "app=web,!canary,example.com/team,tier in (edge,frontend),zone notin (z9)"
    )


@pytest.mark.parametrize(
    "empty", [None, {}, {"matchLabels": {}}, {"matchLabels": None, "matchExpressions": []}]
)
def test_from_dict_empty_selects_everything(empty: Any) -> None:
    selector = LabelSelector.from_dict(empty)
    assert selector.empty
    assert selector.matches(WEB) and selector.matches(BARE)


@pytest.mark.parametrize(
    ("selector", "fragment"),
    [
        (
            {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]},
            "'Equals' is not a valid",
        ),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}, "can't be empty"),
        ({"matchExpressions": [{"key": "a", "operator": "In"}]}, "can't be empty"),
        (
            {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
            "take no values",
        ),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": "x"}]}, "list of strings"),
        ({"matchExpressions": [{"operator": "Exists"}]}, "matchExpressions[0].key"),
        ({"matchExpressions": ["a"]}, "matchExpressions[0] must be an object"),
        ({"matchExpressions": {"key": "a"}}, "must be a list"),
        ({"matchLabels": {"Bad/key": "x"}}, "invalid label key 'Bad/key'"),
        ({"matchLabels": {"a": "bad value"}}, "invalid label value"),
        ({"matchLabels": {"a": 1}}, "must map string to string"),
        ({"matchLabels": ["a"]}, "matchLabels must be a map"),
        ("app=web", "must be an object"),
    ],
)
def test_from_dict_errors(selector: Any, fragment: str) -> None:
    with pytest.raises(SelectorError) as info:
        LabelSelector.from_dict(selector)
    assert fragment in str(info.value)


# --- field selectors ------------------------------------------------------------------------

POD_FIELDS = supported_fields("Pod")


def test_field_selector_parse_and_match() -> None:
    selector = FieldSelector.parse("spec.nodeName=node-1,status.phase!=Succeeded", POD_FIELDS)
    assert selector.matches({"spec.nodeName": "node-1", "status.phase": "Running"})
    assert not selector.matches({"spec.nodeName": "node-1", "status.phase": "Succeeded"})
    assert not selector.matches({"spec.nodeName": "node-2", "status.phase": "Running"})
    assert selector.exact("spec.nodeName") == "node-1"
    assert selector.exact("status.phase") is None  # a != pins nothing
    assert selector.exact("metadata.name") is None
    assert str(selector) == "spec.nodeName=node-1,status.phase!=Succeeded"


def test_field_selector_forms() -> None:
    assert FieldSelector.parse("metadata.name==a", POD_FIELDS).exact("metadata.name") == "a"
    assert FieldSelector.parse(" metadata.name=a,", POD_FIELDS).exact("metadata.name") == "a"
    # A missing field reads as "": "spec.nodeName=" selects unscheduled pods.
    unscheduled = FieldSelector.parse("spec.nodeName=", POD_FIELDS)
    assert unscheduled.matches({}) and unscheduled.matches({"spec.nodeName": ""})
    assert not unscheduled.matches({"spec.nodeName": "n1"})
    assert FieldSelector.parse("", POD_FIELDS).empty
    assert FieldSelector.parse("", POD_FIELDS).matches({"anything": "x"})


def test_field_selector_escapes() -> None:
    selector = FieldSelector.parse(r"metadata.name=a\,b\=c\\d", POD_FIELDS)
    assert selector.exact("metadata.name") == "a,b=c\\d"
    assert str(selector) == r"metadata.name=a\,b\=c\\d"
    assert FieldSelector.parse(str(selector), POD_FIELDS) == selector


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("spec.nodeName", "can't understand 'spec.nodeName'"),
        ("metadata.name=a,spec.nodeName", "can't understand"),
        ("metadata.name=a=b", "'=' must be escaped"),
        (r"metadata.name=a\x", "invalid escape"),
        ("metadata.name=a\\", "invalid escape"),
        ("spec.foo=bar", "field label not supported: spec.foo"),
        ("metadata.labels=x", "field label not supported: metadata.labels"),
    ],
)
def test_field_selector_errors(text: str, fragment: str) -> None:
    with pytest.raises(SelectorError) as info:
        FieldSelector.parse(text, POD_FIELDS)
    assert fragment in str(info.value)


def test_field_selector_error_message_is_kubernetes() -> None:
    with pytest.raises(SelectorError) as info:
        FieldSelector.parse("spec.nodeName=a", supported_fields("ConfigMap"))
    assert str(info.value) == "field label not supported: spec.nodeName"


# --- selectable fields ----------------------------------------------------------------------

POD = {
    "metadata": {"name": "web-1", "namespace": "prod"},
    "spec": {
        "nodeName": "node-1",
        "restartPolicy": "Always",
        "schedulerName": "default-scheduler",
        "serviceAccountName": "default",
        "hostNetwork": True,
    },
    "status": {"phase": "Running", "podIP": "10.1.0.5"},
}


def test_pod_fields() -> None:
    assert pod_fields(POD) == {
        "metadata.name": "web-1",
        "metadata.namespace": "prod",
        "spec.nodeName": "node-1",
        "spec.restartPolicy": "Always",
        "spec.schedulerName": "default-scheduler",
        "spec.serviceAccountName": "default",
        "spec.hostNetwork": "true",
        "status.phase": "Running",
        "status.podIP": "10.1.0.5",
        "status.nominatedNodeName": "",
    }
    fresh = pod_fields({"metadata": {"name": "p", "namespace": "d"}, "spec": {}})
    assert fresh["status.phase"] == "" and fresh["spec.nodeName"] == ""
    assert fresh["spec.hostNetwork"] == "false"
    selector = FieldSelector.parse("status.phase=Running,metadata.namespace=prod", POD_FIELDS)
    assert selector.matches(pod_fields(POD))
    assert not selector.matches(fresh)


def test_event_fields() -> None:
    event = {
        "metadata": {"name": "e1", "namespace": "prod"},
        "involvedObject": {"kind": "Pod", "name": "web-1", "namespace": "prod", "uid": "u-1"},
        "reason": "Scheduled",
        "type": "Normal",
        "source": {"component": "default-scheduler"},
    }
    fields = event_fields(event)
    assert fields["involvedObject.kind"] == "Pod"
    assert fields["involvedObject.name"] == "web-1"
    assert fields["involvedObject.namespace"] == "prod"
    assert fields["involvedObject.uid"] == "u-1"
    assert fields["reason"] == "Scheduled"
    assert fields["type"] == "Normal"
    assert fields["source"] == "default-scheduler"
    # What `kubectl describe pod` asks for.
    text = (
        "involvedObject.name=web-1,involvedObject.namespace=prod,"
        "involvedObject.kind=Pod,involvedObject.uid=u-1"
    )
    assert FieldSelector.parse(text, supported_fields("Event")).matches(fields)


def test_other_kinds_fields() -> None:
    assert (
        secret_fields({"metadata": {"name": "s"}, "type": "kubernetes.io/tls"})["type"]
        == "kubernetes.io/tls"
    )
    assert (
        node_fields({"metadata": {"name": "n"}, "spec": {"unschedulable": True}})[
            "spec.unschedulable"
        ]
        == "true"
    )
    assert node_fields({"metadata": {"name": "n"}})["spec.unschedulable"] == "false"
    assert namespace_fields({"metadata": {"name": "ns"}, "status": {"phase": "Terminating"}}) == {
        "metadata.name": "ns",
        "metadata.namespace": "",
        "status.phase": "Terminating",
    }
    assert default_fields({"metadata": {"name": "cm", "namespace": "d"}, "data": {"a": "b"}}) == {
        "metadata.name": "cm",
        "metadata.namespace": "d",
    }
    assert default_fields({}) == {"metadata.name": "", "metadata.namespace": ""}


def test_supported_fields_per_kind() -> None:
    assert set(FIELDS_BY_KIND) >= {"Pod", "Event", "Secret", "Node", "Namespace"}
    assert supported_fields("ConfigMap") == {"metadata.name", "metadata.namespace"}
    assert fields_for("ConfigMap").extract is default_fields
    assert fields_for("Pod").extract is pod_fields
    assert fields_for("Pod")(POD) == pod_fields(POD)
    assert fields_for("Pod").allowed == supported_fields("Pod")
    assert {
        "spec.nodeName",
        "status.phase",
        "spec.restartPolicy",
        "status.podIP",
    } <= supported_fields("Pod")
    assert {
        "involvedObject.kind",
        "involvedObject.uid",
        "reason",
        "type",
        "source",
    } <= supported_fields("Event")
    assert "type" in supported_fields("Secret")
    assert "spec.unschedulable" in supported_fields("Node")
    assert "status.phase" in supported_fields("Namespace")
    for kind, fields in FIELDS_BY_KIND.items():
        # Every field is present even when the object lacks it.
        assert set(fields({"metadata": {"name": "x"}})) == fields.allowed == supported_fields(kind)
