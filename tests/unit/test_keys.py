"""Typed keys: parsing, validation, sources and their order."""

import pytest

from ingot.errors import KeyValueError
from ingot.keys import REQUIRED, key, parse_argv, port, positive, resolve


def test_types_parse_from_text():
    assert key("n", int, "count").parse("0x10") == 16
    assert key("r", float, "ratio").parse("0.5") == 0.5
    assert key("b", bool, "flag").parse("Yes") is True
    assert key("b", bool, "flag").parse("off") is False
    assert key("l", list, "list").parse("a, b,,c") == ["a", "b", "c"]


def test_wrong_type_is_one_clear_error_naming_the_flag():
    with pytest.raises(KeyValueError) as exc:
        key("n", int, "How many", 4).parse("four", "command line")
    assert str(exc.value) == "--n (from command line): 'four' is not a valid integer"
    assert exc.value.hint == "--n: How many"
    with pytest.raises(KeyValueError, match="expected one of true/false"):
        key("b", bool, "flag").parse("maybe")


def test_validators_and_choices():
    with pytest.raises(KeyValueError, match="must be positive"):
        key("n", int, "count", validate=positive).parse("0")
    with pytest.raises(KeyValueError, match="not a port number"):
        key("port", int, "port", validate=port).parse("70000")
    with pytest.raises(KeyValueError, match="not one of debug, info"):
        key("level", str, "level", choices=("debug", "info")).parse("loud")


def test_bad_declarations_are_refused():
    with pytest.raises(ValueError, match="lower-case words"):
        key("Bad_Name", str, "doc")
    with pytest.raises(ValueError, match="stage"):
        key("x", str, "doc", stage="later")
    with pytest.raises(ValueError, match="doc line"):
        key("x", str, "")


def test_names_give_flags_and_environment_variables():
    k = key("log-level", str, "level", "info")
    assert k.flag == "--log-level" and k.env == "INGOT_LOG_LEVEL"


def test_sources_command_line_over_env_over_baked_over_default():
    keys = [key("a", int, "a", 1), key("b", int, "b", 2), key("c", int, "c", 3),
            key("d", int, "d", 4)]
    got = resolve(keys, {"a": "10"}, {"INGOT_A": "99", "INGOT_B": "20"}, {"b": 98, "c": 30})
    assert got == {"a": 10, "b": 20, "c": 30, "d": 4}


def test_kernel_command_line_sits_between_env_and_baked():
    keys = [key("a", int, "a", 1), key("b", int, "b", 1)]
    got = resolve(keys, {}, {"INGOT_A": "5"}, {"b": 7}, extra_sources={"a": "6", "b": "8"})
    assert got == {"a": 5, "b": 8}


def test_missing_required_key_names_flag_and_env():
    with pytest.raises(KeyValueError) as exc:
        resolve([key("zone", str, "The zone", REQUIRED)], {}, {}, {})
    assert str(exc.value) == "missing required key --zone"
    assert "INGOT_ZONE" in exc.value.hint


def test_baked_value_of_wrong_type_is_refused():
    with pytest.raises(KeyValueError, match="not a valid integer"):
        resolve([key("n", int, "n")], {}, {}, {"n": "x"})


def test_parse_argv_forms():
    assert parse_argv(["--a", "1", "--b=2", "--flag", "--c", "x"]) == (
        {"a": "1", "b": "2", "flag": "true", "c": "x"}, [])
    assert parse_argv(["word", "--a", "1"]) == ({"a": "1"}, ["word"])
    with pytest.raises(KeyValueError, match="given twice"):
        parse_argv(["--a", "1", "--a", "2"])
