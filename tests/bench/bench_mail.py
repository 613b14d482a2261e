#!/usr/bin/env python3
"""SMTP messages per second accepted: the Ingot mail appliance vs aiosmtpd's Sink vs Postfix.

    .venv/bin/python tests/bench/bench_mail.py [--messages 2000] [--clients 10]
        [--only ingot,ingot-verify,ingot-dkim,sink,postfix] [--repeat 1] [--timeout 120]
        [--interleave] [--profile out.prof]

All servers on 127.0.0.1, in the same run, started one after the other (with
``--interleave``: all started first, their rounds taken in turn):

* ``ingot``: the mail appliance's unix image (MX port), ``--verify false``;
  mail for alice@/bob@example.test, delivered durably to Maildirs (the file
  and its folder fsynced before the 250);
* ``ingot-verify``: the same with SPF, DKIM and DMARC checks on (lookups go
  to the DNS appliance serving the test zones); the messages are unsigned,
  so DKIM finds no signature;
* ``ingot-dkim``: verification on and every message DKIM-signed (with the
  example.test key, signed in the clients before the start), so the server
  also fetches the key and checks an RSA signature;
* ``sink``: ``python -m aiosmtpd -c aiosmtpd.handlers.Sink`` (accepts and
  drops, no disk);
* ``postfix``: a private stock Postfix (tests/interop/postfix_peer.py) that
  accepts mail for remote.test and discards it (its queue file is still
  written and fsynced by cleanup before the 250).

Load: ``--clients`` processes, each with ONE SMTP connection (EHLO once, then
MAIL/RCPT/DATA per message), sending its share of ``--messages`` small
(~590-byte) messages. Time runs from a start barrier (all clients connected)
to the last 250. Prints msg/s, per-message latency p50/p99, errors, ratios
to Postfix and Sink, the server's peak RSS (VmHWM), and for Ingot how many
files its Maildirs hold against the messages accepted. With ``--profile``
the ingot rows run under cProfile and their top functions are printed.
Needs root for Postfix. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from email.utils import formatdate, make_msgid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.mailkit import PROFILE, peak_rss_kib, profile_path  # noqa: E402
ALL = "ingot,ingot-verify,ingot-dkim,sink,postfix"



# ---------------------------------------------------------------- the clients


def make_message(i: int, sender: str, rcpt: str) -> bytes:
    body = "".join(f"Line {n} of a small benchmark message, number {i}.\r\n" for n in range(6))
    text = (f"From: Bench <{sender}>\r\nTo: <{rcpt}>\r\nSubject: bench message {i}\r\n"
            f"Date: {formatdate(localtime=False)}\r\n"
            f"Message-ID: {make_msgid(domain=sender.split('@')[1])}\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n" + body)
    return text.encode()


def client(idx: int, port: int, sender: str, rcpts: list[str], count: int, dkim_key: str,
           barrier, results, deadline_s: float) -> None:
    """One process, one connection: ``count`` messages, then one result on ``results``."""
    msgs = []
    for n in range(count):
        rcpt = rcpts[(idx + n) % len(rcpts)]
        raw = make_message(idx * 1_000_000 + n, sender, rcpt)
        if dkim_key:
            import dkim

            raw = dkim.sign(raw, b"ingot", sender.split("@")[1].encode(),
                            Path(dkim_key).read_bytes(),
                            include_headers=[b"from", b"to", b"subject", b"date",
                                             b"message-id"]) + raw
        msgs.append((rcpt, raw))
    lat: list[float] = []
    errors, first_error, last_ok = 0, "", 0.0
    try:
        smtp = smtplib.SMTP("127.0.0.1", port, local_hostname="client.remote.test", timeout=30)
        smtp.ehlo()
    except Exception as e:  # noqa: BLE001 - reported, not raised
        barrier.wait()
        results.put((idx, [], count, f"connect: {e!r}", 0.0))
        return
    barrier.wait()
    deadline = time.monotonic() + deadline_s
    for rcpt, raw in msgs:
        if time.monotonic() > deadline:
            errors += 1
            first_error = first_error or "timeout"
            continue
        t0 = time.monotonic()
        try:
            refused = smtp.sendmail(sender, [rcpt], raw)
            t1 = time.monotonic()
            if refused:
                errors += 1
                first_error = first_error or f"refused {refused!r}"
            else:
                lat.append(t1 - t0)
                last_ok = t1
        except smtplib.SMTPServerDisconnected as e:
            errors += 1
            first_error = first_error or repr(e)
            try:
                smtp = smtplib.SMTP("127.0.0.1", port, local_hostname="client.remote.test",
                                    timeout=30)
                smtp.ehlo()
            except Exception:  # noqa: BLE001
                break
        except (smtplib.SMTPException, OSError) as e:
            errors += 1
            first_error = first_error or repr(e)
            try:
                smtp.rset()
            except Exception:  # noqa: BLE001
                pass
    try:
        smtp.quit()
    except Exception:  # noqa: BLE001
        pass
    errors = count - len(lat)  # every message without its 250, tried or not
    results.put((idx, lat, errors, first_error, last_ok))


def load(port: int, sender: str, rcpts: list[str], messages: int, clients: int, timeout: float,
         dkim_key: str = "") -> dict:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(clients + 1)
    results = ctx.Queue()
    shares = [messages // clients + (1 if i < messages % clients else 0) for i in range(clients)]
    procs = [ctx.Process(target=client, args=(i, port, sender, rcpts, shares[i], dkim_key,
                                              barrier, results, timeout), daemon=True)
             for i in range(clients)]
    for p in procs:
        p.start()
    got = []
    try:
        barrier.wait(timeout=120)
        t0 = time.monotonic()
        end_by = t0 + timeout + 40
        while len(got) < clients and time.monotonic() < end_by:
            try:
                got.append(results.get(timeout=max(0.1, end_by - time.monotonic())))
            except Exception:  # noqa: BLE001 - queue.Empty
                break
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
                p.join(timeout=5)
    lat = sorted(x for r in got for x in r[1])
    errors = sum(r[2] for r in got) + sum(shares[i] for i in range(clients)
                                          if i not in {r[0] for r in got})
    last = max((r[4] for r in got if r[4]), default=t0)
    secs = last - t0
    first = next((r[3] for r in got if r[3]), "")

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")

    return {"msgs": len(lat), "seconds": secs, "rate": len(lat) / secs if secs > 0 else 0.0,
            "p50": pct(0.50), "p99": pct(0.99), "errors": errors, "first_error": first}


# ---------------------------------------------------------------- the servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_banner(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(512).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answers 220 on port {port}")


def maildir_count(mailboxes: Path) -> int:
    return sum(1 for user in mailboxes.iterdir() if user.is_dir()
               for sub in ("new", "cur") if (user / sub).is_dir()
               for f in (user / sub).iterdir() if f.is_file()) if mailboxes.is_dir() else 0


def auth_results(mailboxes: Path) -> str:
    """The Authentication-Results header of one stored message (unfolded), or ''."""
    for f in sorted(mailboxes.glob("*/new/*"))[:1]:
        head = f.read_bytes().split(b"\r\n\r\n", 1)[0].decode(errors="replace")
        for field in head.replace("\r\n ", " ").replace("\r\n\t", " ").split("\r\n"):
            if field.lower().startswith("authentication-results:"):
                return " ".join(field.split())
    return ""


def stop_proc(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, TypeError):
        return float("nan")


def one_round(t: "Target", args, k: int) -> dict:
    cpu0, dns0 = cpu_seconds(t.pid), cpu_seconds(t.dns_pid)
    r = load(t.port, t.sender, t.rcpts, args.messages, args.clients, args.timeout, t.dkim_key)
    r["cpu"], r["dns_cpu"] = cpu_seconds(t.pid) - cpu0, cpu_seconds(t.dns_pid) - dns0
    print(f"  {t.name} round {k + 1}: {r['msgs']} msgs in {r['seconds']:.2f} s = "
          f"{r['rate']:.0f} msg/s, p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, "
          f"errors {r['errors']}" + (f", server CPU {r['cpu']:.2f} s" if t.pid else "")
          + (f" (+ DNS appliance {r['dns_cpu']:.2f} s)" if t.dns_pid else "")
          + (f" (first: {r['first_error']})" if r["errors"] else ""),
          flush=True)
    return r


def summary(t: "Target", runs: list[dict]) -> dict:
    best = sorted(runs, key=lambda r: r["rate"])[len(runs) // 2]  # the median round
    best = dict(best, accepted=sum(r["msgs"] for r in runs))
    if t.pid:
        best["rss"] = peak_rss_kib(t.pid)
    if t.mailboxes is not None:
        time.sleep(0.2)
        best["stored"] = maildir_count(t.mailboxes)
        best["auth"] = auth_results(t.mailboxes)
    return best


class Target:
    """One server under test: started, measured, stopped (by PID, or ``postfix stop``)."""

    def __init__(self, name: str, work: Path, args, env: dict) -> None:
        self.name, self.work, self.args, self.env = name, work, args, env
        self.port = 0
        self.pid: int | None = None
        self.dns_pid: int | None = None
        self.mailboxes: Path | None = None
        self.sender = "bench@example.test"
        self.rcpts = ["carol@remote.test", "dave@remote.test"]
        self.dkim_key = ""
        self._stop = lambda: None

    def start(self) -> None:
        name, env = self.name, self.env
        if name.startswith("ingot"):
            MailServer, dns = env["MailServer"], env["dns"]
            extra = (["--verify", "false"] if name == "ingot" else []) + ["--services", "smtp"]
            image, root = env["images"]["mail"], self.work / name
            if self.args.profile:
                # MailServer runs ``python IMAGE ...``: a script that profiles it instead
                wrapper = self.work / "run_profiled.py"
                wrapper.write_text(PROFILE)
                server = _profiled(MailServer, wrapper, profile_path(self.args.profile, name),
                                   image, root, dns.port, extra)
            else:
                server = MailServer(image, root, dns.port, *extra)
            self._stop = server.stop
            self.port, self.pid, self.mailboxes = server.ports["smtp"], server.proc.pid, \
                server.mailboxes
            self.dns_pid = dns.proc.pid if name != "ingot" else None
            self.rcpts = ["alice@example.test", "bob@example.test"]
            self.dkim_key = str(env["DKIM_KEY"]) if name == "ingot-dkim" else ""
        elif name == "sink":
            self.port = free_port()
            proc = subprocess.Popen([sys.executable, "-m", "aiosmtpd", "-n", "-l",
                                     f"127.0.0.1:{self.port}", "-c", "aiosmtpd.handlers.Sink"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self._stop = lambda: stop_proc(proc)
            self.pid = proc.pid
            wait_banner(self.port)
        else:
            self.port = free_port()
            peer = env["postfix_peer"].Postfix(self.work / "postfix", self.port, discard=True)
            self._stop = peer.stop
            peer.start()

    def stop(self) -> None:
        stop, self._stop = self._stop, lambda: None
        stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--only", default=ALL, help=f"comma-separated, of {ALL}")
    ap.add_argument("--repeat", type=int, default=1, help="rounds per server; the median is shown")
    ap.add_argument("--interleave", action="store_true",
                    help="start every server first, then run the rounds in turn (round 1 of "
                         "each, round 2 of each, ...), so drift of a shared machine hits all "
                         "alike; default: one server after the other")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per round")
    ap.add_argument("--profile", default="", help="run the ingot rows under cProfile: "
                    "PROFILE with the row's name before the suffix (out.ingot.prof)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n]
    for n in names:
        if n not in ALL.split(","):
            print(f"unknown server {n}")
            return 2
    sys.path.insert(0, str(ROOT))
    from tests.interop import postfix_peer
    from tests.interop.mail_harness import DKIM_KEY, Dns, MailServer, build_images, write_zones

    if "postfix" in names and (why := postfix_peer.available()):
        print(f"postfix skipped: {why}")
        names.remove("postfix")
    work = Path(tempfile.mkdtemp(prefix="bench-mail-"))
    results: dict[str, dict] = {}
    env: dict = {"MailServer": MailServer, "DKIM_KEY": DKIM_KEY, "postfix_peer": postfix_peer}
    targets = [Target(n, work, args, env) for n in names]
    dns = None
    try:
        if any(n.startswith("ingot") for n in names):
            print("building the mail and DNS images ...", flush=True)
            (work / "build").mkdir()
            env["images"] = build_images(work / "build")
            dns = env["dns"] = Dns(env["images"]["dns"], write_zones(work / "zones"))
        print(f"{args.clients} clients, {args.messages} messages x {args.repeat} rounds, "
              + ("interleaved" if args.interleave else "one server after the other"), flush=True)
        if args.interleave:
            for t in targets:
                t.start()
            runs: dict[str, list[dict]] = {t.name: [] for t in targets}
            for k in range(args.repeat):
                for t in targets:
                    runs[t.name].append(one_round(t, args, k))
            for t in targets:
                results[t.name] = summary(t, runs[t.name])
        else:
            for t in targets:
                print(f"{t.name} ...", flush=True)
                try:
                    t.start()
                    results[t.name] = summary(t, [one_round(t, args, k)
                                                  for k in range(args.repeat)])
                finally:
                    t.stop()
    finally:
        for t in targets:
            t.stop()
        if dns is not None:
            dns.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work folder kept: {work}")
    report(results, args)
    for name in results:
        out = profile_path(args.profile, name) if args.profile else None
        if out and out.exists():
            import pstats

            for key in ("tottime", "cumulative"):
                print(f"\ncProfile of {name} (main thread only), {out}, top 25 by {key}:")
                pstats.Stats(str(out)).sort_stats(key).print_stats(25)
    return 0


def _profiled(cls, wrapper: Path, out: Path, image: Path, root: Path, dns_port: int,
              extra: list[str]):
    """A MailServer whose command line is ``python wrapper OUT IMAGE ...``."""
    import tests.interop.mail_harness as harness

    real_popen = harness.subprocess.Popen

    def popen(argv, *a, **kw):
        if len(argv) > 1 and argv[1] == str(image):
            argv = [argv[0], str(wrapper), str(out), *argv[1:]]
        return real_popen(argv, *a, **kw)

    harness.subprocess.Popen = popen
    try:
        return cls(image, root, dns_port, *extra)
    finally:
        harness.subprocess.Popen = real_popen


def report(results: dict[str, dict], args) -> None:
    print(f"\n{args.clients} client processes, one connection each, {args.messages} messages "
          f"per round, median of {args.repeat} round(s)"
          + (", interleaved:" if args.interleave else ", one server after the other:"))
    print(f"{'server':<14}{'msgs':>7}{'seconds':>9}{'msg/s':>8}{'p50 ms':>8}{'p99 ms':>8}"
          f"{'errors':>7}{'/postfix':>9}{'/sink':>7}{'peak RSS':>11}{'CPU s':>7}{'msg/CPU s':>10}")
    pf = results.get("postfix", {}).get("rate")
    sk = results.get("sink", {}).get("rate")
    for name, r in results.items():
        rss = f"{r['rss'] / 1024:.1f} MiB" if r.get("rss") else "-"
        print(f"{name:<14}{r['msgs']:>7}{r['seconds']:>9.2f}{r['rate']:>8.0f}{r['p50']:>8.1f}"
              f"{r['p99']:>8.1f}{r['errors']:>7}"
              f"{(r['rate'] / pf if pf else float('nan')):>9.2f}"
              f"{(r['rate'] / sk if sk else float('nan')):>7.2f}{rss:>11}"
              + (f"{r['cpu']:>7.2f}{r['msgs'] / r['cpu']:>10.0f}" if r.get("cpu", 0) > 0
                 else f"{'-':>7}{'-':>10}"))
    for name, r in results.items():
        if "stored" in r:
            ok = "ok" if r["stored"] == r["accepted"] else "MISMATCH"
            print(f"{name}: {r['stored']} files in the Maildirs' new/ and cur/ for "
                  f"{r['accepted']} messages accepted: {ok}")
            print(f"  {r['auth'] or '(no Authentication-Results: verification off)'}")
    print(f"CPU s: the server process's user+system time during the median round "
          f"(this machine: {os.cpu_count()} CPUs, shared with the {args.clients} clients)")
    if "postfix" in results:
        print("postfix: peak RSS and CPU not shown (master, smtpd, cleanup, qmgr... are separate "
              "processes)")


if __name__ == "__main__":
    sys.exit(main())
