"""The one checker every config key goes through: types, bounds, choices, a key's own check."""

from __future__ import annotations

import dataclasses
import math

import pytest

from fedquant.fields import check_fields, key


@dataclasses.dataclass
class Keys:
    count: int = key(1, "a count", ge=1, le=10)
    rate: float = key(0.5, "a rate", gt=0.0, lt=1.0)
    flag: bool = key(True, "a flag")
    mode: str = key("a", "a mode", choices=("a", "b"))
    path: str | None = key(None, "a path")
    items: list = key([1], "items", check=lambda name, v: None)
    options: dict = key({}, "options")
    weight: float = key(1.0, "a weight", ge=0.0)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("count", 0, "count=0 is not valid: allowed is an integer in 1..10"),
    ("count", 2.0, "count=2.0 is not valid: allowed is an integer in 1..10"),
    ("count", True, "count=true is not valid: allowed is an integer in 1..10"),
    ("rate", 1.0, "rate=1.0 is not valid: allowed is a number > 0.0 and < 1.0"),
    ("rate", math.inf, "rate=inf is not valid"),
    ("rate", math.nan, "rate=nan is not valid"),
    ("rate", "0.5", "rate='0.5' is not valid"),
    ("flag", "yes", "flag='yes' is not valid: allowed are true, false"),
    ("flag", None, "flag=null is not valid: allowed are true, false"),
    ("mode", "c", "mode='c' is not valid: allowed are a, b"),
    ("path", 3, "path=3 is not valid: allowed is a string"),
    ("items", 4, "items=4 is not valid: allowed is a list"),
    ("items", None, "items=null is not valid: allowed is a list"),
    ("options", [1], "options=[1] is not valid: allowed is a mapping"),
])
def test_a_bad_value_is_one_line_naming_the_key_the_value_and_what_is_allowed(field, value, message):
    keys = Keys()
    setattr(keys, field, value)
    with pytest.raises(ValueError) as err:
        check_fields(keys)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_good_values_pass_and_lists_and_dicts_are_copied_per_instance():
    check_fields(Keys(count=10, rate=0.25, flag=False, mode="b", path="/x", items=[], options={"k": 1}))
    check_fields(Keys(weight=3))  # an integer is a number
    a, b = Keys(), Keys()
    a.items.append(2)
    assert b.items == [1]
