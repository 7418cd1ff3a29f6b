"""Containers as processes: what they see (env, volumes, mounts, limits), in which order
they run, how they are restarted, and what bad input turns into."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from .conftest import MakeRuntime
from .support import (
    StatusLog,
    container,
    container_root,
    cstatus,
    eventually,
    make_pod,
    pid_of,
    resolve,
    running,
    state,
    waiting_reason,
)

REPORT = r"""
import json, os, resource, sys
root = os.environ["ORBITER_CONTAINER_ROOT"]
def read(path):
    with open(path) as f:
        return f.read()
def mode(path):
    return oct(os.stat(path).st_mode & 0o777)
with open("scratch/note", "w") as f:
    f.write("written")
with open(os.path.join(os.environ["ORBITER_MOUNT_HOST"], "from-pod"), "w") as f:
    f.write("host")
out = {
    "argv": sys.argv[1:],
    "env": dict(os.environ),
    "cwd": os.getcwd(),
    "greeting": read(os.path.join(os.environ["ORBITER_MOUNT_CONFIG"], "sub/greeting.txt")),
    "greeting_via_root": read(os.path.join(root, "etc/config/sub/greeting.txt")),
    "greeting_mode": mode(os.path.join(root, "etc/config/sub/greeting.txt")),
    "config_files": sorted(os.listdir(os.path.join(root, "etc/config"))),
    "password": read(os.path.join(root, "etc/creds/password")),
    "password_mode": mode(os.path.join(root, "etc/creds/password")),
    "labels": read(os.path.join(os.environ["ORBITER_MOUNT_INFO"], "labels")),
    "rlimit_data": resource.getrlimit(resource.RLIMIT_DATA)[0],
}
with open(os.environ["OUT"], "w") as f:
    json.dump(out, f)
