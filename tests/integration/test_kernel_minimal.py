"""The ``minimal`` kernel: its committed fragment, its cache key, and a real build
(minutes the first time, then cached) booted under QEMU."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from ingot import kernel_minimal as km
from ingot.errors import BuildError
from tests.conftest import ROOT

ISSUE_SYMBOLS = """
64BIT PRINTK TTY SERIAL_8250 SERIAL_8250_CONSOLE BLK_DEV_INITRD RD_GZIP BINFMT_ELF
BINFMT_SCRIPT PROC_FS SYSFS DEVTMPFS DEVTMPFS_MOUNT SHMEM TMPFS NET INET IPV6 PACKET UNIX
PCI VIRTIO VIRTIO_PCI VIRTIO_NET HW_RANDOM HW_RANDOM_VIRTIO TUN NETFILTER NF_TABLES
NF_TABLES_INET NF_TABLES_IPV4 NF_TABLES_IPV6 NFT_CT NFT_NAT NFT_MASQ NFT_REJECT NF_NAT
NF_CONNTRACK IP_ADVANCED_ROUTER SECCOMP SECCOMP_FILTER FUTEX EPOLL EVENTFD TIMERFD
MULTIUSER POSIX_TIMERS FILE_LOCKING ADVISE_SYSCALLS ACPI ACPI_BUTTON INPUT INPUT_EVDEV
HYPERVISOR_GUEST PARAVIRT XEN XEN_PVH XEN_NETDEV_FRONTEND KVM_GUEST PROC_SYSCTL
""".split()


@pytest.fixture(scope="module")
def wanted() -> dict[str, str]:
    return km.parse_fragment(km.FRAGMENT.read_text())


# ------------------------------------------------------------ always run


def test_the_fragment_is_committed_next_to_the_module_and_parses(wanted):
    assert km.FRAGMENT.parent == Path(km.__file__).parent
    assert len(wanted) > 50
    assert set(wanted.values()) == {"y", "n"}


def test_every_symbol_the_issue_names_is_built_in(wanted):
    missing = [s for s in ISSUE_SYMBOLS if wanted.get(s) != "y"]
    assert missing == []


def test_no_modules_and_gzip_is_the_only_initramfs_decompressor(wanted):
    assert wanted["MODULES"] == "n"
    for other in ("BZIP2", "LZMA", "XZ", "LZO", "LZ4", "ZSTD"):
        assert wanted[f"RD_{other}"] == "n"
    for unneeded in ("VIRTIO_CONSOLE", "BLK_DEV", "VETH"):
        assert wanted[unneeded] == "n"


def test_the_parser_refuses_modules_values_and_repeats():
    assert km.parse_fragment("# comment\n\nCONFIG_A=y\n# CONFIG_B is not set\n") == \
        {"A": "y", "B": "n"}
    for bad in ("CONFIG_A=m\n", "CONFIG_A=\"x\"\n", "A=y\n", "CONFIG_A=y\nCONFIG_A=y\n"):
        with pytest.raises(BuildError):
            km.parse_fragment(bad)


def test_symbols_that_did_not_stick_are_named():
    final = km.read_config("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_D=y\n")
    bad = km.unstuck({"A": "y", "B": "y", "C": "y", "D": "n", "E": "n"}, final)
    assert [line.split()[0] for line in bad] == ["CONFIG_B", "CONFIG_C", "CONFIG_D=y"]
    assert "unmet dependency" in bad[0] and "unknown symbol" in bad[1]


def test_the_cache_key_follows_the_fragment_the_source_and_the_recipe(monkeypatch):
    tarball = Path("/usr/src/linux-source-6.1.tar.xz")
    fragment = km.FRAGMENT.read_bytes()
    key = km.config_hash(fragment, tarball, size=1000)
    assert key == km.config_hash(fragment, tarball, size=1000)
    assert len(key) == 64
    assert key != km.config_hash(fragment + b"CONFIG_X=y\n", tarball, size=1000)
    assert key != km.config_hash(fragment.replace(b"CONFIG_TUN=y", b"# CONFIG_TUN is not set"),
                                 tarball, size=1000)
    assert key != km.config_hash(fragment, tarball, size=1001)
    assert key != km.config_hash(fragment, tarball.with_name("linux-source-6.2.tar.xz"),
                                 size=1000)
    monkeypatch.setattr(km, "RECIPE_VERSION", km.RECIPE_VERSION + "+1")
    assert key != km.config_hash(fragment, tarball, size=1000)


def test_the_cache_is_outside_the_repository(monkeypatch, tmp_path):
    monkeypatch.delenv("INGOT_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    default = km.default_cache_dir()
    assert default == Path(os.path.expanduser("~/.cache/ingot"))
    assert ROOT.resolve() not in default.resolve().parents
    path = km.kernel_path(default, "ab" * 32)
    assert path == default / "kernels" / f"minimal-{'ab' * 8}" / "vmlinuz"
    assert ROOT.resolve() not in path.resolve().parents
    monkeypatch.setenv("INGOT_CACHE", str(tmp_path))
    assert km.default_cache_dir() == tmp_path


def test_a_missing_source_package_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(km, "SOURCE_TARBALL", tmp_path / "linux-source-6.1.tar.xz")
    with pytest.raises(BuildError) as err:
        km.build_minimal(cache_dir=tmp_path / "cache", install=False, progress=lambda _m: None)
    assert "linux-source-6.1.tar.xz" in str(err.value)
    assert err.value.hint is not None
    assert ("apt-get install linux-source-6.1 build-essential flex bison bc libelf-dev "
            "libssl-dev") in err.value.hint
    assert not (tmp_path / "cache" / "kernels").exists()


def test_a_cached_kernel_is_returned_without_building(monkeypatch, tmp_path):
    if not km.SOURCE_TARBALL.is_file():
        pytest.skip(f"{km.SOURCE_TARBALL} is not installed")
    key = km.config_hash(km.FRAGMENT.read_bytes(), km.SOURCE_TARBALL)
    target = km.kernel_path(tmp_path, key)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"cached")

    def no_build(*_a, **_k):
        raise AssertionError("built although cached")

    monkeypatch.setattr(km, "_run", no_build)
    monkeypatch.setattr(km, "_missing", lambda: [])
    assert km.build_minimal(cache_dir=tmp_path, progress=lambda _m: None) == target


# ------------------------------------------------------------ a real build (marker kernel_minimal)

INIT_C = r"""
#include <stdio.h>
#include <unistd.h>
#include <sys/reboot.h>
int main(void) {
    printf("init ok\n");
    fflush(stdout);
    sync();
    reboot(RB_POWER_OFF);
    return 0;
}
"""


def boot(vmlinuz: Path, initrd: Path | None, until: str, timeout: float = 120) -> tuple[str, float]:
    """Serial console output of a QEMU (software emulation) boot, and the seconds to ``until``."""
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-m", "96", "-nographic", "-no-reboot",
           "-kernel", str(vmlinuz), "-append", "console=ttyS0 panic=-1",
           "-device", "virtio-rng-pci"]
    if initrd is not None:
        cmd += ["-initrd", str(initrd)]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    out = b""
    seen = None
    try:
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        while time.monotonic() - started < timeout:
            chunk = proc.stdout.read() or b""
            out += chunk
            if seen is None and until.encode() in out:
                seen = time.monotonic() - started
            if proc.poll() is not None:
                out += proc.stdout.read() or b""
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    text = out.decode(errors="replace")
    assert seen is not None, f"no {until!r} within {timeout} s:\n{text[-3000:]}"
    return text, seen


@pytest.fixture(scope="module")
def minimal_kernel() -> Path:
    return km.build_minimal(progress=print)


@pytest.mark.kernel_minimal
@pytest.mark.timeout(2400)  # the first one builds the kernel (fixture setup counts)
def test_the_built_kernel_is_small_and_had_every_symbol(minimal_kernel):
    assert minimal_kernel.is_file()
    assert km.default_cache_dir() in minimal_kernel.parents
    assert minimal_kernel.stat().st_size < 4_000_000
    final = km.read_config((minimal_kernel.parent / "config").read_text())
    assert km.unstuck(km.parse_fragment(km.FRAGMENT.read_text()), final) == []
    assert km.build_minimal(progress=print) == minimal_kernel  # now from the cache


@pytest.mark.kernel_minimal
@pytest.mark.timeout(2400)
def test_it_boots_to_the_init_stage_without_an_initramfs(minimal_kernel):
    if shutil.which("qemu-system-x86_64") is None:
        pytest.fail("qemu-system-x86_64 is not installed (Debian qemu-system-x86)")
    text, _ = boot(minimal_kernel, None, "Kernel panic - not syncing")
    assert "VFS: Unable to mount root fs" in text or "No working init found" in text, text


@pytest.mark.kernel_minimal
@pytest.mark.timeout(2400)
def test_it_runs_a_static_init_from_a_gzip_initramfs_and_powers_off(minimal_kernel, tmp_path):
    for tool in ("gcc", "cpio", "gzip", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed")
    (tmp_path / "init.c").write_text(INIT_C)
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["gcc", "-static", "-Os", "-o", str(root / "init"), str(tmp_path / "init.c")],
                   check=True)
    cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], input=b"init\n", cwd=root,
                          capture_output=True, check=True).stdout
    initrd = tmp_path / "initramfs.gz"
    initrd.write_bytes(subprocess.run(["gzip", "-9n"], input=cpio, capture_output=True,
                                      check=True).stdout)
    text, seconds = boot(minimal_kernel, initrd, "init ok")
    print(f"minimal kernel: 'init ok' {seconds:.1f} s after QEMU started (TCG)")
    assert "Kernel panic" not in text
    assert "reboot: Power down" in text, text[-2000:]
