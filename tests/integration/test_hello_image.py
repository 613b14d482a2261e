"""The hello appliance end to end: configure, build, run, inspect, rebuild."""

import hashlib
import json
import signal
import subprocess
import sys
import time

from tests.conftest import ROOT, run_image


def _build(cli, *options):
    cli("configure", ROOT / "appliances" / "hello", "--target", "unix", *options)
    return cli("build", ROOT / "appliances" / "hello")


def test_configure_writes_a_readable_plan(cli):
    res = cli("configure", ROOT / "appliances" / "hello", "--target", "unix", "--n", "3")
    plan = (cli.cwd / "_build" / "hello" / "plan.toml").read_text()
    assert 'appliance = "hello"' in plan and 'target = "unix"' in plan
    assert 'factory = "ingot.plugins.unix.clocks:connect_sleep"' in plan
    assert "n = 3" in plan  # a runtime key given at configure becomes the image default
    assert "device sleep" in res.out and "sleep/unix" in res.out


def test_hello_prints_n_lines_and_exits_0(cli):
    _build(cli)
    image = cli.image("hello-unix")
    assert image.is_file()
    res = run_image(image, "--hello", "hi", "--n", "2")
    assert res.rc == 0, res.err + res.out
    lines = [line for line in res.out.splitlines() if "src=hello" in line]
    assert len(lines) == 2 and all("msg=hi" in line for line in lines)
    # one second apart, measured by the appliance's own monotonic clock
    assert "at_ms=0" in lines[0]
    assert int(lines[1].rsplit("at_ms=", 1)[1]) >= 1000


def test_configured_runtime_default_and_environment(cli):
    _build(cli, "--hello", "baked", "--n", "1")
    res = run_image(cli.image("hello-unix"))
    assert res.rc == 0 and "msg=baked" in res.out
    res = run_image(cli.image("hello-unix"), env={"INGOT_HELLO": "from-env"})
    assert "msg=from-env" in res.out and "msg=baked" not in res.out


def test_two_builds_are_byte_identical(cli, tmp_path):
    _build(cli)
    first = cli.image("hello-unix").read_bytes()
    contents1 = (cli.cwd / "images" / "hello-unix.contents.json").read_text()
    cli("build", ROOT / "appliances" / "hello")
    assert cli.image("hello-unix").read_bytes() == first
    assert (cli.cwd / "images" / "hello-unix.contents.json").read_text() == contents1
    # and from another working folder, in another process
    other = tmp_path / "other"
    other.mkdir()
    from tests.conftest import Cli
    cli2 = Cli(other)
    _build(cli2)
    assert hashlib.sha256(cli2.image("hello-unix").read_bytes()).digest() == \
        hashlib.sha256(first).digest()


def test_contents_listing_covers_every_file_with_size_and_hash(cli):
    _build(cli)
    import zipfile
    contents = json.loads((cli.cwd / "images" / "hello-unix.contents.json").read_text())
    with zipfile.ZipFile(cli.image("hello-unix")) as zf:
        names = set(zf.namelist())
        listed = {f["path"]: f for f in contents["files"]}
        assert names - {"_ingot/contents.json"} == set(listed)
        for path, entry in listed.items():
            data = zf.read(path)
            assert entry["size"] == len(data)
            assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    paths = set(listed)
    assert "ingot/appliances/hello/app.py" in paths
    assert "ingot/plugins/unix/clocks.py" in paths
    # not chosen, not there: no kv, no stack, no random device, no TOML writer
    assert not any(p.startswith(("ingot/plugins/kv", "ingot/plugins/stack_socket",
                                 "ingot/plugins/random", "dulwich/", "tomli_w/"))
                   for p in paths)
    assert contents["image_size"] == cli.image("hello-unix").stat().st_size


def test_image_runs_without_site_packages(cli):
    """Sealed: the image carries its third-party modules (pluggy) itself."""
    _build(cli)
    res = run_image(cli.image("hello-unix"), "--n", "1", python=sys.executable)
    assert res.rc == 0
    proc = subprocess.run([sys.executable, "-S", "-I", str(cli.image("hello-unix")),
                           "--n", "1", "--hello", "sealed"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "msg=sealed" in proc.stdout


def test_sigterm_stops_cleanly_with_exit_0(cli):
    _build(cli)
    proc = subprocess.Popen([sys.executable, str(cli.image("hello-unix")), "--n", "100",
                             "--interval", "0.2"], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        for line in proc.stdout:
            if "src=hello" in line or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "msg=stopping signal=SIGTERM" in out
    assert "msg=stopped exit_code=0" in out


def test_inspect_and_help(cli):
    _build(cli)
    res = cli("inspect", cli.image("hello-unix"))
    assert "hello (ingot.appliances.hello.app:Hello), target unix" in res.out
    assert "sleep/unix (plugin unix)" in res.out
    assert "pluggy" in res.out
    data = json.loads(cli("inspect", "--json", cli.image("hello-unix")).out)
    assert data["plan"]["appliance"] == "hello"
    res = run_image(cli.image("hello-unix"), "--help")
    assert res.rc == 0 and "--hello STRING" in res.out and "--n INTEGER" in res.out


def test_ingot_run_passes_keys_to_the_image(cli):
    _build(cli)
    res = cli("run", cli.image("hello-unix"), "--n", "1", "--hello", "via-run")
    assert "msg=via-run" in res.out


def test_ingot_plugins_lists_builtin_backends(cli):
    res = cli("plugins")
    assert "unix  (ingot.plugins.unix, built-in)" in res.out
    assert "sleep/unix [default on unix, vm, qubes, oci]" in res.out
    assert "random/seeded" in res.out
