"""The hookspec module is the reference: every hook is documented and typed."""

import inspect
import re
import types

import pluggy

from ingot import hookspecs


def _hooks():
    return [(name, fn) for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
            if name.startswith("ingot_")]


def test_there_are_hooks_for_every_lifecycle_step():
    names = {name for name, _ in _hooks()}
    assert {"ingot_devices_register", "ingot_kinds_register", "ingot_plan_validate",
            "ingot_image_collect", "ingot_device_connected",
            "ingot_appliance_stopped"} <= names


def test_every_hook_is_a_pluggy_hookspec_named_ingot_noun_verb():
    for name, fn in _hooks():
        assert re.fullmatch(r"ingot_[a-z]+_[a-z]+", name), name
        assert hasattr(fn, "ingot_spec"), f"{name} is not marked @hookspec"


def test_every_hook_docstring_names_every_argument_and_the_result():
    for name, fn in _hooks():
        doc = inspect.getdoc(fn) or ""
        assert len(doc.splitlines()) >= 3, f"{name} has no real docstring"
        assert "Called" in doc, f"{name}: the docstring must say when it is called"
        for param in inspect.signature(fn).parameters:
            assert f":param {param}:" in doc, f"{name}: argument {param!r} undocumented"
        if inspect.signature(fn).return_annotation not in (None, "None"):
            assert ":return:" in doc, f"{name}: the result is undocumented"


def test_every_hook_is_fully_typed():
    for name, fn in _hooks():
        sig = inspect.signature(fn)
        assert sig.return_annotation is not inspect.Signature.empty, name
        for param in sig.parameters.values():
            assert param.annotation is not inspect.Parameter.empty, f"{name}.{param.name}"


def test_the_module_table_lists_every_hook():
    for name, _ in _hooks():
        assert name in hookspecs.__doc__, f"{name} missing from the table in the module doc"


def test_a_plugin_with_a_misspelt_hook_is_rejected():
    pm = pluggy.PluginManager("ingot")
    pm.add_hookspecs(hookspecs)

    bad = types.ModuleType("bad")

    @pluggy.HookimplMarker("ingot")
    def ingot_devices_register(extra):  # an argument the spec does not have
        return []

    bad.ingot_devices_register = ingot_devices_register
    try:
        pm.register(bad, name="bad")
    except pluggy.PluginValidationError as exc:
        assert "extra" in str(exc)
    else:
        raise AssertionError("a hook with an unknown argument was accepted")
