#!/usr/bin/env python3
"""IMAP read paths: the Ingot mail appliance vs a stock Dovecot, on the same Maildir content.

    .venv/bin/python tests/bench/bench_imap.py [--messages 10000] [--rounds 3] [--clients 20]
        [--timeout 900] [--no-drop-caches] [--same-hashes] [--profile out.prof] [--keep]

Both servers on 127.0.0.1, in the same run, without TLS, each over a Maildir holding the
same ``--messages`` generated messages (1-5 KB, about a fifth multipart; a rare word in
about 1% of them), written as files into alice@example.test's ``new/`` before the server
starts (for Ingot ``<mailboxes>/alice@example.test/new/``, for Dovecot its ``mail/<user>/new``).

First an untimed session per server SELECTs INBOX once (both then move new/ to cur/ and
build their state; that first SELECT is reported on its own). Then, with raw sockets (one
command, read up to its tagged OK, bytes counted):

* ``cold``: ``--rounds`` times a freshly started server process (and, as root, the page
  cache dropped before), and its first pass of each operation;
* ``warm``: on one running server, one untimed pass, then ``--rounds`` timed passes.

Operations: ``FETCH 1:* (FLAGS ENVELOPE)``; ``FETCH 1:* (BODY.PEEK[])`` (also MB/s of
response); ``SEARCH TEXT word``; ``--clients`` concurrent client *processes* each doing
login, SELECT INBOX, ``FETCH 1:100 (FLAGS ENVELOPE BODY.PEEK[HEADER])``, logout (wall
time from a start barrier to the last logout, and per-client p50/p99). Each figure is the
median of its rounds. Prints Ingot s, Dovecot s, the ratio Ingot/Dovecot (goal <= 2.0),
and the peak RSS (VmHWM) of the Ingot process. With ``--profile OUT`` the first cold and
the warm Ingot server run under cProfile (OUT.cold.prof, OUT.warm.prof) and their top
functions are printed. Not a test: nothing is asserted.
Needs root for Dovecot (tests/interop/dovecot_peer.py).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from email.utils import formatdate
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.mailkit import PROFILE, peak_rss_kib, profile_path  # noqa: E402

ALICE, PASSWORD = "alice@example.test", "alice-password"
USERS = {ALICE: PASSWORD, "bob@example.test": "bob-password"}
WORD = "zanzibarite"



class Timeout(Exception):
    pass


# ---------------------------------------------------------------- the messages

WORDS = ("the of and to in is that for it as with was on be by this are from at or an "
         "report meeting budget server quarter invoice project schedule review draft team "
         "network release update customer contract weekly notes agenda minutes deadline "
         "storage backup monitor latency policy account holiday travel office lunch").split()
NAMES = ["Alice Liddell", "Bob Builder", "Carol Danvers", "Dave Lister", "Erin Brockovich",
         "Frank Castle", "Grace Hopper", "Heidi Klum", "Ivan Drago", "Judy Hopps"]


def _para(rng: random.Random, n: int, word: bool) -> str:
    words = [rng.choice(WORDS) for _ in range(n)]
    if word:
        words[rng.randrange(len(words))] = WORD
    lines, line = [], []
    for w in words:
        line.append(w)
        if sum(len(x) + 1 for x in line) > 66:
            lines.append(" ".join(line))
            line = []
    lines.append(" ".join(line))
    return "\r\n".join(lines) + "\r\n"


def make_messages(n: int, seed: int = 42) -> list[bytes]:
    rng = random.Random(seed)
    marked = set(rng.sample(range(n), max(1, n // 100)))
    out = []
    for i in range(n):
        target = rng.randint(1000, 5000)
        frm = rng.choice(NAMES)
        subject = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 7)))
        date = formatdate(1767225600 + i * 137, localtime=False)
        head = (f"Return-Path: <{frm.split()[0].lower()}@remote.test>\r\n"
                f"Received: from mx.remote.test (mx.remote.test [192.0.2.{i % 250 + 1}])\r\n"
                f"\tby mail.example.test with ESMTP id {i:08x}; {date}\r\n"
                f"From: \"{frm}\" <{frm.split()[0].lower()}@remote.test>\r\n"
                f"To: Alice <{ALICE}>\r\n"
                + (f"Cc: {rng.choice(NAMES)} <cc{i % 7}@remote.test>\r\n" if i % 3 == 0 else "")
                + f"Subject: {subject.capitalize()} #{i}\r\nDate: {date}\r\n"
                f"Message-ID: <bench.{i}.{seed}@remote.test>\r\n"
                + (f"In-Reply-To: <bench.{i - 1}.{seed}@remote.test>\r\n" if i % 4 == 1 else "")
                + "MIME-Version: 1.0\r\n")
        multipart = rng.random() < 0.2
        room = max(200, target - len(head) - 200)
        if not multipart:
            body = _para(rng, room // 7, i in marked)
            raw = head + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body
        else:
            b = f"=_bench_{i}_{seed}"
            text = _para(rng, room // 14, i in marked)
            if rng.random() < 0.5:
                second = ("Content-Type: text/html; charset=utf-8\r\n\r\n<html><body><p>"
                          + _para(rng, room // 16, False) + "</p></body></html>\r\n")
                kind = "alternative"
            else:
                blob = bytes(rng.getrandbits(8) for _ in range(room // 3))
                import base64

                enc = base64.encodebytes(blob).decode().replace("\n", "\r\n")
                second = (f"Content-Type: application/octet-stream; name=\"file{i}.bin\"\r\n"
                          f"Content-Disposition: attachment; filename=\"file{i}.bin\"\r\n"
                          "Content-Transfer-Encoding: base64\r\n\r\n" + enc)
                kind = "mixed"
            raw = (head + f"Content-Type: multipart/{kind}; boundary=\"{b}\"\r\n\r\n"
                   "This is a multi-part message in MIME format.\r\n\r\n"
                   f"--{b}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
                   f"--{b}\r\n{second}\r\n--{b}--\r\n")
        out.append(raw.encode())
    return out


def write_maildir(md: Path, msgs: list[bytes], own=None) -> None:
    for sub in ("new", "cur", "tmp"):
        (md / sub).mkdir(parents=True, exist_ok=True)
        if own:
            own(md / sub)
    base = 1767225600
    for i, raw in enumerate(msgs):
        p = md / "new" / f"{base + i}.M{i}P1Q{i}.bench"
        p.write_bytes(raw)
        os.utime(p, (base + i, base + i))
        if own:
            own(p)


# ---------------------------------------------------------------- a raw IMAP client

class Raw:
    def __init__(self, port: int, timeout: float = 300) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.n = 0
        self.line()

    def line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return out
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("closed")
            self.buf += data

    def cmd(self, text: str) -> tuple[int, int, list[bytes]]:
        """Send a command, read to its tagged reply: (bytes received, untagged count, the
        untagged lines starting with '* SEARCH'/'* n EXISTS' (small ones))."""
        self.n += 1
        tag = b"b%d" % self.n
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        total, count, keep = 0, 0, []
        buf = self.buf
        pos = 0
        while True:
            i = buf.find(b"\r\n", pos)
            if i < 0:
                del buf[:pos]
                pos = 0
                data = self.sock.recv(1 << 20)
                if not data:
                    raise ConnectionError("closed")
                total += len(data)
                buf += data
                continue
            line = bytes(buf[pos:i])
            pos = i + 2
            if line.endswith(b"}"):
                m = re.search(rb"\{(\d+)\}$", line)
                if m:
                    need = int(m.group(1))
                    while len(buf) - pos < need:
                        del buf[:pos]
                        pos = 0
                        data = self.sock.recv(1 << 20)
                        if not data:
                            raise ConnectionError("closed")
                        total += len(data)
                        buf += data
                    pos += need
                    continue     # the rest of the response line follows the literal
            if line.startswith(tag + b" "):
                del buf[:pos]
                if not line.startswith(tag + b" OK"):
                    raise RuntimeError(f"{text}: {line!r}")
                return total, count, keep
            if line.startswith(b"* "):
                count += 1
                if line.startswith(b"* SEARCH") or line.endswith(b"EXISTS"):
                    keep.append(line)

    def login(self) -> None:
        self.cmd(f'LOGIN {ALICE} "{PASSWORD}"')

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def wait_imap(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(512).startswith(b"* OK"):
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answers * OK on {port}")


# ---------------------------------------------------------------- concurrent clients

def _client(port: int, barrier, results) -> None:
    try:
        c = Raw(port, timeout=120)
        barrier.wait()
        t0 = time.perf_counter()
        c.login()
        c.cmd("SELECT INBOX")
        c.cmd("FETCH 1:100 (FLAGS ENVELOPE BODY.PEEK[HEADER])")
        c.sock.sendall(b"z LOGOUT\r\n")
        while not c.line().startswith(b"z "):
            pass
        results.put(("ok", time.perf_counter() - t0, time.perf_counter()))
        c.close()
    except Exception as exc:  # noqa: BLE001 - reported
        try:
            barrier.abort()
        except Exception:  # noqa: BLE001
            pass
        results.put(("error", repr(exc), 0.0))


def concurrent(port: int, clients: int) -> dict:
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(clients + 1)
    results = ctx.Queue()
    procs = [ctx.Process(target=_client, args=(port, barrier, results)) for _ in range(clients)]
    for p in procs:
        p.start()
    try:
        barrier.wait(timeout=60)
        t0 = time.perf_counter()
        got = [results.get(timeout=300) for _ in procs]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
    errors = [g[1] for g in got if g[0] != "ok"]
    if errors:
        raise RuntimeError(f"concurrent clients failed: {errors[:3]}")
    lat = sorted(g[1] for g in got)
    return {"wall": max(g[2] for g in got) - t0, "p50": pct(lat, 0.5), "p99": pct(lat, 0.99)}


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


# ---------------------------------------------------------------- one pass

def one_pass(port: int, clients: int, expect: int) -> dict:
    c = Raw(port)
    try:
        t0 = time.perf_counter()
        c.login()
        r = {"login": time.perf_counter() - t0}
        t0 = time.perf_counter()
        _, _, keep = c.cmd("SELECT INBOX")
        r["select"] = time.perf_counter() - t0
        exists = [int(k.split()[1]) for k in keep if k.endswith(b"EXISTS")]
        if exists != [expect]:
            raise RuntimeError(f"SELECT INBOX: {exists} EXISTS, expected {expect}")
        t0 = time.perf_counter()
        _, n, _ = c.cmd("FETCH 1:* (FLAGS ENVELOPE)")
        r["envelope"] = time.perf_counter() - t0
        if n != expect:
            raise RuntimeError(f"FETCH ENVELOPE: {n} responses")
        t0 = time.perf_counter()
        size, n, _ = c.cmd("FETCH 1:* (BODY.PEEK[])")
        r["body"] = time.perf_counter() - t0
        r["body_mb"] = size / 1e6
        t0 = time.perf_counter()
        _, _, keep = c.cmd(f'SEARCH TEXT "{WORD}"')
        r["search"] = time.perf_counter() - t0
        r["hits"] = sum(len(k.split()) - 2 for k in keep if k.startswith(b"* SEARCH"))
    finally:
        c.close()
    conc = concurrent(port, clients)
    r.update({"conc_wall": conc["wall"], "conc_p50": conc["p50"], "conc_p99": conc["p99"]})
    return r


def median_of(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


# ---------------------------------------------------------------- servers

def drop_caches(enabled: bool) -> None:
    if not enabled or os.geteuid() != 0:
        return
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass


class IngotTarget:
    name = "ingot"

    def __init__(self, work: Path, images: dict, dns_port: int, profile: str | None) -> None:
        self.root = work / "ingot"
        self.images, self.dns_port, self.profile = images, dns_port, profile
        self.server = None
        self.prof_runs = 0

    def prepare(self, msgs: list[bytes]) -> None:
        write_maildir(self.root / "mailboxes" / ALICE, msgs)

    def start(self, profile: str = "") -> None:
        import tests.interop.mail_harness as harness

        image = self.images["mail"]
        extra = ["--imap-plaintext", "true", "--verify", "false"]
        if profile and self.profile:
            wrapper = self.root.parent / "profile_wrapper.py"
            wrapper.write_text(PROFILE)
            out = profile_path(self.profile, profile)
            real = harness.subprocess.Popen

            def popen(argv, *a, **kw):
                if len(argv) > 1 and argv[1] == str(image):
                    argv = [argv[0], str(wrapper), str(out), *argv[1:]]
                return real(argv, *a, **kw)

            harness.subprocess.Popen = popen
            try:
                self.server = harness.MailServer(image, self.root, self.dns_port, *extra)
            finally:
                harness.subprocess.Popen = real
        else:
            self.server = harness.MailServer(image, self.root, self.dns_port, *extra)
        self.port = self.server.ports["imap"]
        self.pid = self.server.proc.pid
        wait_imap(self.port)

    def stop(self) -> None:
        if self.server is not None:
            self.hwm = max(peak_rss_kib(self.pid) or 0, getattr(self, "hwm", 0) or 0) or None
            self.server.stop()    # SIGTERM to its PID, then wait (SIGKILL after 30 s)
            self.server = None


class DovecotTarget:
    name = "dovecot"

    def __init__(self, work: Path, same_hashes: bool = False) -> None:
        from tests.interop.dovecot_peer import Dovecot, free_port

        class Peer(Dovecot):
            def _conf(self) -> str:
                # its default of 10 IMAP connections per user and IP refuses 20 clients
                return super()._conf() + ("protocol imap {\n"
                                          "  mail_max_userip_connections = 200\n}\n")

        self.same_hashes = same_hashes
        self.root = work / "dovecot"
        self.root.mkdir(parents=True, exist_ok=True)
        self.peer = Peer(self.root, free_port(), USERS)
        self.port = self.peer.port
        self.pid = None

    def prepare(self, msgs: list[bytes]) -> None:
        md = self.peer.maildir(ALICE)
        write_maildir(md, msgs, own=self.peer._own)

    def start(self, profile: str = "") -> None:
        self.peer.start()
        if self.same_hashes:
            # the hashes Ingot checks (configs/mail users, argon2id), instead of {PLAIN}
            users = (ROOT / "configs" / "mail" / "config" / "users").read_text().splitlines()
            rows = [u.split() for u in users if u.strip() and not u.startswith("#")]
            path = self.root / "passwd"
            path.write_text("".join(f"{u}:{{ARGON2ID}}{h}::::::\n" for u, h in rows))
        self.pid = self.peer.proc.pid
        wait_imap(self.port)

    def stop(self) -> None:
        self.peer.stop()         # SIGTERM to its PID (dovecot -F), SIGKILL after 10 s


# ---------------------------------------------------------------- main

ROWS = [
    ("first SELECT INBOX (index build)", "first_select", None),
    ("LOGIN (one client)", "login", None),
    ("SELECT INBOX", "select", None),
    ("FETCH 1:* (FLAGS ENVELOPE)", "envelope", None),
    ("FETCH 1:* (BODY.PEEK[])", "body", "body_mb"),
    (f'SEARCH TEXT "{WORD}"', "search", None),
    ("{c} clients: total wall", "conc_wall", None),
    ("{c} clients: per-client p50", "conc_p50", None),
    ("{c} clients: per-client p99", "conc_p99", None),
]


def report(results: dict, args, hits: dict, rss: int | None, body_mb: float) -> None:
    print(f"\n{args.messages} messages ({body_mb:.1f} MB of BODY[] responses), "
          f"median of {args.rounds} round(s); cold = first pass of a fresh server process"
          + ("" if args.no_drop_caches or os.geteuid() != 0 else " after drop_caches")
          + "; warm = after one untimed pass")
    print("Dovecot passwords: " + ("argon2id, the same hashes as Ingot" if args.same_hashes
          else "{PLAIN} (Ingot checks argon2id hashes: LOGIN rows are not like for like)"))
    print(f"SEARCH hits: ingot {hits.get('ingot')}, dovecot {hits.get('dovecot')}")
    head = f"{'operation':<40}{'':>6}{'Ingot s':>10}{'Dovecot s':>11}{'ratio':>8}  note"
    print(head)
    print("-" * len(head))
    for phase in ("cold", "warm"):
        ing, dov = results["ingot"].get(phase), results["dovecot"].get(phase)
        if not ing or not dov:
            continue
        for label, key, mb in ROWS:
            if key not in ing or key not in dov:
                continue
            a, b = ing[key], dov[key]
            ratio = a / b if b else float("inf")
            note = "" if ratio <= 2.0 else "> 2x"
            if mb:
                note = (f"{ing[mb] / a:.1f} vs {dov[mb] / b:.1f} MB/s " + note).strip()
            print(f"{label.format(c=args.clients):<40}{phase:>6}{a:>10.3f}{b:>11.3f}"
                  f"{ratio:>8.2f}  {note}")
    print(f"\nIngot peak RSS (VmHWM): {rss / 1024:.1f} MiB" if rss else "\nIngot peak RSS: n/a")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=900, help="whole run, seconds")
    ap.add_argument("--no-drop-caches", action="store_true")
    ap.add_argument("--profile", help="run Ingot's first cold and its warm server under cProfile")
    ap.add_argument("--same-hashes", action="store_true",
                    help="give Dovecot the argon2id hashes Ingot checks (default: its {PLAIN})")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()

    from tests.interop import dovecot_peer

    why = dovecot_peer.available()
    if why:
        print(f"cannot run: {why}")
        return 2

    def alarm(*_):
        raise Timeout(f"over --timeout {args.timeout:.0f} s")

    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(int(args.timeout))

    work = Path(tempfile.mkdtemp(prefix="bench-imap-"))
    os.chmod(work, 0o755)    # Dovecot's mail user must reach its folder
    from tests.interop.mail_harness import Dns, build_images, write_zones

    dns = None
    targets: list = []
    results: dict = {"ingot": {}, "dovecot": {}}
    hits: dict = {}
    rss = None
    body_mb = 0.0
    try:
        print("building the mail and DNS images ...", flush=True)
        (work / "build").mkdir()
        images = build_images(work / "build")
        dns = Dns(images["dns"], write_zones(work / "zones"))
        msgs = make_messages(args.messages)
        print(f"{len(msgs)} messages, {sum(map(len, msgs)) / 1e6:.1f} MB, "
              f"{sum(WORD.encode() in m for m in msgs)} with {WORD!r}", flush=True)
        targets = [IngotTarget(work, images, dns.port, args.profile), DovecotTarget(work, args.same_hashes)]
        for t in targets:
            t.prepare(msgs)
        for t in targets:
            print(f"{t.name}: first start and SELECT ...", flush=True)
            t.start()
            c = Raw(t.port)
            c.login()
            t0 = time.perf_counter()
            c.cmd("SELECT INBOX")
            first = time.perf_counter() - t0
            c.close()
            t.stop()
            cold = []
            for k in range(args.rounds):
                drop_caches(not args.no_drop_caches)
                t.start(profile="cold" if k == 0 else "")
                r = one_pass(t.port, args.clients, args.messages)
                print(f"  {t.name} cold {k + 1}: " + ", ".join(
                    f"{key} {v:.3f}" for key, v in r.items()), flush=True)
                cold.append(r)
                t.stop()
            results[t.name]["cold"] = dict(median_of(cold), first_select=first)
            t.start(profile="warm")
            one_pass(t.port, args.clients, args.messages)      # untimed
            warm = []
            for k in range(args.rounds):
                r = one_pass(t.port, args.clients, args.messages)
                print(f"  {t.name} warm {k + 1}: " + ", ".join(
                    f"{key} {v:.3f}" for key, v in r.items()), flush=True)
                warm.append(r)
            results[t.name]["warm"] = median_of(warm)
            hits[t.name] = int(warm[0]["hits"])
            body_mb = warm[0]["body_mb"]
            t.stop()
        rss = getattr(targets[0], "hwm", None)
    except Timeout as exc:
        print(f"stopped: {exc}")
    except Exception as exc:  # noqa: BLE001 - reported with what was measured so far
        import traceback

        traceback.print_exc()
        print(f"stopped: {exc!r}")
    finally:
        signal.alarm(0)
        for t in targets:
            try:
                t.stop()
            except Exception as exc:  # noqa: BLE001
                print(f"stopping {t.name}: {exc!r}")
        if dns is not None:
            dns.stop()
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report(results, args, hits, rss, body_mb)
    if args.profile:
        import pstats

        for phase in ("cold", "warm"):
            out = profile_path(args.profile, phase)
            if not out.exists():
                continue
            for key in ("tottime", "cumulative"):
                print(f"\ncProfile of the Ingot server, {phase} (first cold round / warm "
                      f"rounds; main thread only), {out}, top 25 by {key}:")
                pstats.Stats(str(out)).sort_stats(key).print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
