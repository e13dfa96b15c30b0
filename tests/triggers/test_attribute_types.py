"""A custom attribute's value must have the type the attributes file declares: a
``string`` sent as a list, or a ``number`` sent as text, would make every condition on it
silently false, so intake refuses the event instead (``wrong_schema``)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from triggers.fields import FieldType, attribute_type_problems, attribute_type_reason

DECLARED = {
    "tier": FieldType.STRING,
    "opens": FieldType.NUMBER,
    "interests": FieldType.STRING_SET,
    "b2b": FieldType.BOOLEAN,
}

FITS = [
    ("tier", "gold"),
    ("tier", ""),
    ("opens", 0),
    ("opens", -3),
    ("opens", Decimal("2.5")),
    ("interests", []),
    ("interests", ["cameras", "audio"]),
    ("b2b", True),
    ("b2b", False),
]
WRONG = [
    ("tier", ["gold"], "a text"),
    ("tier", 5, "a text"),
    ("tier", True, "a text"),
    ("opens", "5", "a number"),
    ("opens", True, "a number"),
    ("opens", ["5"], "a number"),
    ("interests", "cameras", "a list of texts"),
    ("interests", ["cameras", 3], "a list of texts"),
    ("interests", [True], "a list of texts"),
    ("b2b", "yes", "true or false"),
    ("b2b", 1, "true or false"),
    ("b2b", ["true"], "true or false"),
]


@pytest.mark.parametrize(("name", "value"), FITS)
def test_a_value_of_the_declared_type_fits(name: str, value: object) -> None:
    assert attribute_type_problems({name: value}, DECLARED) == []


@pytest.mark.parametrize(("name", "value", "wanted"), WRONG)
def test_a_value_of_another_type_is_named_with_the_declared_one(
    name: str, value: object, wanted: str
) -> None:
    (problem,) = attribute_type_problems({name: value}, DECLARED)
    assert problem.startswith(f"customer.attributes.{name}: must be {wanted}")
    assert repr(value) not in problem and str(value) not in problem.split(":", 1)[1]


def test_null_clears_and_undeclared_attributes_pass_as_sent() -> None:
    assert attribute_type_problems({"tier": None, "opens": None, "other": ["x"]}, DECLARED) == []
    assert attribute_type_problems({"tier": ["x"]}, {}) == []
    assert attribute_type_reason(None, DECLARED) is None


def test_the_reason_lists_five_problems_and_counts_the_rest() -> None:
    declared = {f"a{number}": FieldType.NUMBER for number in range(8)}
    reason = attribute_type_reason({name: "x" for name in declared}, declared)
    assert reason is not None
    assert reason.count("must be a number") == 5
    assert reason.endswith("; and 3 more")
