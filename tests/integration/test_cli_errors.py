"""Bad input at configure, build and boot: one clear error line (plus a hint), no traceback."""

import textwrap
from pathlib import Path

from tests.conftest import ROOT, Cli, run_image


def write_appliance(base: Path, name: str, manifest: str, app: str | None = None) -> Path:
    folder = base / name
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    (folder / "manifest.py").write_text(textwrap.dedent(manifest))
    (folder / "app.py").write_text(textwrap.dedent(app or """
        class App:
            def __init__(self, keys, log):
                self.keys, self.log = keys, log

            async def start(self):
                self.log.info("running", mode=self.keys.mode)
    """))
    return folder


def write_plugin(site: Path, dist: str, modules: dict[str, str]) -> None:
    """An installed distribution: modules plus a dist-info with ingot entry points."""
    site.mkdir(parents=True, exist_ok=True)
    for mod, source in modules.items():
        (site / f"{mod}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    eps = "".join(f"{m} = {m}\n" for m in modules if not m.endswith("_impl"))
    (info / "entry_points.txt").write_text(f"[ingot.plugins]\n{eps}")


GOOD = """
    from ingot.manifest import Appliance
    from ingot.keys import key
    appliance = Appliance(name="good", main="app:App", doc="test appliance",
                          keys=[key("mode", str, "Mode", "fast", stage="build"),
                                key("count", int, "Count", 1)])
"""


def assert_one_error(res, *fragments):
    assert res.rc != 0
    assert "Traceback" not in res.err + res.out
    errors = [line for line in res.err.splitlines() if line.startswith("ingot: error:")]
    assert len(errors) == 1, res.err
    for frag in fragments:
        assert frag in errors[0], errors[0]
    other = [line for line in res.err.splitlines()
             if line.strip() and not line.startswith(("ingot: error:", "hint:"))]
    assert not other, res.err


def test_unknown_backend(cli, tmp_path):
    app = write_appliance(tmp_path, "good", GOOD)
    res = cli("configure", app, "--sleep", "quantum", check=False)
    assert_one_error(res, "--sleep: unknown sleep backend 'quantum'")
    assert "hint: available: unix" in res.err


def test_unknown_option(cli, tmp_path):
    app = write_appliance(tmp_path, "good", GOOD)
    res = cli("configure", app, "--colour", "red", check=False)
    assert_one_error(res, "unknown option --colour for appliance 'good'")
    assert "--mode" in res.err  # the hint lists what is known


def test_missing_build_key(cli, tmp_path):
    app = write_appliance(tmp_path, "needy", """
        from ingot.manifest import Appliance
        from ingot.keys import key
        appliance = Appliance(name="needy", main="app:App", doc="needs a key",
                              keys=[key("mode", str, "Which mode to bake", stage="build")])
    """)
    res = cli("configure", app, check=False)
    assert_one_error(res, "missing build key --mode")
    assert "hint: give it to 'ingot configure': Which mode to bake" in res.err


def test_wrong_key_type_at_configure_and_at_boot(cli, tmp_path):
    app = write_appliance(tmp_path, "good", GOOD)
    res = cli("configure", app, "--count", "many", check=False)
    assert_one_error(res, "--count (from ingot configure): 'many' is not a valid integer")
    cli("configure", app)
    cli("build", app)
    res = run_image(cli.image("good-unix"), "--count", "many")
    assert res.rc == 2 and "Traceback" not in res.out + res.err
    errors = [line for line in res.out.splitlines() if "level=error" in line]
    assert len(errors) == 1 and "is not a valid integer" in errors[0]
    res = run_image(cli.image("good-unix"), "--mode", "slow")
    assert res.rc == 2 and "--mode is a build key" in res.out


def test_missing_runtime_key_at_boot(cli, tmp_path):
    app = write_appliance(tmp_path, "late", """
        from ingot.manifest import Appliance
        from ingot.keys import key
        appliance = Appliance(name="late", main="app:App", doc="runtime key",
                              keys=[key("mode", str, "The mode")])
    """)
    cli("configure", app)
    cli("build", app)
    res = run_image(cli.image("late-unix"))
    assert res.rc == 2
    assert 'msg="missing required key --mode"' in res.out and "INGOT_MODE" in res.out
    res = run_image(cli.image("late-unix"), env={"INGOT_MODE": "env"})
    assert res.rc == 0 and "mode=env" in res.out


def test_constructor_that_rejects_a_key_value_is_one_line_at_boot(cli, tmp_path):
    app = write_appliance(tmp_path, "picky", GOOD.replace('name="good"', 'name="picky"'), """
        class App:
            def __init__(self, keys, log):
                if keys.count > 3:
                    raise ValueError(f"count {keys.count} is above 3")

            async def start(self):
                pass
    """)
    cli("configure", app)
    cli("build", app)
    res = run_image(cli.image("picky-unix"), "--count", "9")
    assert res.rc == 2 and "Traceback" not in res.out + res.err, res.out + res.err
    errors = [line for line in res.out.splitlines() if "level=error" in line]
    assert len(errors) == 1 and "cannot start: ValueError: count 9 is above 3" in errors[0]
    assert "hint=" in errors[0]
    res = run_image(cli.image("picky-unix"), "--count", "9", "--log-level", "debug")
    assert "msg=traceback" in res.out
    assert run_image(cli.image("picky-unix"), "--count", "2").rc == 0


def test_broken_manifest_syntax(cli, tmp_path):
    app = write_appliance(tmp_path, "broken", "appliance = Appliance(name='x'\n")
    res = cli("configure", app, check=False)
    assert_one_error(res, "manifest.py:1: syntax error")


def test_broken_manifest_exception_names_the_line(cli, tmp_path):
    app = write_appliance(tmp_path, "broken2", """
        from ingot.manifest import Appliance
        x = 1
        appliance = Appliance(name="broken2", main="app:App", doc=undefined_name)
    """)
    res = cli("configure", app, check=False)
    assert_one_error(res, "manifest.py:4: NameError: name 'undefined_name' is not defined")


def test_manifest_without_appliance_and_missing_folder(cli, tmp_path):
    app = write_appliance(tmp_path, "empty", "x = 1\n")
    assert_one_error(cli("configure", app, check=False), "defines no 'appliance = Appliance(...)'")
    assert_one_error(cli("configure", tmp_path / "nowhere", check=False), "no manifest.py there")


def test_manifest_with_a_non_signature_device(cli, tmp_path):
    app = write_appliance(tmp_path, "odd", """
        from ingot.manifest import Appliance, device
        appliance = Appliance(name="odd", main="app:App", doc="odd",
                              devices=[device("thing", dict)])
    """)
    assert_one_error(cli("configure", app, check=False), "'dict' is not a device signature")


def test_plugin_that_fails_to_import(tmp_path):
    site = tmp_path / "site"
    write_plugin(site, "ingot-broken", {"brokenplug": "import does_not_exist_anywhere\n"})
    work = tmp_path / "work"
    work.mkdir()
    cli = Cli(work, env={"PYTHONPATH": str(site)})
    app = write_appliance(tmp_path, "good", GOOD)
    res = cli("configure", app, check=False)
    assert_one_error(res, "plugin 'brokenplug' (entry point of ingot-broken: brokenplug) failed "
                     "to import: ModuleNotFoundError: No module named 'does_not_exist_anywhere'")
    assert "INGOT_DISABLE_PLUGINS=brokenplug" in res.err
    # the two ways around it
    ok = Cli(work, env={"PYTHONPATH": str(site), "INGOT_DISABLE_PLUGINS": "brokenplug"})
    ok("configure", app)
    ok = Cli(work, env={"PYTHONPATH": str(site), "INGOT_DISABLE_PLUGIN_AUTOLOAD": "1"})
    ok("configure", app)


def test_duplicate_backend_names_both_plugins(tmp_path):
    site = tmp_path / "site"
    write_plugin(site, "ingot-dup", {"dupplug": """
        import ingot
        from ingot.registry import DeviceSpec

        @ingot.hookimpl
        def ingot_devices_register():
            return [DeviceSpec("sleep", "unix", "dupplug:connect", "a second unix sleep")]
    """})
    work = tmp_path / "work"
    work.mkdir()
    res = Cli(work, env={"PYTHONPATH": str(site)})("plugins", check=False)
    assert_one_error(res, "backend 'unix' of kind 'sleep' is registered twice: by plugin "
                     "'unix' and by plugin 'dupplug'")


def test_trace_hooks_env_prints_hook_calls(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    res = Cli(work, env={"INGOT_TRACE_HOOKS": "1"})("configure", ROOT / "appliances" / "hello")
    assert "ingot_plan_validate" in res.err


def test_build_without_configure(cli, tmp_path):
    app = write_appliance(tmp_path, "good", GOOD)
    assert_one_error(cli("build", app, check=False), "is not configured")
    assert_one_error(cli("build", check=False), "which appliance? none is configured")


def test_inspect_a_non_image(cli, tmp_path):
    junk = tmp_path / "junk.pyz"
    junk.write_bytes(b"not a zip")
    assert_one_error(cli("inspect", junk, check=False), "is not an Ingot image")


def test_debug_flag_shows_the_traceback(cli, tmp_path):
    app = write_appliance(tmp_path, "good", GOOD)
    res = cli("--debug", "configure", app, "--count", "many", check=False)
    assert res.rc != 0 and "Traceback" in res.err
