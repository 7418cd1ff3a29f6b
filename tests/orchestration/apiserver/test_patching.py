"""Patching: RFC 6902 / RFC 7386 appendix cases, kubectl's strategic merge patches,
our simplified server-side apply, and PATCH body decoding."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from orbiter.orchestration.apiserver.patching import (
    PATCH_CONTENT_TYPES,
    PatchError,
    UnsupportedPatchType,
    apply_json_patch,
    apply_merge_patch,
    apply_server_side_apply,
    apply_strategic_merge_patch,
    decode_patch,
)
from orbiter.orchestration.apiserver.strategic import BY_VALUE, MERGE_KEYS, merge_key


def unchanged(fn: Any, doc: Any, patch: Any, *args: Any) -> Any:
    """Call a patch function and check it left both inputs alone."""
    doc_before, patch_before = copy.deepcopy(doc), copy.deepcopy(patch)
    result = fn(doc, patch, *args)
    assert doc == doc_before
    assert patch == patch_before
    return result


def jp(doc: Any, ops: Any) -> Any:
    return unchanged(apply_json_patch, doc, ops)


def mp(doc: Any, patch: Any) -> Any:
    return unchanged(apply_merge_patch, doc, patch)


def smp(doc: Any, patch: Any, kind: str = "Pod") -> Any:
    return unchanged(apply_strategic_merge_patch, doc, patch, kind)


def error(fn: Any, *args: Any) -> PatchError:
    with pytest.raises(PatchError) as info:
        fn(*args)
    return info.value


# --- JSON patch: RFC 6902 appendix A ----------------------------------------------------------

RFC6902 = [
    # A.1 adding an object member
    ({"foo": "bar"}, [{"op": "add", "path": "/baz", "value": "qux"}], {"baz": "qux", "foo": "bar"}),
    # A.2 adding an array element
    (
        {"foo": ["bar", "baz"]},
        [{"op": "add", "path": "/foo/1", "value": "qux"}],
        {"foo": ["bar", "qux", "baz"]},
    ),
    # A.3 removing an object member
    ({"baz": "qux", "foo": "bar"}, [{"op": "remove", "path": "/baz"}], {"foo": "bar"}),
    # A.4 removing an array element
    ({"foo": ["bar", "qux", "baz"]}, [{"op": "remove", "path": "/foo/1"}], {"foo": ["bar", "baz"]}),
    # A.5 replacing a value
    (
        {"baz": "qux", "foo": "bar"},
        [{"op": "replace", "path": "/baz", "value": "boo"}],
        {"baz": "boo", "foo": "bar"},
    ),
    # A.6 moving a value
    (
        {"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
        [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
        {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}},
    ),
    # A.7 moving an array element
    (
        {"foo": ["all", "grass", "cows", "eat"]},
        [{"op": "move", "from": "/foo/1", "path": "/foo/3"}],
        {"foo": ["all", "cows", "eat", "grass"]},
    ),
    # A.8 testing a value: success
    (
        {"baz": "qux", "foo": ["a", 2, "c"]},
        [
            {"op": "test", "path": "/baz", "value": "qux"},
            {"op": "test", "path": "/foo/1", "value": 2},
        ],
        {"baz": "qux", "foo": ["a", 2, "c"]},
    ),
    # A.10 adding a nested member object
    (
        {"foo": "bar"},
        [{"op": "add", "path": "/child", "value": {"grandchild": {}}}],
        {"foo": "bar", "child": {"grandchild": {}}},
    ),
    # A.11 ignoring unrecognized elements
    (
        {"foo": "bar"},
        [{"op": "add", "path": "/baz", "value": "qux", "xyz": 123}],
        {"foo": "bar", "baz": "qux"},
    ),
    # A.14 ~ escape ordering
    ({"/": 9, "~1": 10}, [{"op": "test", "path": "/~01", "value": 10}], {"/": 9, "~1": 10}),
    # A.16 adding an array value
    (
        {"foo": ["bar"]},
        [{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}],
        {"foo": ["bar", ["abc", "def"]]},
    ),
]


@pytest.mark.parametrize(("doc", "ops", "want"), RFC6902)
def test_json_patch_rfc6902_appendix(doc: Any, ops: Any, want: Any) -> None:
    assert jp(doc, ops) == want


def test_json_patch_rfc6902_errors() -> None:
    # A.9 testing a value: error
    e = error(jp, {"baz": "qux"}, [{"op": "test", "path": "/baz", "value": "bar"}])
    assert e.code == 422
    assert "/baz" in e.message and "operation 0 (test)" in e.message
    # A.12 adding to a nonexistent target
    e = error(jp, {"foo": "bar"}, [{"op": "add", "path": "/baz/bat", "value": "qux"}])
    assert e.code == 422 and "/baz/bat" in e.message
    # A.15 comparing strings and numbers
    e = error(jp, {"/": 9, "~1": 10}, [{"op": "test", "path": "/~01", "value": "10"}])
    assert e.code == 422


def test_json_patch_kubectl_shapes() -> None:
    pod = {"metadata": {"name": "p", "labels": {"app": "web", "app.kubernetes.io/name": "x"}}}
    ops = [
        {"op": "replace", "path": "/metadata/labels/app", "value": "api"},
        {"op": "remove", "path": "/metadata/labels/app.kubernetes.io~1name"},
        {"op": "add", "path": "/metadata/annotations", "value": {"a/b": "c"}},
        {"op": "copy", "from": "/metadata/name", "path": "/metadata/annotations/name"},
    ]
    assert jp(pod, ops) == {
        "metadata": {
            "name": "p",
            "labels": {"app": "api"},
            "annotations": {"a/b": "c", "name": "p"},
        }
    }


def test_json_patch_root_and_arrays() -> None:
    assert jp({"a": 1}, [{"op": "replace", "path": "", "value": [1]}]) == [1]
    assert jp({"a": 1}, [{"op": "add", "path": "", "value": {"b": 2}}]) == {"b": 2}
    assert jp([1, 2], [{"op": "add", "path": "/2", "value": 3}]) == [1, 2, 3]
    assert jp([1, 2], [{"op": "add", "path": "/0", "value": 0}]) == [0, 1, 2]
    assert jp({"a": [1]}, [{"op": "move", "from": "/a", "path": "/a"}]) == {"a": [1]}
    assert jp({"a": {"b": 1}}, [{"op": "move", "from": "/a/b", "path": "/c"}]) == {"a": {}, "c": 1}
    e = error(jp, {"a": 1}, [{"op": "remove", "path": ""}])
    assert e.code == 422


def test_json_patch_test_compares_as_json() -> None:
    assert jp({"n": 1}, [{"op": "test", "path": "/n", "value": 1.0}]) == {"n": 1}
    assert jp(
        {"o": {"a": [1, {"b": None}]}},
        [{"op": "test", "path": "/o", "value": {"a": [1, {"b": None}]}}],
    )
    assert error(jp, {"n": 1}, [{"op": "test", "path": "/n", "value": True}]).code == 422
    assert error(jp, {"n": None}, [{"op": "test", "path": "/n", "value": False}]).code == 422
    assert error(jp, {"l": [1, 2]}, [{"op": "test", "path": "/l", "value": [1]}]).code == 422


@pytest.mark.parametrize(
    ("ops", "fragment"),
    [
        ({"op": "add"}, "array of operations"),
        (["add"], "operation 0: must be an object"),
        ([{"op": "frobnicate", "path": "/a"}], "'op' must be one of"),
        ([{"path": "/a"}], "'op' must be one of"),
        ([{"op": "add", "value": 1}], "missing 'path'"),
        ([{"op": "add", "path": "/a"}], "operation 0 (add) at '/a': missing 'value'"),
        ([{"op": "test", "path": "/a"}], "missing 'value'"),
        ([{"op": "move", "path": "/a"}], "missing 'from'"),
        ([{"op": "copy", "path": "/a", "from": "b"}], "must start with '/'"),
        ([{"op": "remove", "path": "a"}], "JSON pointer 'a' must start with '/'"),
        ([{"op": "remove", "path": 3}], "must be a JSON pointer string"),
        ([{"op": "remove", "path": "/a~2b"}], "bad '~' escape"),
        ([{"op": "remove", "path": "/a~"}], "bad '~' escape"),
        # The valid first operation is not applied: shape errors come first.
        (
            [{"op": "remove", "path": "/x"}, {"op": "remove"}],
            "operation 1 (remove): missing 'path'",
        ),
    ],
)
def test_json_patch_malformed_is_400(ops: Any, fragment: str) -> None:
    e = error(jp, {"x": 1, "a": 1}, ops)
    assert e.code == 400
    assert fragment in e.message


@pytest.mark.parametrize(
    ("doc", "op", "fragment"),
    [
        ({"a": {}}, {"op": "remove", "path": "/a/b"}, "'/a/b' does not exist"),
        ({"a": {}}, {"op": "replace", "path": "/a/b", "value": 1}, "'/a/b' does not exist"),
        ({"a": 1}, {"op": "add", "path": "/a/b", "value": 1}, "'/a/b'"),
        ({"a": {}}, {"op": "add", "path": "/x/y/z", "value": 1}, "no '/x'"),
        ({"l": [1]}, {"op": "add", "path": "/l/2", "value": 1}, "index 2 is out of range"),
        ({"l": [1]}, {"op": "remove", "path": "/l/1"}, "index 1 is out of range"),
        ({"l": [1]}, {"op": "remove", "path": "/l/-"}, "'-' is not a valid array index"),
        ({"l": [1, 2]}, {"op": "remove", "path": "/l/01"}, "'01' is not a valid array index"),
        (
            {"l": [1]},
            {"op": "replace", "path": "/l/x", "value": 1},
            "'x' is not a valid array index",
        ),
        ({"a": {"b": {}}}, {"op": "move", "from": "/a", "path": "/a/b/c"}, "into its own child"),
        ({"a": 1}, {"op": "copy", "from": "/nope", "path": "/b"}, "'/nope' does not exist"),
        ({"a": 1}, {"op": "test", "path": "/a", "value": 2}, "test failed at '/a'"),
    ],
)
def test_json_patch_cannot_apply_is_422(doc: Any, op: Any, fragment: str) -> None:
    e = error(jp, doc, [op])
    assert e.code == 422
    assert fragment in e.message
    assert f"operation 0 ({op['op']})" in e.message


def test_json_patch_result_shares_nothing_with_inputs() -> None:
    value = {"deep": [1]}
    doc = {"keep": {"x": [1]}}
    result = jp(
        doc,
        [{"op": "add", "path": "/v", "value": value}, {"op": "copy", "from": "/v", "path": "/w"}],
    )
    result["v"]["deep"].append(2)
    result["keep"]["x"].append(2)
    assert value == {"deep": [1]}
    assert doc == {"keep": {"x": [1]}}
    assert result["w"] == {"deep": [1]}


# --- JSON merge patch: RFC 7386 appendix A ----------------------------------------------------

RFC7386 = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("doc", "patch", "want"), RFC7386)
def test_merge_patch_rfc7386_appendix(doc: Any, patch: Any, want: Any) -> None:
    assert mp(doc, patch) == want


def test_merge_patch_replaces_lists_and_deletes_labels() -> None:
    deploy = {
        "metadata": {"labels": {"app": "web", "tier": "fe"}},
        "spec": {"template": {"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}},
    }
    patch = {
        "metadata": {"labels": {"tier": None}},
        "spec": {"template": {"spec": {"containers": [{"name": "c"}]}}},
    }
    assert mp(deploy, patch) == {
        "metadata": {"labels": {"app": "web"}},
        "spec": {"template": {"spec": {"containers": [{"name": "c"}]}}},
    }


# --- strategic merge patch ------------------------------------------------------------------


def deployment(containers: list[Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 1, **spec, "template": {"spec": {"containers": containers}}},
    }


def test_smp_kubectl_apply_changes_image_and_removes_env_var() -> None:
    live = deployment(
        [
            {
                "name": "app",
                "image": "app:1",
                "env": [
                    {"name": "A", "value": "1"},
                    {"name": "X", "value": "drop me"},
                    {"name": "B", "value": "2"},
                ],
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "terminationMessagePath": "/dev/termination-log",  # server default
            },
            {"name": "sidecar", "image": "side:1"},
        ]
    )
    # What `kubectl apply` (client side) computes from last-applied vs the new manifest.
    patch = {
        "metadata": {
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}\n"}
        },
        "spec": {
            "template": {
                "spec": {
                    "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
                    "containers": [
                        {
                            "$setElementOrder/env": [{"name": "A"}, {"name": "B"}],
                            "env": [{"$patch": "delete", "name": "X"}],
                            "image": "app:2",
                            "name": "app",
                        }
                    ],
                }
            }
        },
    }
    result = smp(live, patch, "Deployment")
    app, sidecar = result["spec"]["template"]["spec"]["containers"]
    assert app == {
        "name": "app",
        "image": "app:2",
        "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
        "terminationMessagePath": "/dev/termination-log",
    }
    assert sidecar == {"name": "sidecar", "image": "side:1"}
    assert result["metadata"]["annotations"] == {
        "kubectl.kubernetes.io/last-applied-configuration": "{...}\n"
    }
    assert result["spec"]["replicas"] == 1


def test_smp_kubectl_apply_adds_env_var_in_declared_order() -> None:
    live = {
        "spec": {
            "containers": [
                {"name": "c", "env": [{"name": "A", "value": "a"}, {"name": "C", "value": "c"}]}
            ]
        }
    }
    patch = {
        "spec": {
            "$setElementOrder/containers": [{"name": "c"}],
            "containers": [
                {
                    "$setElementOrder/env": [{"name": "A"}, {"name": "B"}, {"name": "C"}],
                    "env": [{"name": "B", "value": "b"}],
                    "name": "c",
                }
            ],
        }
    }
    env = smp(live, patch)["spec"]["containers"][0]["env"]
    assert [e["name"] for e in env] == ["A", "B", "C"]


def test_smp_kubectl_patch_adds_container_first_like_kubernetes() -> None:
    # `kubectl patch deployment web -p '{"spec":{"template":{"spec":{"containers":[...]}}}}'`:
    # apimachinery puts items new to a merged list before the live ones.
    live = deployment([{"name": "nginx", "image": "nginx"}])
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "redis", "image": "redis"}]}}}}
    containers = smp(live, patch, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert containers == [{"name": "redis", "image": "redis"}, {"name": "nginx", "image": "nginx"}]


def test_smp_patch_order_wins_over_live_order() -> None:
    # apimachinery's "preserve the order from the patch in a merging list" cases.
    live = {"spec": {"volumes": [{"name": "1"}, {"name": "2", "x": "b"}, {"name": "3"}]}}
    patch = {"spec": {"volumes": [{"name": "3", "x": "c"}, {"name": "1", "x": "a"}]}}
    assert smp(live, patch)["spec"]["volumes"] == [
        {"name": "2", "x": "b"},
        {"name": "3", "x": "c"},
        {"name": "1", "x": "a"},
    ]


def test_smp_set_element_order_interleaves_server_only_items() -> None:
    # apimachinery "add map and delete map from merging list": server-only item 4 keeps
    # its place among the live items.
    live = {"spec": {"volumes": [{"name": "1"}, {"name": "2", "o": "b"}, {"name": "4", "o": "c"}]}}
    patch = {
        "spec": {
            "$setElementOrder/volumes": [{"name": "2"}, {"name": "3"}],
            "volumes": [{"name": "3"}, {"name": "1", "$patch": "delete"}],
        }
    }
    assert smp(live, patch)["spec"]["volumes"] == [
        {"name": "2", "o": "b"},
        {"name": "4", "o": "c"},
        {"name": "3"},
    ]


def test_smp_set_element_order_alone_reorders() -> None:
    live = {"spec": {"volumes": [{"name": "b"}, {"name": "a"}]}}
    patch = {"spec": {"$setElementOrder/volumes": [{"name": "a"}, {"name": "b"}]}}
    assert smp(live, patch)["spec"]["volumes"] == [{"name": "a"}, {"name": "b"}]
    # Names in the order list that exist nowhere are ignored.
    patch = {"spec": {"$setElementOrder/volumes": [{"name": "z"}, {"name": "a"}, {"name": "b"}]}}
    assert smp(live, patch)["spec"]["volumes"] == [{"name": "a"}, {"name": "b"}]


def test_smp_set_element_order_must_agree_with_patch_list() -> None:
    live = {"spec": {"volumes": [{"name": "1"}, {"name": "2"}, {"name": "3"}]}}
    patch = {
        "spec": {
            "$setElementOrder/volumes": [{"name": "1"}, {"name": "2"}, {"name": "3"}],
            "volumes": [{"name": "3", "x": 1}, {"name": "1", "x": 1}],
        }
    }
    e = error(smp, live, patch)
    assert e.code == 400
    assert "spec.volumes" in e.message and "$setElementOrder" in e.message
    bad_order = {"spec": {"$setElementOrder/volumes": [{"nom": "1"}]}}
    assert "lacks merge key 'name'" in error(smp, live, bad_order).message


def test_smp_finalizers_merge_as_a_set() -> None:
    live = {"metadata": {"finalizers": ["b", "e", "a", "c", "d"]}}
    # kubectl apply: last-applied had a, b, c; the manifest now has a, b, f.
    patch = {
        "metadata": {
            "$setElementOrder/finalizers": ["a", "b", "f"],
            "$deleteFromPrimitiveList/finalizers": ["c"],
            "finalizers": ["f"],
        }
    }
    assert smp(live, patch, "ConfigMap")["metadata"]["finalizers"] == ["e", "a", "b", "f", "d"]
    # A plain patch adds without duplicates; deleting a value removes every copy.
    assert smp({"metadata": {"finalizers": ["x"]}}, {"metadata": {"finalizers": ["x", "y"]}}) == {
        "metadata": {"finalizers": ["x", "y"]}
    }
    live = {"metadata": {"finalizers": ["x", "y", "x"]}}
    patch = {"metadata": {"$deleteFromPrimitiveList/finalizers": ["x", "nope"]}}
    assert smp(live, patch) == {"metadata": {"finalizers": ["y"]}}
    # Deleting from a list that does not exist changes nothing.
    assert smp({"metadata": {}}, patch) == {"metadata": {}}


def test_smp_lists_without_strategy_are_replaced() -> None:
    live = {
        "spec": {
            "tolerations": [{"key": "a"}, {"key": "b"}],
            "containers": [{"name": "c", "args": ["--a", "--b"], "command": ["run"]}],
        }
    }
    patch = {
        "spec": {"tolerations": [{"key": "z"}], "containers": [{"name": "c", "args": ["--z"]}]}
    }
    assert smp(live, patch) == {
        "spec": {
            "tolerations": [{"key": "z"}],
            "containers": [{"name": "c", "args": ["--z"], "command": ["run"]}],
        }
    }


def test_smp_merge_keys_of_container_fields() -> None:
    live = deployment(
        [
            {
                "name": "c",
                "ports": [
                    {"containerPort": 80, "name": "http"},
                    {"containerPort": 443, "name": "https"},
                ],
                "volumeMounts": [
                    {"mountPath": "/a", "name": "va"},
                    {"mountPath": "/b", "name": "vb"},
                ],
                "volumeDevices": [{"devicePath": "/dev/x", "name": "x"}],
            }
        ]
    )
    live["spec"]["template"]["spec"]["initContainers"] = [
        {"name": "init", "env": [{"name": "K", "value": "1"}]}
    ]
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "c",
                            "ports": [{"containerPort": 80, "name": "web"}],
                            "volumeMounts": [{"mountPath": "/b", "readOnly": True}],
                            "volumeDevices": [{"devicePath": "/dev/x", "name": "y"}],
                        }
                    ],
                    "initContainers": [{"name": "init", "env": [{"name": "K", "value": "2"}]}],
                }
            }
        }
    }
    pod_spec = smp(live, patch, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod_spec["containers"]
    assert container["ports"] == [
        {"containerPort": 80, "name": "web"},
        {"containerPort": 443, "name": "https"},
    ]
    assert container["volumeMounts"] == [
        {"mountPath": "/a", "name": "va"},
        {"mountPath": "/b", "name": "vb", "readOnly": True},
    ]
    assert container["volumeDevices"] == [{"devicePath": "/dev/x", "name": "y"}]
    assert pod_spec["initContainers"] == [{"name": "init", "env": [{"name": "K", "value": "2"}]}]


def test_smp_service_ports_node_status_owner_references() -> None:
    svc: dict[str, Any] = {
        "spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443, "targetPort": 8443}]}
    }
    patch: dict[str, Any] = {"spec": {"ports": [{"port": 80, "targetPort": 9090}]}}
    assert smp(svc, patch, "Service")["spec"]["ports"] == [
        {"port": 80, "targetPort": 9090},
        {"port": 443, "targetPort": 8443},
    ]

    node: dict[str, Any] = {
        "status": {
            "conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": "False", "reason": "Starting"},
            ],
            "addresses": [
                {"type": "InternalIP", "address": "10.0.0.1"},
                {"type": "Hostname", "address": "n1"},
            ],
        }
    }
    # The kubelet's status patch: one condition and one address change.
    patch = {
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": None}],
            "addresses": [{"type": "InternalIP", "address": "10.0.0.2"}],
        }
    }
    status = smp(node, patch, "Node")["status"]
    assert status["conditions"] == [
        {"type": "MemoryPressure", "status": "False"},
        {"type": "Ready", "status": "True"},
    ]
    assert status["addresses"] == [
        {"type": "InternalIP", "address": "10.0.0.2"},
        {"type": "Hostname", "address": "n1"},
    ]

    owned: dict[str, Any] = {
        "metadata": {"ownerReferences": [{"uid": "u1", "kind": "ReplicaSet", "controller": True}]}
    }
    patch = {"metadata": {"ownerReferences": [{"uid": "u1", "$patch": "delete"}]}}
    assert smp(owned, patch, "Pod") == {"metadata": {"ownerReferences": []}}


@pytest.mark.parametrize("kind", ["Pod", "Deployment", "ReplicaSet", "Namespace", "Node"])
def test_smp_status_conditions_merge_by_type(kind: str) -> None:
    live = {
        "status": {"conditions": [{"type": "A", "status": "True"}, {"type": "B", "status": "True"}]}
    }
    patch = {"status": {"conditions": [{"type": "B", "status": "False"}]}}
    assert smp(live, patch, kind)["status"]["conditions"] == [
        {"type": "A", "status": "True"},
        {"type": "B", "status": "False"},
    ]


def test_smp_patch_directives_on_maps() -> None:
    live = {"spec": {"nodeSelector": {"a": "1", "b": "2"}, "containers": []}}
    replaced = smp(live, {"spec": {"nodeSelector": {"$patch": "replace", "c": "3"}}})
    assert replaced["spec"]["nodeSelector"] == {"c": "3"}
    # As in apimachinery, "$patch: delete" empties the map.
    assert smp(live, {"spec": {"nodeSelector": {"$patch": "delete"}}})["spec"]["nodeSelector"] == {}
    merged = smp(live, {"spec": {"nodeSelector": {"$patch": "merge", "c": "3"}}})
    assert merged["spec"]["nodeSelector"] == {"a": "1", "b": "2", "c": "3"}
    # At the root: the whole object is replaced.
    assert smp({"a": 1, "b": 2}, {"$patch": "replace", "c": 3}) == {"c": 3}


def test_smp_patch_directives_in_lists() -> None:
    live = {"spec": {"volumes": [{"name": "a", "emptyDir": {}}, {"name": "b", "emptyDir": {}}]}}
    replaced = smp(
        live, {"spec": {"volumes": [{"$patch": "replace"}, {"name": "z", "emptyDir": {}}]}}
    )
    assert replaced["spec"]["volumes"] == [{"name": "z", "emptyDir": {}}]
    emptied = smp(live, {"spec": {"volumes": [{"$patch": "replace"}]}})
    assert emptied["spec"]["volumes"] == []
    deleted = smp(live, {"spec": {"volumes": [{"name": "a", "$patch": "delete"}]}})
    assert deleted["spec"]["volumes"] == [{"name": "b", "emptyDir": {}}]
    # Deleting an item that is not there is fine.
    assert smp(live, {"spec": {"volumes": [{"name": "q", "$patch": "delete"}]}}) == live


def test_smp_retain_keys_switches_deployment_strategy() -> None:
    live = deployment([], strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}})
    patch: dict[str, Any] = {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}
    assert smp(live, patch, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    # Volumes: switching a volume's source (kubectl sends $retainKeys for it).
    live = {"spec": {"volumes": [{"name": "v", "emptyDir": {}}]}}
    patch = {
        "spec": {
            "volumes": [
                {"$retainKeys": ["configMap", "name"], "configMap": {"name": "cm"}, "name": "v"}
            ]
        }
    }
    assert smp(live, patch)["spec"]["volumes"] == [{"name": "v", "configMap": {"name": "cm"}}]
    bad = {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "other": 1}}}
    e = error(smp, live, bad, "Deployment")
    assert e.code == 400 and "spec.strategy" in e.message and "'other'" in e.message
    e = error(smp, live, {"spec": {"strategy": {"$retainKeys": "type"}}}, "Deployment")
    assert "must be a list" in e.message


def test_smp_null_deletes_and_new_values_are_cleaned() -> None:
    live = {"metadata": {"labels": {"a": "1", "b": "2"}}}
    patch = {
        "metadata": {"labels": {"a": None, "gone": None}},
        "spec": {
            "nodeSelector": {"x": "1", "y": None},
            "volumes": [{"name": "v", "$patch": "delete"}],
        },
    }
    assert smp(live, patch) == {
        "metadata": {"labels": {"b": "2"}},
        "spec": {"nodeSelector": {"x": "1"}, "volumes": []},
    }
    assert smp({"spec": {"x": 1}}, {"spec": None}) == {}


def test_smp_unknown_kind_replaces_lists_but_merges_metadata() -> None:
    live = {"metadata": {"finalizers": ["a"]}, "spec": {"containers": [{"name": "a"}]}}
    patch = {"metadata": {"finalizers": ["b"]}, "spec": {"containers": [{"name": "b"}]}}
    assert smp(live, patch, "Widget") == {
        "metadata": {"finalizers": ["b", "a"]},  # new values first, as in apimachinery
        "spec": {"containers": [{"name": "b"}]},
    }


def test_smp_set_element_order_reveals_merge_key_missing_from_table() -> None:
    # A merge list we have no entry for: kubectl's $setElementOrder names the key.
    live = {"spec": {"items": [{"id": "a", "v": 1}, {"id": "b", "v": 1}]}}
    patch = {
        "spec": {
            "$setElementOrder/items": [{"id": "a"}, {"id": "b"}],
            "items": [{"id": "b", "v": 2}],
        }
    }
    assert smp(live, patch, "Widget")["spec"]["items"] == [{"id": "a", "v": 1}, {"id": "b", "v": 2}]


@pytest.mark.parametrize(
    ("patch", "code", "fragment"),
    [
        ([{"op": "add"}], 400, "must be a JSON object"),
        (
            {"spec": {"containers": [{"image": "x"}]}},
            400,
            "spec.containers[0]: does not contain declared merge key 'name'",
        ),
        (
            {"spec": {"containers": [{"image": "x", "$patch": "delete"}]}},
            400,
            "spec.containers[0]: does not contain declared merge key",
        ),
        ({"spec": {"$patch": "frob"}}, 400, "spec: unknown $patch directive 'frob'"),
        (
            {"spec": {"volumes": [{"name": "v", "$patch": "frob"}]}},
            400,
            "spec.volumes[0]: unknown $patch",
        ),
        (
            {"spec": {"$setElementOrder/containers": "c"}},
            400,
            "spec.containers: $setElementOrder must be a list",
        ),
        ({"spec": {"$setElementOrder": []}}, 400, "$setElementOrder/<field>"),
        ({"metadata": {"$deleteFromPrimitiveList/finalizers": [{"a": 1}]}}, 400, "list of scalars"),
        ({"spec": {"containers": [["nested"]]}}, 400, "spec.containers: lists of lists"),
        ({"spec": {"containers": [{"name": "a"}, "b"]}}, 400, "mixes objects and scalar values"),
        (
            {"spec": {"containers": ["b"]}},
            422,
            "the patch has scalars where the object has objects",
        ),
        ({"metadata": {"finalizers": [{"name": "x"}]}}, 400, "without a merge key"),
    ],
)
def test_smp_errors_name_the_path(patch: Any, code: int, fragment: str) -> None:
    live = {"metadata": {"finalizers": []}, "spec": {"containers": [{"name": "c"}]}}
    e = error(smp, live, patch)
    assert e.code == code
    assert fragment in e.message


def test_smp_item_errors_name_the_item() -> None:
    live = {"spec": {"containers": [{"name": "c", "env": []}]}}
    patch = {"spec": {"containers": [{"name": "c", "env": [{"value": "v"}]}]}}
    e = error(smp, live, patch)
    assert "spec.containers[name=c].env[0]: does not contain declared merge key 'name'" in e.message


def test_smp_does_not_share_objects_with_inputs() -> None:
    live = {"spec": {"containers": [{"name": "c", "env": [{"name": "A"}]}]}}
    patch = {
        "spec": {"containers": [{"name": "d", "env": [{"name": "B"}]}], "volumes": [{"name": "v"}]}
    }
    result = smp(live, patch)
    for container in result["spec"]["containers"]:
        container["env"].append({"name": "Z"})
    result["spec"]["volumes"][0]["x"] = 1
    assert live == {"spec": {"containers": [{"name": "c", "env": [{"name": "A"}]}]}}
    assert patch["spec"]["volumes"] == [{"name": "v"}]


def test_merge_key_table() -> None:
    assert merge_key("Pod", "spec.containers") == "name"
    assert merge_key("Pod", "spec.ephemeralContainers.env") == "name"
    assert merge_key("Deployment", "spec.template.spec.initContainers.ports") == "containerPort"
    assert merge_key("ReplicaSet", "spec.template.spec.volumes") == "name"
    assert merge_key("Pod", "spec.hostAliases") == "ip"
    assert merge_key("Pod", "spec.topologySpreadConstraints") == "topologyKey"
    assert merge_key("Pod", "spec.resourceClaims") == "name"
    assert merge_key("Pod", "spec.imagePullSecrets") == "name"
    assert merge_key("Pod", "spec.containers.volumeDevices") == "devicePath"
    assert merge_key("Node", "status.addresses") == "type"
    assert merge_key("Widget", "metadata.finalizers") == BY_VALUE
    assert merge_key("Widget", "metadata.ownerReferences") == "uid"
    assert merge_key("Pod", "spec.tolerations") is None
    assert merge_key("Pod", "spec.template.spec.containers") is None
    assert "Service" in MERGE_KEYS


# --- simplified server-side apply -----------------------------------------------------------


def ssa(existing: Any, applied: Any, kind: str = "Deployment", builtin: bool = True) -> Any:
    return unchanged(apply_server_side_apply, existing, applied, kind, builtin)


def test_apply_creates_when_absent() -> None:
    applied = {
        "metadata": {"name": "web", "labels": {"a": "1", "b": None}},
        "spec": {"replicas": 2},
    }
    assert ssa(None, applied) == {
        "metadata": {"name": "web", "labels": {"a": "1"}},
        "spec": {"replicas": 2},
    }


def test_apply_merges_into_existing() -> None:
    existing = deployment(
        [
            {
                "name": "app",
                "image": "app:1",
                "args": ["--a"],
                "env": [{"name": "A", "value": "1"}],
            },
            {"name": "side", "image": "side:1"},
        ]
    )
    existing["metadata"]["finalizers"] = ["x"]
    existing["status"] = {"replicas": 1}
    applied = {
        "metadata": {"name": "web", "finalizers": ["y"], "labels": {"app": "web"}},
        "spec": {
            "replicas": None,  # null: left alone
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": "app:2",
                            "args": ["--b"],
                            "env": [{"name": "B", "value": "2"}],
                        },
                        {"name": "new", "image": "new:1"},
                    ]
                }
            },
        },
    }
    result = ssa(existing, applied)
    assert result["metadata"]["finalizers"] == ["x", "y"]
    assert result["metadata"]["labels"] == {"app": "web"}
    assert result["spec"]["replicas"] == 1
    assert result["status"] == {"replicas": 1}
    assert result["spec"]["template"]["spec"]["containers"] == [
        {
            "name": "app",
            "image": "app:2",
            "args": ["--b"],  # no merge key: replaced
            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
        },
        {"name": "side", "image": "side:1"},  # removed from the config, yet kept
        {"name": "new", "image": "new:1"},
    ]


def test_apply_custom_kind_replaces_lists_except_metadata() -> None:
    existing = {
        "metadata": {"name": "w", "finalizers": ["x"]},
        "spec": {"containers": [{"name": "a"}]},
    }
    applied = {
        "metadata": {"name": "w", "finalizers": ["y"]},
        "spec": {"containers": [{"name": "b"}]},
    }
    assert ssa(existing, applied, "Widget", False) == {
        "metadata": {"name": "w", "finalizers": ["x", "y"]},
        "spec": {"containers": [{"name": "b"}]},
    }
    # Built-in kind names do not matter when the object is custom.
    result = ssa(
        {"spec": {"containers": [{"name": "a"}]}},
        {"spec": {"containers": [{"name": "b"}]}},
        "Pod",
        False,
    )
    assert result == {"spec": {"containers": [{"name": "b"}]}}


def test_apply_list_items_without_key_replace_the_list() -> None:
    existing = {"spec": {"containers": [{"name": "a"}]}}
    assert ssa(existing, {"spec": {"containers": [{"image": "x"}]}}, "Pod") == {
        "spec": {"containers": [{"image": "x"}]}
    }


def test_apply_documents_its_limits() -> None:
    doc = apply_server_side_apply.__doc__ or ""
    assert "managedFields" in doc and "conflicts" in doc and "NOT removed" in doc


# --- decoding -------------------------------------------------------------------------------


def test_patch_content_types() -> None:
    assert dict(PATCH_CONTENT_TYPES) == {
        "application/json-patch+json": "json",
        "application/merge-patch+json": "merge",
        "application/strategic-merge-patch+json": "strategic",
        "application/apply-patch+yaml": "apply",
    }


@pytest.mark.parametrize(
    ("content_type", "body", "want"),
    [
        (
            "application/json-patch+json",
            b'[{"op":"remove","path":"/a"}]',
            ("json", [{"op": "remove", "path": "/a"}]),
        ),
        ("application/merge-patch+json", b'{"a":null}', ("merge", {"a": None})),
        ("application/strategic-merge-patch+json", b'{"a":1}', ("strategic", {"a": 1})),
        ("Application/Merge-Patch+JSON; charset=utf-8", b'{"a":1}', ("merge", {"a": 1})),
        (
            "application/apply-patch+yaml",
            b"a: 1\nb: [x, 'y']\n",
            ("apply", {"a": 1, "b": ["x", "y"]}),
        ),
        # YAML is a superset of JSON: kubectl's server-side apply sends JSON.
        (
            "application/apply-patch+yaml",
            b'{"kind": "Pod", "n": 1.5}',
            ("apply", {"kind": "Pod", "n": 1.5}),
        ),
        # Timestamps stay strings, as Kubernetes reads YAML.
        (
            "application/apply-patch+yaml",
            b"metadata:\n  creationTimestamp: 2024-01-01T00:00:00Z\n",
            ("apply", {"metadata": {"creationTimestamp": "2024-01-01T00:00:00Z"}}),
        ),
        ("application/apply-patch+yaml", b"2: a\ntrue: b\n", ("apply", {"2": "a", "true": "b"})),
        # No YAML 1.1 base-60 numbers (Go's YAML has none): Sedna's timers stay strings.
        (
            "application/apply-patch+yaml",
            b"timer: {start: 02:00, end: 24:00}\nn: 1_000\nx: 1.5\n",
            ("apply", {"timer": {"start": "02:00", "end": "24:00"}, "n": 1000, "x": 1.5}),
        ),
    ],
)
def test_decode_patch(content_type: str, body: bytes, want: tuple[str, Any]) -> None:
    assert decode_patch(content_type, body) == want


@pytest.mark.parametrize(
    ("content_type", "body", "fragment"),
    [
        ("application/merge-patch+json", b'{"a":', "merge patch is not valid JSON"),
        ("application/json-patch+json", b"[NaN]", "not valid JSON"),
        ("application/strategic-merge-patch+json", b"", "body is empty"),
        ("application/merge-patch+json", b"\xff\xfe", "not UTF-8"),
        ("application/apply-patch+yaml", b"a: [1\n", "apply patch is not valid YAML"),
        ("application/apply-patch+yaml", b"- a\n- b\n", "must be an object"),
        ("application/apply-patch+yaml", b"a: 1\n---\nb: 2\n", "not valid YAML"),
        ("application/apply-patch+yaml", b"a: !!binary aGk=\n", "not JSON"),
    ],
)
def test_decode_patch_bad_bodies_are_400(content_type: str, body: bytes, fragment: str) -> None:
    e = error(decode_patch, content_type, body)
    assert e.code == 400
    assert fragment in e.message


def test_decode_patch_unknown_type_is_415() -> None:
    with pytest.raises(UnsupportedPatchType) as info:
        decode_patch("application/json", b"{}")
    assert isinstance(info.value, PatchError)
    assert info.value.code == 415
    for media_type in PATCH_CONTENT_TYPES:
        assert media_type in info.value.message
    assert error(decode_patch, "", b"{}").code == 415


def test_decode_patch_refuses_yaml_alias_bombs() -> None:
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 8):
        refs = ",".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    e = error(decode_patch, "application/apply-patch+yaml", "\n".join(lines).encode())
    assert e.code == 400 and "aliases" in e.message


def test_decoded_patches_apply() -> None:
    name, ops = decode_patch(
        "application/json-patch+json",
        json.dumps([{"op": "add", "path": "/b", "value": 2}]).encode(),
    )
    assert name == "json" and apply_json_patch({"a": 1}, ops) == {"a": 1, "b": 2}
