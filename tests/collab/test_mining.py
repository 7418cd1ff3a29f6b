"""Hard-example filters: Sedna's formulas and defaults on hand-computed cases, boundaries,
invalid input (never hard, never raising), and parameters as the CRD carries them."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from orbiter.collab.mining import (
    IBT,
    CloudOnly,
    CrossEntropy,
    EdgeOnly,
    ParameterError,
    Random,
    Threshold,
    hem_from_env,
    hem_from_spec,
    parse_parameters,
)


def boxes(*scores: float) -> list[list[float]]:
    return [[0.0, 0.0, 10.0, 10.0, s, 1.0] for s in scores]


MALFORMED: list[Any] = [
    None,
    [],
    (),
    "",
    "not boxes",
    42,
    3.5,
    {"a": 1},
    [None],
    [[1, 2, 3, 4]],  # 4 fields: not > 4
    [[0, 0, 1, 1, "high", 0]],
    [[0, 0, 1, 1, None, 0]],
    [[0, 0, 1, 1, 0.9, 0], [0, 0, 1]],  # one short box spoils the image
    np.zeros((0, 6)),
    object(),
    [object()],
]


# ----------------------------------------------------------------------------- Threshold


def test_threshold_mean_score() -> None:
    hem = Threshold()
    assert hem.threshold == 0.5
    assert hem(boxes(0.2, 0.6))  # mean 0.4 < 0.5
    assert not hem(boxes(0.4, 0.6))  # mean 0.5: not below
    assert not hem(boxes(0.9))
    assert Threshold(threshold=0.95)(boxes(0.9, 0.99))  # mean 0.945
    assert hem(np.array(boxes(0.1, 0.2, 0.3)))  # an array of boxes works the same


@pytest.mark.parametrize("bad", MALFORMED)
def test_threshold_invalid_input_is_not_hard(bad: Any) -> None:
    assert Threshold(threshold=2.0)(bad) is False  # any valid input would be hard


# -------------------------------------------------------------------------- CrossEntropy


def test_cross_entropy_confidence_formula() -> None:
    # Hand-computed: p = (0.5, 0.25, 0.25), K = 3:
    # sum p ln p = 0.5 ln 0.5 + 2 * 0.25 ln 0.25 = -1.0397208; / ln 3 = -0.9463946
    p = [0.5, 0.25, 0.25]
    expected = 1 + (0.5 * math.log(0.5) + 0.5 * math.log(0.25)) / math.log(3)
    assert CrossEntropy.confidence(p) == pytest.approx(expected)
    assert expected == pytest.approx(0.0536054, abs=1e-6)
    assert CrossEntropy()(p)  # 0.054 < 0.5
    assert not CrossEntropy(threshold_cross_entropy=0.05)(p)


def test_cross_entropy_uniform_is_hard_and_one_hot_is_not() -> None:
    hem = CrossEntropy()
    assert hem.threshold_cross_entropy == 0.5
    uniform = np.full(10, 0.1)
    assert CrossEntropy.confidence(uniform) == pytest.approx(0.0, abs=1e-12)
    assert hem(uniform)
    one_hot = np.eye(10)[3]
    assert CrossEntropy.confidence(one_hot) == 1.0  # 0 ln 0 = 0, no log(0) error
    assert not hem(one_hot)
    assert not CrossEntropy(threshold_cross_entropy=1.0)(one_hot)  # 1 < 1 is false
    # A single-row batch (what a batch-of-one predict returns) reads as its row.
    assert hem(uniform[None, :]) and not hem(one_hot[None, :])


def test_cross_entropy_boundary_two_classes() -> None:
    # K = 2, p = (0.5, 0.5): confidence 0 -> hard at any positive threshold, not at 0.
    assert CrossEntropy(threshold_cross_entropy=1e-9)([0.5, 0.5])
    assert not CrossEntropy(threshold_cross_entropy=0)([0.5, 0.5])


@pytest.mark.parametrize(
    "bad",
    [
        *MALFORMED,
        [1.0],  # K = 1: no uncertainty to measure (ln 1 = 0); not hard, no division by zero
        [0.5, 1.5],  # a value above 1
        [-0.1, 1.1],
        [0.5, float("nan")],
        [[0.5, 0.5], [0.5, 0.5]],  # a batch of two is not one example
        [[0.5, 0.5], [0.5]],  # ragged
        np.full((1, 1, 10), 0.1),
    ],
)
def test_cross_entropy_invalid_input_is_not_hard(bad: Any) -> None:
    assert CrossEntropy(threshold_cross_entropy=2.0)(bad) is False


# ---------------------------------------------------------------------------------- IBT


def test_ibt_share_of_low_boxes() -> None:
    hem = IBT()
    assert (hem.threshold_img, hem.threshold_box) == (0.5, 0.5)
    assert hem(boxes(0.5, 0.9))  # 1 of 2 <= 0.5 (inclusive): 0.5 >= 0.5
    assert not hem(boxes(0.51, 0.9, 0.3))  # 1 of 3 < 0.5
    assert hem(boxes(0.1, 0.2, 0.9))  # 2 of 3


def test_ibt_threshold_img_09_means_ten_percent_low_boxes() -> None:
    hem = IBT(threshold_img=0.9)
    assert hem(boxes(0.4, *[0.9] * 9))  # 1 of 10 low: 0.1 >= 1 - 0.9
    assert not hem(boxes(0.4, *[0.9] * 10))  # 1 of 11: below 10 %


def test_ibt_decimal_thresholds_behave_as_written() -> None:
    # 1 - 0.7 is 0.30000000000000004 in binary floating point; 3 of 10 must still count.
    assert 3 / 10 < 1 - 0.7
    assert IBT(threshold_img=0.7)(boxes(0.1, 0.2, 0.3, *[0.9] * 7))
    assert not IBT(threshold_img=0.7)(boxes(0.1, 0.2, *[0.9] * 8))


@pytest.mark.parametrize(
    "bad", [*MALFORMED, boxes(0.5, 1.2), boxes(-0.1), boxes(float("nan"), 0.2)]
)
def test_ibt_invalid_input_is_not_hard(bad: Any) -> None:
    assert IBT(threshold_img=1.0, threshold_box=1.0)(bad) is False  # valid input: hard


# ------------------------------------------------------------------- Random, Cloud/Edge


def test_random_is_seeded_and_keeps_its_ratio() -> None:
    a = Random(random_ratio="0.25", seed="7")  # strings, as the CRD carries them
    b = Random(random_ratio=0.25, seed=7)
    draws_a = [a(None) for _ in range(4000)]
    assert draws_a == [b(None) for _ in range(4000)]
    assert a.random_ratio == 0.25 and isinstance(a.random_ratio, float)
    assert sum(draws_a) / len(draws_a) == pytest.approx(0.25, abs=0.02)
    assert Random().random_ratio == 0.3
    assert not any(Random(random_ratio=0, seed=1)(None) for _ in range(100))
    assert all(Random(random_ratio=1, seed=1)(None) for _ in range(100))


def test_cloud_only_and_edge_only() -> None:
    assert CloudOnly()(None) is True and CloudOnly()("anything") is True
    assert EdgeOnly()(None) is False and EdgeOnly()(boxes(0.0)) is False


# ---------------------------------------------------------------------------- parameters


def test_parameters_from_the_crd_list_are_parsed_to_numbers() -> None:
    spec = [
        {"key": "threshold_img", "value": "0.9"},
        {"key": "threshold_box", "value": "0.25"},
    ]
    hem = hem_from_spec("IBT", spec)
    assert isinstance(hem, IBT)
    assert (hem.threshold_img, hem.threshold_box) == (0.9, 0.25)
    same = hem_from_spec("IBTFilter", json.dumps(spec))  # an alias, and the env's JSON text
    assert isinstance(same, IBT) and same.threshold_img == 0.9
    ratio = hem_from_spec("RandomFilter", [{"key": "random_ratio", "value": "0.6"}])
    assert isinstance(ratio, Random) and ratio.random_ratio == 0.6
    assert isinstance(hem_from_spec("CloudOnly", []), CloudOnly)


def test_code_overrides_apply_on_top_of_the_crd() -> None:
    hem = hem_from_spec("IBT", [{"key": "threshold_img", "value": "0.5"}], threshold_img=0.9)
    assert isinstance(hem, IBT) and hem.threshold_img == 0.9


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("CrossEntropy", "threshold_cross_entropy", "high"),
        ("Threshold", "threshold", ""),
        ("IBT", "threshold_box", "0.5.1"),
        ("Random", "random_ratio", "nan"),
        ("Random", "random_ratio", "1.5"),  # a probability
        ("Random", "seed", "1.5"),
        ("Threshold", "threshold", "inf"),
    ],
)
def test_non_numeric_value_names_the_parameter(name: str, key: str, value: str) -> None:
    with pytest.raises(ParameterError) as err:
        hem_from_spec(name, [{"key": key, "value": value}])
    assert isinstance(err.value, ValueError)
    assert key in str(err.value) and repr(value) in str(err.value) and name in str(err.value)
    assert (err.value.parameter, err.value.value) == (key, value)


def test_unknown_parameter_is_an_error() -> None:
    with pytest.raises(ParameterError, match=r"unknown parameter 'threshold'.*threshold_img"):
        hem_from_spec("IBT", [{"key": "threshold", "value": "0.5"}])
    with pytest.raises(ParameterError, match="takes no parameters"):
        hem_from_spec("EdgeOnly", {"threshold": 1})


def test_unknown_filter_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError) as err:
        hem_from_spec("MaxProbability")
    message = str(err.value)
    assert "'MaxProbability'" in message
    assert "CrossEntropy (alias CrossEntropyFilter)" in message and "IBT" in message


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ("{not json", "not JSON"),
        ('"a string"', "must be a list"),
        ('[{"value": "1"}]', r"HEM_PARAMETERS\[0\]"),
        ('[{"key": "a", "value": "1"}, {"key": "a", "value": "2"}]', "given twice"),
        ('[{"key": "a"}]', "no value"),
    ],
)
def test_malformed_parameter_lists(raw: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_parameters(raw)


def test_parse_parameters_shapes() -> None:
    assert parse_parameters(None) == {} and parse_parameters("") == {}
    assert parse_parameters("null") == {}
    assert parse_parameters({"a": "1"}) == {"a": "1"}
    assert parse_parameters([{"key": "a", "value": 1}]) == {"a": 1}


def test_from_env() -> None:
    assert hem_from_env({}) is None  # no HEM_NAME: no mining
    env = {
        "HEM_NAME": "CrossEntropy",
        "HEM_PARAMETERS": '[{"key": "threshold_cross_entropy", "value": "0.9"}]',
    }
    hem = hem_from_env(env)
    assert isinstance(hem, CrossEntropy) and hem.threshold_cross_entropy == 0.9
    assert repr(hem) == "CrossEntropy(threshold_cross_entropy=0.9)"
    assert isinstance(hem_from_env({"HEM_NAME": "EdgeOnly", "HEM_PARAMETERS": ""}), EdgeOnly)
    with pytest.raises(ParameterError, match="threshold_cross_entropy"):
        hem_from_env(env | {"HEM_PARAMETERS": '[{"key": "threshold_cross_entropy", "value": "x"}]'})
