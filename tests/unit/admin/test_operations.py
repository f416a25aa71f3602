"""The kinds of admin parameters: what each accepts, and the 400 naming it for the rest."""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from bastion.admin.operations import (
    Choice,
    Choices,
    Flag,
    Integer,
    Kind,
    Number,
    Operation,
    Strings,
    Text,
    body,
    path,
    query,
)
from bastion.errors import BadRequestError


def refused(kind: Kind, value: Any, *, text: bool = False) -> str:
    with pytest.raises(BadRequestError) as raised:
        kind.from_text(value, "p") if text else kind.from_json(value, "p")
    assert raised.value.param == "p"
    return raised.value.message


def test_text_is_a_bounded_string_without_nul() -> None:
    kind = Text(5)
    assert kind.from_json("héllo", "p") == "héllo"
    assert kind.from_text("", "p") == ""
    assert "string" in refused(kind, 5)
    assert "at most 5" in refused(kind, "sixsix")
    assert "NUL" in refused(kind, "a\x00b")
    assert "NUL" in refused(kind, "\x00", text=True)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 1e23, -1.0, True])
def test_numbers_are_finite_and_in_their_range(value: float) -> None:
    refused(Number(0, 1e12), value)


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-Infinity", "1e400", "1e23", "x", "0x10"])
def test_numbers_in_text_are_finite_and_in_their_range(text: str) -> None:
    refused(Number(0, 1e12), text, text=True)


def test_numbers_within_range() -> None:
    kind = Number(0, 100)
    assert kind.from_json(0, "p") == 0.0
    assert kind.from_json(100, "p") == 100.0
    assert kind.from_text("12.5", "p") == 12.5
    assert kind.to_text(12.5) == "12.5"
    assert "from 0 to 100" in refused(kind, 101)


@pytest.mark.parametrize("text", ["0", "10001", "1e3", "1.5", "9" * 5000, "", "ten"])
def test_integers(text: str) -> None:
    kind = Integer(1, 10_000)
    refused(kind, text, text=True)
    assert kind.from_text("10000", "p") == 10_000
    refused(kind, 5.0)
    refused(kind, True)


def test_flags() -> None:
    kind = Flag()
    assert [kind.from_text(t, "p") for t in ("true", "YES", "1", "false", "no", "0")] == [
        True, True, True, False, False, False,
    ]  # fmt: skip
    assert kind.from_json(False, "p") is False
    refused(kind, "perhaps", text=True)
    refused(kind, "true")
    refused(kind, 1)


def test_choices_of_one_and_of_several() -> None:
    one = Choice(("hour", "day"))
    assert one.from_text("day", "p") == "day"
    for bad in ("week", "", 3, None, ["day"]):
        refused(one, bad)
    several = Choices(("user", "model"))
    assert several.from_text("model,user", "p") == ("model", "user")
    assert several.from_text("user,", "p") == ("user",)
    for bad in ("user,user", "user,nobody", ",", "USER"):
        refused(several, bad, text=True)
    assert several.to_text(("user", "model")) == "user,model"


def test_lists_of_strings() -> None:
    kind = Strings(max_items=2, max_length=3)
    assert kind.from_json(["a", "bcd"], "p") == ["a", "bcd"]
    for bad in ("a", ["a", "b", "c"], ["abcd"], [""], [1], {"a": 1}, ["a\x00"]):
        refused(kind, bad)


# -- parameters and requests --------------------------------------------------------------


def _noop(call: Any) -> Any:
    return None


OP = Operation(
    "things.make", "POST", "/things/{name}", _noop, "Make a thing",
    params=(
        path("name", Text(20)),
        query("dry", Flag(), default=False),
        query("at", Number(0, 1e12)),
        body("size", Integer(0, 9), default=1),
        body("label", Text(10), required=True),
    ),
)  # fmt: skip


def test_missing_null_and_empty_are_not_given() -> None:
    args = OP.arguments({"name": "x"}, {"dry": "", "at": ""}, {"size": None, "label": "l"})
    assert args == {"name": "x", "dry": False, "at": None, "size": 1, "label": "l"}
    with pytest.raises(BadRequestError) as raised:
        OP.arguments({"name": "x"}, {}, {"label": None})
    assert (raised.value.param, raised.value.message) == ("label", "'label' is required.")
    body_text = OP.arguments({"name": "x"}, {}, {"label": ""})
    assert body_text["label"] == ""  # an empty string in a body is a value


def test_a_request_carries_each_value_where_its_parameter_lives() -> None:
    request = OP.request({"name": "a b/c", "dry": True, "at": 1.5, "size": None, "label": "é"})
    assert (request.method, request.path) == ("POST", "/admin/v1/things/a%20b%2Fc")
    assert request.query == "dry=true&at=1.5"
    assert json.loads(request.body) == {"label": "é"}  # None: not given
    assert OP.match(["things", "a b/c"]) == {"name": "a b/c"}
    assert OP.match(["things"]) is None
    assert OP.match(["thing", "x"]) is None


SAMPLES: list[Any] = [
    None, True, False, 0, 1, 2, -1, 0.5, 1.5, 1e300, "", "a", "b", "ab", "abc", "abcd",
    "a\x00", "é" * 3, "a,b", "b,a", "a,a", ",a", "c", [], ["a"], ["abc"], ["abcd"], [""],
    ["a", "b", "c"], ["a\x00"], [1], {}, {"a": 1},
]  # fmt: skip
KINDS = [Text(3), Text(3, "[ab][ab0]*", "a or b"), Number(0, 1), Integer(1, 2), Flag(),
         Choice(("a", "b")), Strings(2, 3), Choices(("a", "b"))]  # fmt: skip
UNSAYABLE = {("Choices", "a,a"), ("Choices", ",a")}
"""What a JSON Schema pattern does not say: a word given twice (refused), an empty word
(skipped)."""


def accepts(kind: Kind, value: Any) -> bool:
    try:
        kind.from_json(value, "p")
    except BadRequestError:
        return False
    return True


@pytest.mark.parametrize("kind", KINDS, ids=repr)
def test_a_kinds_schema_says_what_it_accepts(kind: Kind) -> None:
    validator = Draft202012Validator(kind.schema())
    Draft202012Validator.check_schema(kind.schema())
    disagree = [v for v in SAMPLES if validator.is_valid(v) != accepts(kind, v)]
    assert {(type(kind).__name__, v) for v in disagree} <= UNSAYABLE, disagree
