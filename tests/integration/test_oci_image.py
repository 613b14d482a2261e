"""The DNS appliance's ``oci`` image: built reproducibly, read by ``skopeo``, unpacked by
``umoci`` into a runtime bundle with no shell, run by ``crun`` on a read-only root and
answering ``dig``, stopped cleanly by SIGTERM.

skopeo, umoci and crun are Debian packages that .ci/debian-packages.txt installs; a test
that needs one fails (it does not skip) when it is missing. umoci and crun need root
(CI runs as root).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from ingot.qemu import free_port
from tests.conftest import ROOT, Cli
from tests.integration.test_vm_image import dig

ZONES = ROOT / "configs" / "dns" / "zones"
ENTRYPOINT = ["/usr/bin/python3", "-IS", "/usr/lib/ingot/__main__.py"]
_ids = itertools.count()

pytestmark = pytest.mark.slow


def need(tool: str) -> str:
    path = shutil.which(tool)
    assert path, (f"{tool} is not installed: the oci image tests need skopeo, umoci and crun "
                  "(Debian packages, listed in .ci/debian-packages.txt; apt-get install -y "
                  "skopeo umoci crun)")
    return path


def need_root() -> None:
    assert os.geteuid() == 0, "umoci unpack and crun run need root here (CI runs as root)"


def build_oci(cli: Cli) -> Path:
    cli("configure", ROOT / "appliances" / "dns", "--target", "oci", "--zones-source", ZONES)
    cli("build", ROOT / "appliances" / "dns", timeout=600)
    return cli.cwd / "images" / "dns-oci.tar"


@pytest.fixture(scope="module")
def dns_oci(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_oci(Cli(tmp_path_factory.mktemp("oci")))


@pytest.fixture(scope="module")
def bundle(dns_oci: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The image unpacked by umoci into a runtime bundle (config.json + rootfs/)."""
    umoci = need("umoci")
    need_root()
    work = tmp_path_factory.mktemp("bundle")
    layout = work / "layout"
    layout.mkdir()
    with tarfile.open(dns_oci) as tar:
        tar.extractall(layout, filter="data")
    proc = subprocess.run([umoci, "unpack", "--image", f"{layout}:latest", str(work / "b")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield work / "b"
    shutil.rmtree(work, ignore_errors=True)


def skopeo(*args: str) -> str:
    proc = subprocess.run([need("skopeo"), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _cgroup_wrapper() -> list[str]:
    """What runs crun where the host's cgroups are a v1/v2 hybrid with controllers on the
    v2 side (crun refuses those): a private mount namespace with an empty tmpfs over
    ``/sys/fs/cgroup/unified``, so that crun sees plain cgroup v1. The containers run
    without a cgroup (``--cgroup-manager=disabled``) anyway; elsewhere nothing is wrapped."""
    controllers = Path("/sys/fs/cgroup/unified/cgroup.controllers")
    try:
        hybrid = bool(controllers.read_text().split())
    except OSError:
        hybrid = False
    if not hybrid:
        return []
    unshare = need("unshare")
    return [unshare, "--mount", "--propagation", "private", "sh", "-c",
            'mount -t tmpfs ingot-no-cgroup2 /sys/fs/cgroup/unified && exec "$@"', "sh"]


class Container:
    """``crun run`` of the bundle in the foreground, with the host's network namespace, a
    read-only root and ``args`` after the image's entry point (``env`` added to its
    environment, ``user`` as uid:gid instead of root); its output is collected."""

    def __init__(self, bundle: Path, args: list[str], env: Sequence[str] = (),
                 user: tuple[int, int] | None = None) -> None:
        self.crun = need("crun")
        need_root()
        self.id = f"ingot-test-{os.getpid()}-{next(_ids)}"
        config = json.loads((bundle / "config.json").read_text())
        process = config["process"]
        assert process["args"] == ENTRYPOINT, process["args"]
        process["args"] = ENTRYPOINT + args
        process["terminal"] = False
        process["env"] = process["env"] + list(env)
        if user is not None:
            process["user"] = {"uid": user[0], "gid": user[1]}
        config["root"]["readonly"] = True
        linux = config["linux"]
        linux["namespaces"] = [n for n in linux["namespaces"] if n["type"] != "network"]
        linux.pop("resources", None)  # no cgroup (see _cgroup_wrapper)
        config["mounts"] = [m for m in config["mounts"] if m["type"] != "cgroup"]
        self.config = bundle / f"{self.id}.json"
        self.config.write_text(json.dumps(config, indent=1))
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [*_cgroup_wrapper(), self.crun, "--cgroup-manager=disabled", "run",
             "--bundle", str(bundle), "--config", str(self.config), self.id],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.proc.poll() is not None:
                self.reader.join(5)
                if text in self.output():
                    return
                raise AssertionError(f"the container exited ({self.proc.returncode}) "
                                     f"before {text!r}:\n{self.output()}")
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} in {timeout} s:\n{self.output()}")

    def kill(self, signal: str = "TERM") -> None:
        proc = subprocess.run([self.crun, "kill", self.id, signal], capture_output=True,
                              text=True, timeout=30)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def wait(self, timeout: float = 30) -> int:
        rc = self.proc.wait(timeout)
        self.reader.join(5)
        return rc

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            subprocess.run([self.crun, "kill", self.id, "KILL"], capture_output=True,
                           timeout=30)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        subprocess.run([self.crun, "delete", "-f", self.id], capture_output=True, timeout=30)
        self.config.unlink(missing_ok=True)
        listed = subprocess.run([self.crun, "list", "-q"], capture_output=True, text=True,
                                timeout=30).stdout.split()
        assert self.id not in listed, f"container {self.id} was left behind"


def test_two_builds_give_byte_identical_oci_images(dns_oci, tmp_path):
    again = build_oci(Cli(tmp_path))
    assert again.read_bytes() == dns_oci.read_bytes()
    listing = "dns-oci.contents.json"
    assert (again.parent / listing).read_bytes() == (dns_oci.parent / listing).read_bytes()
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_the_tar_is_an_oci_layout_that_ingot_inspect_reads(dns_oci, tmp_path):
    with tarfile.open(dns_oci) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names[:2] == ["blobs", "blobs/sha256"] and names[-2:] == ["index.json", "oci-layout"]
    assert all((m.uid, m.gid, m.mtime) == (0, 0, 0) for m in members)
    out = Cli(tmp_path)("inspect", dns_oci).out
    assert "target oci" in out and "kv_ro/crunch" in out


def test_skopeo_reads_the_archive_amd64_linux_with_the_entry_point(dns_oci):
    ref = f"oci-archive:{dns_oci}:latest"
    manifest = json.loads(skopeo("inspect", "--raw", ref))
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert [la["mediaType"] for la in manifest["layers"]] == [
        "application/vnd.oci.image.layer.v1.tar+gzip"]
    config = json.loads(skopeo("inspect", "--config", ref))
    assert (config["architecture"], config["os"]) == ("amd64", "linux")
    assert config["config"]["Entrypoint"] == ENTRYPOINT
    assert config["created"] == "1970-01-01T00:00:00Z"
    assert config["config"]["Labels"]["org.opencontainers.image.title"] == "dns-oci"
    assert "User" not in config["config"]  # root: DNS listens on port 53 (see docs/oci.md)
    summary = json.loads(skopeo("inspect", ref))
    assert summary["Architecture"] == "amd64" and len(summary["Layers"]) == 1


def test_umoci_unpacks_a_root_with_python_and_no_shell(bundle):
    rootfs = bundle / "rootfs"
    assert (rootfs / "usr/bin/python3").is_file()
    assert (rootfs / "usr/lib/ingot/__main__.py").is_file()
    assert (rootfs / "usr/lib/ingot/_ingot/plan.json").is_file()
    for absent in ("bin/sh", "usr/bin/sh", "bin/busybox", "init", "dev/console",
                   "usr/bin/apt", "lib/modules"):
        assert not (rootfs / absent).exists(), absent
    programs = [p for p in rootfs.rglob("*") if p.is_file() and not p.is_symlink()
                and p.read_bytes()[:4] == b"\x7fELF"
                and not (p.name.endswith(".so") or ".so." in p.name)]
    assert [str(p.relative_to(rootfs)) for p in programs] == ["usr/bin/python3"]
    config = json.loads((bundle / "config.json").read_text())
    assert config["process"]["args"] == ENTRYPOINT
    assert config["process"]["user"] == {"uid": 0, "gid": 0}


def test_crun_runs_it_read_only_it_answers_dig_and_stops_cleanly_on_sigterm(bundle):
    port = free_port()
    with Container(bundle, ["--host", "127.0.0.1", "--port", str(port)]) as box:
        box.wait_for(f"msg=listening host=127.0.0.1 port={port} zones=2")
        out = dig(port, "www.example.test", "A")
        assert "status: NOERROR" in out and "192.0.2.10" in out, out
        flags = next(line for line in out.splitlines() if line.startswith(";; flags:"))
        assert " aa" in flags, out
        assert "status: NOERROR" in dig(port, "+tcp", "shop.test", "SOA")
        box.kill("TERM")
        assert box.wait(30) == 0, box.output()
        log = box.output()
    assert "src=boot msg=stopping signal=SIGTERM" in log
    assert "src=boot msg=stopped exit_code=0" in log
    assert "Traceback" not in log and "level=error" not in log


def test_a_bad_runtime_key_given_to_the_container_is_one_error_line_and_exit_code_2(bundle):
    with Container(bundle, ["--port", "99999"]) as box:
        rc = box.wait(60)
        log = box.output()
    assert rc == 2, log
    errors = [line for line in log.splitlines() if "level=error" in line]
    assert len(errors) == 1 and "--port" in errors[0], log


def test_keys_come_from_the_environment_too_and_it_runs_as_nobody(bundle):
    port = free_port()
    with Container(bundle, ["--host", "127.0.0.1"], env=[f"INGOT_PORT={port}"],
                   user=(65534, 65534)) as box:
        box.wait_for(f"msg=listening host=127.0.0.1 port={port} zones=2")
        assert "192.0.2.10" in dig(port, "+short", "www.example.test", "A")
        box.kill("TERM")
        assert box.wait(30) == 0, box.output()
    assert "src=boot msg=stopped exit_code=0" in box.output()