"""


def _field(path: str) -> dict[str, Any]:
    return {"valueFrom": {"fieldRef": {"fieldPath": path}}}


async def test_env_and_volumes_reach_the_process(make_runtime: MakeRuntime, tmp_path: Path) -> None:
    rt = await make_runtime()
    statuses = StatusLog(rt)
    out, host = tmp_path / "out.json", tmp_path / "host"
    app = container(
        "app",
        REPORT,
        args=["$(GREETING)", "$$(GREETING)", "$(MISSING)", "$(ORBITER_MOUNT_SCRATCH)"],
        workingDir="work/dir",
        env=[
            {"name": "OUT", "value": str(out)},
            {
                "name": "GREETING",
                "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}},
            },
            {"name": "COMPOSED", "value": "$(GREETING) world, $$(GREETING)"},
            {
                "name": "PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}},
            },
            {
                "name": "OPTIONAL",
                "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "x", "optional": True}},
            },
            {"name": "POD_NAME", **_field("metadata.name")},
            {"name": "POD_NAMESPACE", **_field("metadata.namespace")},
            {"name": "POD_UID", **_field("metadata.uid")},
            {"name": "APP", **_field("metadata.labels['app']")},
            {"name": "NOTE", **_field("metadata.annotations['note']")},
            {"name": "NODE", **_field("spec.nodeName")},
            {"name": "SA", **_field("spec.serviceAccountName")},
            {"name": "POD_IP", **_field("status.podIP")},
            {"name": "HOST_IP", **_field("status.hostIP")},
            {
                "name": "MEM_MI",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
        ],
        envFrom=[
            {"configMapRef": {"name": "cfg"}, "prefix": "CFG_"},
            {"secretRef": {"name": "creds"}},
        ],
        resources={"limits": {"memory": "512Mi", "cpu": "500m"}},
        volumeMounts=[
            {"name": "config", "mountPath": "/etc/config"},
            {"name": "creds", "mountPath": "/etc/creds"},
            {"name": "scratch", "mountPath": "work/dir/scratch"},
            {"name": "host", "mountPath": "/host"},
            {"name": "info", "mountPath": "/etc/info"},
        ],
    )
    volumes = [
        {
            "name": "config",
            "configMap": {
                "name": "cfg",
                "items": [{"key": "greeting", "path": "sub/greeting.txt", "mode": 0o600}],
            },
        },
        {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}},
        {"name": "scratch", "emptyDir": {}},
        {"name": "host", "hostPath": {"path": str(host), "type": "DirectoryOrCreate"}},
        {
            "name": "info",
            "downwardAPI": {
                "items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]
            },
        },
    ]
    pod = make_pod("env-1", [app], restart="Never", volumes=volumes)
    await rt.sync_pod(pod, resolve)
    done = await statuses.wait("env-1", lambda s: s["phase"] == "Succeeded")
    assert cstatus(done, "app")["state"]["terminated"]["reason"] == "Completed"

    seen = json.loads(out.read_text())
    env = seen["env"]
    pod_dir = rt.root / "pods" / "env-1"
    croot = container_root(rt, "env-1", "app")
    assert seen["argv"] == ["hello", "$(GREETING)", "$(MISSING)", str(pod_dir / "volumes/scratch")]
    assert env["COMPOSED"] == "hello world, $(GREETING)"
    assert env["GREETING"] == "hello" and env["PASSWORD"] == "s3cret"
    assert "OPTIONAL" not in env
    assert (env["CFG_greeting"], env["CFG_mode"], env["password"]) == ("hello", "fast", "s3cret")
    assert (env["POD_NAME"], env["POD_NAMESPACE"], env["POD_UID"]) == (
        "pod-env-1",
        "default",
        "env-1",
    )
    assert (env["APP"], env["NOTE"], env["NODE"], env["SA"]) == ("demo", "hi", "edge-1", "default")
    assert env["POD_IP"] == env["HOST_IP"] == "127.0.0.1"
    assert env["MEM_MI"] == "512"
    assert env["HOSTNAME"] == "pod-env-1"
    assert env["ORBITER_MOUNT_CONFIG"] == str(pod_dir / "volumes/config")
    assert env["ORBITER_MOUNT_HOST"] == str(host)
    assert seen["cwd"] == str(croot / "work/dir")
    assert seen["greeting"] == seen["greeting_via_root"] == "hello"
    assert seen["greeting_mode"] == "0o600"
    assert seen["config_files"] == ["sub"]  # only the listed items are projected
    assert (seen["password"], seen["password_mode"]) == ("s3cret", "0o400")
    assert seen["labels"] == 'app="demo"'
    assert seen["rlimit_data"] == 512 * 2**20
    assert (pod_dir / "volumes/scratch/note").read_text() == "written"
    assert (host / "from-pod").read_text() == "host"
    assert (croot / "etc/config").is_symlink() and (croot / "host").is_symlink()


async def test_memory_limit_is_enforced(make_runtime: MakeRuntime) -> None:
    rt = await make_runtime()
    statuses = StatusLog(rt)
    code = (
        "import sys\n"
        "try:\n    block = bytearray(400 * 2**20)\nexcept MemoryError:\n    sys.exit(42)\n"
    )
    pod = make_pod(
        "mem-1",
        [container("hog", code, resources={"limits": {"memory": "100Mi"}})],
        restart="Never",
    )
    await rt.sync_pod(pod, resolve)
    done = await statuses.wait("mem-1", lambda s: s["phase"] == "Failed")
    assert cstatus(done, "hog")["state"]["terminated"]["exitCode"] == 42


async def test_init_containers_run_in_order_before_the_app(make_runtime: MakeRuntime) -> None:
    rt = await make_runtime()
    statuses = StatusLog(rt)

    def step(name: str) -> dict[str, Any]:
        code = f"open('shared/order', 'a').write('{name}\\n')"
        return container(name, code, volumeMounts=[{"name": "shared", "mountPath": "shared"}])

    app = container(
        "app",
        "import time; open('shared/order', 'a').write('app\\n'); time.sleep(600)",
        volumeMounts=[{"name": "shared", "mountPath": "shared"}],
    )
    pod = make_pod(
        "init-1",
        [app],
        init=[step("first"), step("second"), step("third")],
        volumes=[{"name": "shared", "emptyDir": {}}],
    )
    await rt.sync_pod(pod, resolve)
    status = await statuses.wait("init-1", running("app"))
    assert status["phase"] == "Running"
    order = rt.root / "pods/init-1/volumes/shared/order"

    def app_wrote() -> None:
        assert order.read_text().split() == ["first", "second", "third", "app"]

    await eventually(app_wrote)
    for name in ("first", "second", "third"):
        term = cstatus(status, name)["state"]["terminated"]
        assert (term["exitCode"], term["reason"]) == (0, "Completed")
        assert cstatus(status, name)["ready"] is True
    assert {c["type"]: c["status"] for c in status["conditions"]}["Initialized"] == "True"
    # while the init containers ran, the pod was Pending and the app waited
    assert statuses.seen(
        "init-1",
        lambda s: s["phase"] == "Pending" and waiting_reason(s, "app") == "PodInitializing",
    )


@pytest.mark.parametrize(("policy", "phase"), [("OnFailure", "Running"), ("Never", "Failed")])
async def test_failing_init_container_follows_the_restart_policy(
    make_runtime: MakeRuntime, policy: str, phase: str
) -> None:
    rt = await make_runtime()
    statuses = StatusLog(rt)
    # fails on its first run only (the marker lives in the container's root, across restarts)
    flaky = container(
        "flaky",
        "import os, sys\n"
        "if not os.path.exists('tried'):\n    open('tried', 'w')\n    sys.exit(5)\n",
    )
    pod = make_pod(
        f"initfail-{policy.lower()}",
        [container("app", "import time; time.sleep(600)")],
        init=[flaky],
        restart=policy,
    )
    uid = pod["metadata"]["uid"]
    await rt.sync_pod(pod, resolve)
    status = await statuses.wait(uid, lambda s: s["phase"] == phase)
    flaky_status = cstatus(status, "flaky")
    if policy == "Never":
        assert flaky_status["state"]["terminated"]["exitCode"] == 5
        assert flaky_status["restartCount"] == 0
        assert waiting_reason(status, "app") == "PodInitializing"
    else:
        assert flaky_status["restartCount"] == 1
        assert flaky_status["lastState"]["terminated"]["exitCode"] == 5
        assert state(status, "app") == "running"


@pytest.mark.parametrize(
    ("policy", "code", "phase", "restarts"),
    [
        ("OnFailure", 0, "Succeeded", False),
        ("OnFailure", 3, None, True),
        ("Never", 3, "Failed", False),
        ("Never", 0, "Succeeded", False),
        ("Always", 0, None, True),
    ],
)
async def test_exit_codes_and_restart_policies(
    make_runtime: MakeRuntime, policy: str, code: int, phase: str | None, restarts: bool
) -> None:
    rt = await make_runtime()
    statuses = StatusLog(rt)
    uid = f"exit-{policy.lower()}-{code}"
    await rt.sync_pod(
        make_pod(uid, [container("c", f"import sys; sys.exit({code})")], restart=policy), resolve
    )
    if restarts:
        status = await statuses.wait(uid, lambda s: cstatus(s, "c")["restartCount"] >= 2)
        assert status["phase"] == "Running"
        assert cstatus(status, "c")["lastState"]["terminated"]["exitCode"] == code
        return
    status = await statuses.wait(uid, lambda s: s["phase"] == phase)
    term = cstatus(status, "c")["state"]["terminated"]
    assert term["exitCode"] == code
    assert term["reason"] == ("Completed" if code == 0 else "Error")
    assert cstatus(status, "c")["restartCount"] == 0
    assert {c["type"]: c.get("reason") for c in status["conditions"]}["Ready"] == "PodCompleted"


async def test_crash_loop_back_off_doubles_up_to_the_maximum(make_runtime: MakeRuntime) -> None:
    rt = await make_runtime()
    statuses = StatusLog(rt)
    await rt.sync_pod(make_pod("crash-1", [container("c", "import sys; sys.exit(1)")]), resolve)
    status = await statuses.wait("crash-1", lambda s: cstatus(s, "c")["restartCount"] >= 6)
    assert status["phase"] == "Running"
    messages: list[str] = []
    for uid, s in statuses.history:
        waiting = cstatus(s, "c")["state"].get("waiting", {})
        if uid == "crash-1" and waiting.get("reason") == "CrashLoopBackOff":
            delay = waiting["message"].split()[1]
            if not messages or messages[-1] != delay:
                messages.append(delay)
            assert (
                "restarting failed container=c pod=pod-crash-1_default(crash-1)"
                in waiting["message"]
            )
    # the first restart is immediate; then 50 ms doubling, capped at 400 ms
    assert messages[:5] == ["50ms", "100ms", "200ms", "400ms", "400ms"][: len(messages)]
    assert len(messages) >= 4


async def test_unknown_image_keeps_the_pod_pending(make_runtime: MakeRuntime) -> None:
    rt = await make_runtime()
    statuses = StatusLog(rt)
    pod = make_pod("img-1", [{"name": "web", "image": "nginx:1.25", "command": ["nginx"]}])
    await rt.sync_pod(pod, resolve)
    status = await statuses.wait("img-1", lambda s: waiting_reason(s, "web") == "ErrImageNeverPull")
    assert '"nginx:1.25"' in cstatus(status, "web")["state"]["waiting"]["message"]
    assert status["phase"] == "Pending"
    assert rt.pod_status("img-1")["phase"] == "Pending"


async def test_bad_input_becomes_waiting_reasons_not_exceptions(
    make_runtime: MakeRuntime, tmp_path: Path
) -> None:
    rt = await make_runtime()
    statuses = StatusLog(rt)
    sleep = "import time; time.sleep(600)"
    pod = make_pod(
        "bad-1",
        [
            {"name": "strcmd", "image": "python", "command": "python -c pass"},
            container("long", sleep, args=["x" * 200_000]),
            container("ghost", sleep, volumeMounts=[{"name": "ghost", "mountPath": "/x"}]),
            container(
                "nocm",
                sleep,
                env=[{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}],
            ),
            container("badenv", sleep, env="A=1"),
            container("badvol", sleep, volumeMounts=[{"name": "missingcm", "mountPath": "/cfg"}]),
            container("badprobe", sleep, livenessProbe={"grpc": {"port": 1}}),
            container("badhost", sleep, volumeMounts=[{"name": "hp", "mountPath": "/hp"}]),
            container(
                "nested",
                sleep,
                volumeMounts=[
                    {"name": "scratch", "mountPath": "/data"},
                    {"name": "scratch", "mountPath": "/data/inner"},
                ],
            ),
            container("rootmount", sleep, volumeMounts=[{"name": "scratch", "mountPath": "/"}]),
            container("badlimit", sleep, resources={"limits": {"memory": "lots"}}),
            container("ok", sleep),
        ],
        volumes=[
            {"name": "missingcm", "configMap": {"name": "nope"}},
            {"name": "hp", "hostPath": {"path": str(tmp_path / "absent"), "type": "Directory"}},
            {"name": "scratch", "emptyDir": {}},
        ],
    )
    await rt.sync_pod(pod, resolve)
    status = await statuses.wait("bad-1", running("ok"))
    expected = {
        "strcmd": "spec.containers[0].command",
        "long": "over the 131071-byte limit of one exec argument",
        "ghost": '"ghost"',
        "nocm": 'configmap "nope" not found',
        "badenv": "spec.containers[4].env",
        "badvol": 'volume "missingcm": configmap "nope" not found',
        "badprobe": "grpc probes are not supported",
        "badhost": f"hostPath type check failed: {tmp_path / 'absent'} is not a Directory",
        "nested": "is inside another mount",
        "rootmount": 'cannot mount on "/"',
        "badlimit": "spec.containers[10].resources.limits.memory",
    }
    status = await statuses.wait(
        "bad-1",
        lambda s: all(waiting_reason(s, n) == "CreateContainerConfigError" for n in expected),
    )
    for name, fragment in expected.items():
        assert fragment in cstatus(status, name)["state"]["waiting"]["message"], name
    assert status["phase"] == "Pending"
    # malformed pods are logged and ignored, or reported as far as they can be
    await rt.sync_pod({"metadata": {"uid": "bad-2"}, "spec": "nonsense"}, resolve)
    await rt.sync_pod("not a pod", resolve)  # type: ignore[arg-type]
    await rt.sync_pod({"metadata": {"uid": "../escape"}, "spec": {}}, resolve)
    odd = {
        "metadata": {"uid": "bad-3"},
        "spec": {"containers": [{"name": 5}, "x", {"name": "c", "image": 7}]},
    }
    await rt.sync_pod(odd, resolve)
    assert rt.pod_status("bad-2")["phase"] == "Pending"
    odd_status = await statuses.wait(
        "bad-3", lambda s: waiting_reason(s, "c") == "ErrImageNeverPull"
    )
    assert [c["name"] for c in odd_status["containerStatuses"]] == ["c"]
    assert set(rt.running_pods()) == {"bad-1", "bad-2", "bad-3"}


async def test_logs_current_previous_and_followed(make_runtime: MakeRuntime) -> None:
    rt = await make_runtime()
    statuses = StatusLog(rt)
    code = (
        "import os, sys, time\n"
        "n = len([f for f in os.listdir('.') if f.startswith('run')])\n"
        "open(f'run{n}', 'w').close()\n"
        "print(f'out {n}'); print(f'err {n}', file=sys.stderr)\n"
        "while not os.path.exists(f'go{n}'):\n    time.sleep(0.02)\n"
        "print(f'bye {n}'); sys.exit(1)\n"
    )
    await rt.sync_pod(make_pod("logs-1", [container("c", code)]), resolve)
    await statuses.wait("logs-1", running("c"))
    with pytest.raises(KeyError):
        rt.logs("logs-1", "c", previous=True)

    def printed() -> None:
        assert b"out 0" in rt.logs("logs-1", "c") and b"err 0" in rt.logs("logs-1", "c")

    await eventually(printed)
    chunks = []
    follow = rt.logs("logs-1", "c", follow=True)
    (container_root(rt, "logs-1", "c") / "go0").touch()
    async for chunk in follow:  # ends when the run does
        chunks.append(chunk)
    assert b"bye 0" in b"".join(chunks) and b"out 0" in b"".join(chunks)
    await statuses.wait(
        "logs-1", lambda s: cstatus(s, "c")["restartCount"] == 1 and state(s, "c") == "running"
    )
    assert b"bye 0" in rt.logs("logs-1", "c", previous=True)

    def printed_again() -> None:
        assert b"out 1" in rt.logs("logs-1", "c")
        assert b"out 1" in (rt.root / "pods/logs-1/logs/c/1.log").read_bytes()

    await eventually(printed_again)


async def test_changed_spec_restarts_the_container(make_runtime: MakeRuntime) -> None:
    rt = await make_runtime()
    statuses = StatusLog(rt)
    pod = make_pod("change-1", [container("c", "import time; time.sleep(600)")])
    await rt.sync_pod(pod, resolve)
    first = await statuses.wait("change-1", running("c"))
    await rt.sync_pod(pod, resolve)  # the same spec again changes nothing
    pod["spec"]["containers"][0]["command"] = ["python", "-c", "import time; time.sleep(601)"]
    await rt.sync_pod(pod, resolve)
    second = await statuses.wait(
        "change-1", lambda s: cstatus(s, "c")["restartCount"] == 1 and state(s, "c") == "running"
    )
    assert pid_of(second, "c") != pid_of(first, "c")


async def test_kill_pod_forgets_the_pod_and_its_files(make_runtime: MakeRuntime) -> None:
    rt = await make_runtime()
    statuses = StatusLog(rt)
    await rt.sync_pod(make_pod("gone-1", [container("c", "import time; time.sleep(600)")]), resolve)
    await statuses.wait("gone-1", running("c"))
    await rt.kill_pod("gone-1", 1)
    final = statuses.history[-1][1]
    assert final["phase"] == "Failed" and state(final, "c") == "terminated"
    with pytest.raises(KeyError):
        rt.pod_status("gone-1")
    assert rt.running_pods() == {}
    assert not (rt.root / "pods/gone-1").exists()
    await rt.kill_pod("gone-1", 1)  # unknown pods are ignored
    # pod directories hold resolved Secrets: only the node's user may look in
    assert stat.S_IMODE((rt.root / "pods").stat().st_mode) == 0o700


async def test_working_dir_never_follows_a_symlink_the_container_made(
    make_runtime: MakeRuntime, tmp_path: Path
) -> None:
    rt = await make_runtime()
    statuses = StatusLog(rt)
    outside = tmp_path / "outside"
    outside.mkdir()
    code = f"import os, time; os.symlink({str(outside)!r}, 'evil'); time.sleep(600)"
    pod = make_pod("evil-1", [container("c", code)])
    await rt.sync_pod(pod, resolve)
    await statuses.wait("evil-1", running("c"))
    await eventually(lambda: _is_link(container_root(rt, "evil-1", "c") / "evil"))
    pod["spec"]["containers"][0]["workingDir"] = "evil/sub"
    await rt.sync_pod(pod, resolve)
    status = await statuses.wait(
        "evil-1", lambda s: waiting_reason(s, "c") == "CreateContainerConfigError"
    )
    assert (
        "evil is a symlink the container made"
        in cstatus(status, "c")["state"]["waiting"]["message"]
    )
    assert list(outside.iterdir()) == []


def _is_link(path: Path) -> None:
    assert path.is_symlink()


async def test_async_resolver_and_refreshed_config_volumes(make_runtime: MakeRuntime) -> None:
    rt = await make_runtime()
    statuses = StatusLog(rt)
    data = {"greeting": "hello"}

    async def resolve_async(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return {"data": dict(data)} if (kind, name) == ("ConfigMap", "live") else None

    app = container(
        "c",
        "import time; time.sleep(600)",
        env=[{"name": "G", "valueFrom": {"configMapKeyRef": {"name": "live", "key": "greeting"}}}],
        volumeMounts=[{"name": "cfg", "mountPath": "/cfg"}],
    )
    pod = make_pod("live-cfg", [app], volumes=[{"name": "cfg", "configMap": {"name": "live"}}])
    await rt.sync_pod(pod, resolve_async)
    first = await statuses.wait("live-cfg", running("c"))
    greeting = rt.root / "pods/live-cfg/volumes/cfg/greeting"
    assert greeting.read_text() == "hello"
    data["greeting"] = "bonjour"
    await rt.sync_pod(pod, resolve_async)  # the edge re-syncs when a ConfigMap changes

    def refreshed() -> None:
        assert greeting.read_text() == "bonjour"

    await eventually(refreshed)
    # a mounted ConfigMap is refreshed in place; the container is not restarted
    assert pid_of(rt.pod_status("live-cfg"), "c") == pid_of(first, "c")
    assert cstatus(rt.pod_status("live-cfg"), "c")["restartCount"] == 0
