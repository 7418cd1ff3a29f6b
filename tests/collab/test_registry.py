"""The algorithm registry: names, aliases, refused duplicates (Sedna overwrote silently),
unknown names, and the built-in algorithms it finds without being told."""

from __future__ import annotations

import subprocess
import sys

import pytest
from orbiter.collab import mining
from orbiter.collab.estimators import softmax
from orbiter.collab.registry import ClassFactory, ClassType, Registry, registry


def test_register_and_look_up_by_name_and_aliases() -> None:
    algorithms = Registry()

    @algorithms.register(ClassType.HEM, alias=["Mine", "MineFilter"])
    class MyFilter:
        pass

    assert algorithms.get_cls(ClassType.HEM, "MyFilter") is MyFilter
    assert algorithms.get_cls(ClassType.HEM, "Mine") is MyFilter
    assert algorithms.get_cls("hard_example_mining", "MineFilter") is MyFilter  # plain str type
    assert algorithms.names(ClassType.HEM) == {"MyFilter": ("Mine", "MineFilter")}
    assert algorithms.is_registered(ClassType.HEM, "Mine")
    assert not algorithms.is_registered(ClassType.AGGREGATION, "Mine")


def test_functions_and_explicit_names() -> None:
    algorithms = Registry()

    @algorithms.register(ClassType.CALLBACK, name="double")
    def twice(x: int) -> int:
        return 2 * x

    assert algorithms.get_cls(ClassType.CALLBACK, "double")(21) == 42
    assert not algorithms.is_registered(ClassType.CALLBACK, "twice")


def test_names_are_per_type() -> None:
    algorithms = Registry()

    class A:
        pass

    class B:
        pass

    algorithms.register_cls(A, ClassType.HEM, name="X")
    algorithms.register_cls(B, ClassType.AGGREGATION, name="X")
    assert algorithms.get_cls(ClassType.HEM, "X") is A
    assert algorithms.get_cls(ClassType.AGGREGATION, "X") is B


@pytest.mark.parametrize(
    ("name", "alias"),
    [("First", None), ("Other", "First"), ("Other", "FirstAlias"), ("FirstAlias", None)],
)
def test_duplicate_name_or_alias_is_refused_naming_both(name: str, alias: str | None) -> None:
    algorithms = Registry()

    class First:
        pass

    algorithms.register_cls(First, ClassType.HEM, "FirstAlias")
    second = type(name, (), {"__module__": "tests.somewhere"})
    with pytest.raises(ValueError) as err:
        algorithms.register_cls(second, ClassType.HEM, alias)
    message = str(err.value)
    assert "already taken" in message
    assert "tests.somewhere" in message and "First" in message  # both registrants named
    assert message.count("test_registry") >= 1  # the first one's module
    # The first registration is intact: nothing was overwritten.
    assert algorithms.get_cls(ClassType.HEM, "First") is First
    assert algorithms.get_cls(ClassType.HEM, "FirstAlias") is First
    assert algorithms.names(ClassType.HEM) == {"First": ("FirstAlias",)}


def test_same_object_again_is_not_a_conflict() -> None:
    algorithms = Registry()

    class F:
        pass

    algorithms.register_cls(F, ClassType.HEM, "G")
    algorithms.register_cls(F, ClassType.HEM, "G")
    algorithms.register_cls(F, ClassType.HEM, "H")  # one more alias for the same entry
    assert algorithms.names(ClassType.HEM) == {"F": ("G", "H")}


def test_unregister_then_replace() -> None:
    algorithms = Registry()

    class Old:
        pass

    class New:
        pass

    algorithms.register_cls(Old, ClassType.HEM, "Alias", name="Algo")
    algorithms.unregister(ClassType.HEM, "Alias")  # by alias: the whole entry goes
    assert not algorithms.is_registered(ClassType.HEM, "Algo")
    algorithms.register_cls(New, ClassType.HEM, "Alias", name="Algo")
    assert algorithms.get_cls(ClassType.HEM, "Alias") is New
    with pytest.raises(ValueError, match="unknown"):
        algorithms.unregister(ClassType.HEM, "Nope")


def test_unknown_name_lists_the_known_ones() -> None:
    algorithms = Registry()

    class Known:
        pass

    algorithms.register_cls(Known, ClassType.HEM, "KnownAlias")
    with pytest.raises(ValueError) as err:
        algorithms.get_cls(ClassType.HEM, "Unknown")
    assert "'Unknown'" in str(err.value)
    assert "Known (alias KnownAlias)" in str(err.value)
    with pytest.raises(ValueError, match="none registered"):
        algorithms.get_cls(ClassType.AGGREGATION, "Anything")


def test_bad_names() -> None:
    algorithms = Registry()
    with pytest.raises(ValueError, match="non-empty"):
        algorithms.register_cls(object, ClassType.HEM, "")
    with pytest.raises(ValueError, match="name="):
        algorithms.register_cls(42, ClassType.HEM)


def test_the_process_registry_holds_sedna_names_and_aliases() -> None:
    assert ClassFactory is registry
    expected = {
        "Threshold": mining.Threshold,
        "ThresholdFilter": mining.Threshold,
        "CrossEntropy": mining.CrossEntropy,
        "CrossEntropyFilter": mining.CrossEntropy,
        "IBT": mining.IBT,
        "IBTFilter": mining.IBT,
        "Random": mining.Random,
        "RandomFilter": mining.Random,
        "CloudOnly": mining.CloudOnly,
        "EdgeOnly": mining.EdgeOnly,
    }
    for name, cls in expected.items():
        assert registry.get_cls(ClassType.HEM, name) is cls
    assert registry.get_cls(ClassType.CALLBACK, "softmax") is softmax


def test_builtins_load_on_first_lookup() -> None:
    # In a fresh interpreter: nothing but the registry imported, yet the filters are found.
    code = (
        "import sys\n"
        "from orbiter.collab.registry import ClassType, registry\n"
        "assert 'orbiter.collab.mining' not in sys.modules\n"
        "print(registry.get_cls(ClassType.HEM, 'IBT').__name__)\n"
        "assert 'torch' not in sys.modules\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "IBT"


def test_package_import_is_cheap() -> None:
    code = (
        "import sys, orbiter.collab as c\n"
        "heavy = [m for m in ('numpy', 'torch', 'onnxruntime', 'aiohttp') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert c.JointInference.__name__ == 'JointInference'\n"
        "assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
