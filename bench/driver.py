#!/usr/bin/env python3
"""Runs mqtls and its peers side by side and prints the table (called by bench/run, which builds first).

Each server under test is pinned to core 1; the load generator and the upstreams (the sink, a plain
Mosquitto) to core 0. Every figure is the median of --runs runs, the runs interleaved across targets so
that a burst of load elsewhere on the machine hits every target alike. Every process started here is
stopped here (and bench/run's trap kills anything left from the pid file).
"""

import argparse
import base64
import datetime
import json
import resource
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where bench/run's `cargo build --release` put them (CARGO_TARGET_DIR when set, as cargo does).
TARGET_DIR = os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR") or "target")
# bench/run --dev runs the debug build (the smoke test in tests/run): BENCH_PROFILE_DIR=debug.
PROFILE_DIR = os.environ.get("BENCH_PROFILE_DIR") or "release"
BENCH = os.path.join(TARGET_DIR, PROFILE_DIR, "examples/bench")
MQTLS = os.path.join(TARGET_DIR, PROFILE_DIR, "mqtls")
CORE_SERVER = "1"
CORE_LOAD = "0"
PEERS = ["haproxy", "stunnel", "mosquitto"]
# The rustls terminator copying bytes to the sink over a TCP connection opened per client (tokio's
# copy_bidirectional): the least any TLS proxy does, so the ceiling for a proxy's handshake rate and the
# baseline every chart is normalised to.
ALL_TARGETS = ["direct", "terminator", "terminator-fwd", "mqtls"] + PEERS
# Latency with busy polling on both sides: mqtls's `busy_poll` (spins for a window after traffic) and
# HAProxy's `busy-polling` (never sleeps). Only the round-trip figure: that is what the option is for.
BUSY_TARGETS = ["mqtls-busy", "haproxy-busy"]
BUSY_POLL = "200us"
# mqtls reaching the sink over a unix socket, as a sidecar in the broker's pod can: what the second TCP
# connection costs a handshake. Handshake figures only.
UNIX_TARGETS = ["mqtls-unix"]
# terminator-fwd's forwarder without TLS: what moving the bytes costs one core, for the throughput bound
# 1 / (1/plain-fwd + 1/AES-256-GCM).
PLAIN_TARGETS = ["plain-fwd"]
# mqtls with `protocol = "websockets"`: the same traffic as MQTT over wss:// (upgrade on /mqtt, one masked
# binary frame per client write), against the targets relative to mqtls's own 8883 figures.
WSS_TARGETS = ["mqtls-wss"]
# mqtls with `handshake_nice = 0`: handshakes on the established connections' thread, as before the
# handshake threads; for what they cost a handshake and give the established connections in a storm.
SHARED_TARGETS = ["mqtls-shared"]
EXTRA_TARGETS = BUSY_TARGETS + UNIX_TARGETS + PLAIN_TARGETS + WSS_TARGETS + SHARED_TARGETS
BASELINE = "terminator-fwd"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# The noisy-source figure: mqtls's per-source rate, and the address the noisy source connects from (the
# fleet connects from 127.1.0.1 onwards, one address per device; the watched connection from 127.0.0.1).
NOISY_RATE = 10
NOISY_SOURCE = "127.0.0.2"
NOISY_LOOPS = 16

FIGURES = {
    # name: (title, unit, higher is better, targets it applies to)
    "hs": ("full handshakes + CONNECT/CONNACK", "per s", True,
           ALL_TARGETS + UNIX_TARGETS + PLAIN_TARGETS + WSS_TARGETS + SHARED_TARGETS),
    "tp16k": ("throughput, 16 KiB PUBLISH", "MB/s", True, ALL_TARGETS + PLAIN_TARGETS + WSS_TARGETS),
    "tp1k": ("throughput, 1 KiB PUBLISH", "MB/s", True, ALL_TARGETS + PLAIN_TARGETS + WSS_TARGETS),
    "ping": ("PINGREQ round trip p50 / p99", "µs", False,
             ALL_TARGETS + BUSY_TARGETS + PLAIN_TARGETS + WSS_TARGETS + SHARED_TARGETS),
    "idle": ("RSS per idle TLS connection", "KiB", False,
             ["terminator", "terminator-fwd", "mqtls"] + PEERS + WSS_TARGETS + SHARED_TARGETS),
    "resume": ("resumed handshakes + CONNECT/CONNACK", "per s", True,
               ["terminator", "terminator-fwd", "mqtls"] + PEERS + UNIX_TARGETS + WSS_TARGETS + SHARED_TARGETS),
    # TLS 1.2, for what its resumption costs (no key exchange, unlike TLS 1.3's in rustls). The peers'
    # listeners are configured TLS 1.3-only, so only mqtls and the terminators run these.
    "hs12": ("TLS 1.2 full handshakes + CONNECT/CONNACK", "per s", True, ["terminator", "terminator-fwd", "mqtls"]),
    "resume12": ("TLS 1.2 resumed handshakes + CONNECT/CONNACK", "per s", True, ["terminator", "terminator-fwd", "mqtls"]),
    # mqtls only (no peer closes established connections when trust changes): --idle connections held,
    # then the CRL file is replaced by one revoking their certificate and SIGHUP sent; the time until
    # mqtls_connections_closed_total says every one was closed (recheck_spread 0: the re-check itself).
    "recheck": ("CRL change → every idle connection closed", "s", False, ["mqtls"]),
    # --storm devices connect and hold, then all drop at once and reconnect at once with their tickets:
    # the time until every one has its CONNACK again (details under the table).
    "storm": ("reconnect storm: all devices back", "s", False, ["terminator-fwd", "mqtls", "haproxy"] + SHARED_TARGETS),
    # The figures below compare variants of one set-up rather than targets (their own tables under the
    # main one); they run when mqtls is among the targets, `aes` always.
    # The core's AES-256-GCM rate (openssl speed, pinned like the servers): 16 KiB / 1 KiB records.
    "aes": ("AES-256-GCM on the server core, 16 KiB / 1 KiB", "MB/s", True, ["openssl"]),
    # The storm through two mqtls replicas behind a round-robin TCP balancer, with and without shared
    # ticket keys; TLS 1.3, then TLS 1.2 (the client offers only 1.2).
    "storm2": ("reconnect storm, 2 replicas, TLS 1.3: all devices back", "s", False, ["shared-keys", "own-keys"]),
    "storm2-12": ("reconnect storm, 2 replicas, TLS 1.2: all devices back", "s", False, ["shared-keys", "own-keys"]),
    # The storm (a fleet from one address per device) with max_conn_rate_per_source on mqtls, with and
    # without one source reconnecting in a tight loop, and with that source but no limit.
    "noisy": ("reconnect storm with a noisy source: all devices back", "s", False,
              ["limit-quiet", "limit-noise", "nolimit-noise"]),
}
VARIANT_FIGURES = ("aes", "storm2", "storm2-12", "noisy")


def units(fig, targets):
    """What a figure measures in this run: its targets among those asked for, or its variants."""
    if fig == "aes":
        return FIGURES[fig][3]
    if fig in VARIANT_FIGURES:
        return FIGURES[fig][3] if "mqtls" in targets else []
    return [t for t in targets if t in FIGURES[fig][3]]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, logfile, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}): {tail(logfile)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s: {tail(logfile)}")


def tail(path, n=2000):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime, all threads


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def busy_seconds():
    """CPU seconds spent busy by the whole machine (all cores) since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return (sum(v[:8]) - idle) / CLK_TCK


def wait_quiet(max_wait, threshold=25.0):
    """Waits (at most max_wait seconds) until the machine is idle enough: less than `threshold` % of
    one core busy over 2 s while the benchmark itself is idle. Returns the last busy % seen."""
    deadline = time.monotonic() + max_wait
    while True:
        b0, t0 = busy_seconds(), time.monotonic()
        time.sleep(2.0)
        busy = (busy_seconds() - b0) / (time.monotonic() - t0) * 100
        if busy < threshold or time.monotonic() >= deadline:
            return busy
        log(f"machine busy ({busy:.0f}% of a core used by other work); waiting for it to settle")


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="mqtls-bench-")
        self.certs = os.path.join(self.tmp, "certs")
        self.pidfile = args.pidfile
        self.procs = []
        subprocess.run([BENCH, "certs", self.certs], check=True, stdout=subprocess.DEVNULL)

    # -- processes ---------------------------------------------------------------------------
    def pin(self, core):
        """taskset to the core; as root also a raised priority, so that other work on a shared machine
        (compilers at nice 0) takes the benchmark's cores only when it sleeps."""
        prefix = ["taskset", "-c", core]
        if self.args.nice and os.geteuid() == 0:
            prefix = ["nice", "-n", str(self.args.nice)] + prefix
        return prefix

    def spawn(self, name, argv, core, port):
        logfile = os.path.join(self.tmp, f"{name}.log")
        out = open(logfile, "ab")
        proc = self.track(subprocess.Popen(self.pin(core) + argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out))
        out.close()
        wait_port(port, proc, logfile)
        return proc

    def track(self, proc):
        """Remembers a process for stop_all and for bench/run's trap."""
        self.procs.append(proc)
        if self.pidfile:
            with open(self.pidfile, "a") as f:
                f.write(f"{proc.pid}\n")
        return proc

    def stop(self, proc):
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def stop_all(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    # -- upstreams (core 0, for the whole run) --------------------------------------------------
    def start_upstreams(self):
        self.sink_port = free_port()
        self.sink_unix = os.path.join(self.tmp, "sink.sock")
        self.sink = self.spawn("sink", [BENCH, "sink", f"127.0.0.1:{self.sink_port}", "--unix", self.sink_unix],
                               CORE_LOAD, self.sink_port)
        self.broker_port = free_port()
        conf = self.write(
            "broker.conf",
            f"per_listener_settings false\nlistener {self.broker_port} 127.0.0.1\nallow_anonymous true\n"
            "persistence false\nlog_dest stderr\nlog_type error\nconnection_messages false\nuser root\n"
            "set_tcp_nodelay true\n",
        )
        self.broker = self.spawn("broker", ["mosquitto", "-c", conf], CORE_LOAD, self.broker_port)

    # -- servers under test (core 1, one per measurement) -------------------------------------
    def start_target(self, target, upstream_port, recheck=False, extra=(), name=None):
        """Returns (process or None, port, extra load-generator flags). With `recheck`, mqtls checks a CRL
        file (self.crl) and serves its metrics (self.admin_port); `extra` are more mqtls flags; `name`
        names its log (several of one target at once)."""
        c = self.certs
        port = free_port()
        if target == "direct":
            return None, upstream_port, ["--plain"]
        if target == "terminator":
            argv = [BENCH, "terminator", f"127.0.0.1:{port}", "--certs", c]
        elif target == "terminator-fwd":
            argv = [BENCH, "terminator", f"127.0.0.1:{port}", "--certs", c, "--upstream", f"127.0.0.1:{upstream_port}"]
        elif target == "plain-fwd":
            argv = [BENCH, "forward", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{upstream_port}"]
            return self.spawn(target, argv, CORE_SERVER, port), port, ["--plain"]
        elif target in ("mqtls", "mqtls-busy", "mqtls-unix", "mqtls-wss", "mqtls-shared"):
            upstream = f"unix:{self.sink_unix}" if target == "mqtls-unix" else f"127.0.0.1:{upstream_port}"
            argv = [MQTLS, "--listen", f"127.0.0.1:{port}", "--upstream", upstream,
                    "--cert", f"{c}/server.crt", "--key", f"{c}/server.key", "--client-ca", f"{c}/ca.crt",
                    "--threads", "1", "--log-level", "warn", "--reload-interval", "off"] + list(extra)
            if target == "mqtls-busy":
                argv += ["--busy-poll", BUSY_POLL]
            if target == "mqtls-shared":
                argv += ["--handshake-nice", "0"]
            if recheck:
                self.crl = os.path.join(self.tmp, "devices.crl")
                shutil.copy(f"{c}/empty.crl", self.crl)
                self.admin_port = free_port()
                argv += ["--crl", self.crl, "--recheck-spread", "0", "--admin", f"127.0.0.1:{self.admin_port}"]
            if target == "mqtls-wss":
                argv += ["--protocol", "websockets"]
                return self.spawn(target, argv, CORE_SERVER, port), port, ["--ws", "/mqtt"]
            return self.spawn(name or target, argv, CORE_SERVER, port), port, []
        elif target in ("haproxy", "haproxy-busy"):
            busy = "    busy-polling\n" if target == "haproxy-busy" else ""
            conf = self.write("haproxy.cfg", f"""global
{busy}    nbthread 1
    maxconn {self.args.idle + 50}
    ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
    ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend mqtt
    bind 127.0.0.1:{port} ssl crt {c}/server.pem ca-file {c}/ca.crt verify required curves X25519
    default_backend broker
backend broker
    server s 127.0.0.1:{upstream_port}
""")
            argv = ["haproxy", "-db", "-f", conf]
        elif target == "stunnel":
            conf = self.write("stunnel.conf", f"""foreground = yes
pid =
debug = 3
[mqtt]
accept = 127.0.0.1:{port}
connect = 127.0.0.1:{upstream_port}
cert = {c}/server.crt
key = {c}/server.key
CAfile = {c}/ca.crt
verifyChain = yes
requireCert = yes
sslVersionMin = TLSv1.3
curves = X25519
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
TIMEOUTidle = 3600
""")
            argv = ["stunnel", conf]
        elif target == "mosquitto":
            conf = self.write("mosquitto-tls.conf", f"""per_listener_settings false
persistence false
log_dest stderr
log_type error
connection_messages false
user root
listener {port} 127.0.0.1
cafile {c}/ca.crt
certfile {c}/server.crt
keyfile {c}/server.key
require_certificate true
use_identity_as_username true
tls_version tlsv1.3
set_tcp_nodelay true
""")
            argv = ["mosquitto", "-c", conf]
        else:
            raise ValueError(target)
        return self.spawn(target, argv, CORE_SERVER, port), port, []

    # -- load generator -----------------------------------------------------------------------
    def loadgen(self, mode, port, flags, extra, timeout):
        argv = self.pin(CORE_LOAD) + [BENCH, mode, f"127.0.0.1:{port}", "--certs", self.certs] + flags + extra
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise RuntimeError(f"{mode} did not finish within {timeout}s")
        if proc.returncode != 0:
            raise RuntimeError(f"{mode} failed: {err.decode(errors='replace')[-1000:]}")
        return json.loads(out.decode().strip().splitlines()[-1])

    def measure(self, fig, target):
        """One run of one figure for one target (or variant): returns (value, raw result)."""
        a = self.args
        if fig == "aes":
            return self.aes()
        upstream = self.broker_port if fig == "ping" else self.sink_port
        servers, helpers = [], []  # servers on core 1 (their CPU is the server's), helpers on core 0
        try:
            if fig in ("storm2", "storm2-12"):
                port, flags = self.start_replicas(target, servers, helpers)
                if fig == "storm2-12":
                    flags = flags + ["--tls12"]
            elif fig == "noisy":
                limit = ["--max-conn-rate-per-source", str(NOISY_RATE)] if target.startswith("limit") else []
                proc, port, flags = self.start_target("mqtls", upstream, extra=limit)
                servers.append(proc)
            else:
                proc, port, flags = self.start_target(target, upstream, recheck=fig == "recheck")
                if proc:
                    servers.append(proc)
            server_pids = [p.pid for p in servers]
            time.sleep(0.3)
            before = sum(cpu_seconds(p) for p in server_pids)
            helpers_before = sum(cpu_seconds(p.pid) for p in helpers)
            sink_before = cpu_seconds(self.sink.pid)
            t0 = time.monotonic()
            ru = resource.getrusage(resource.RUSAGE_CHILDREN)
            gen_before = ru.ru_utime + ru.ru_stime
            machine_before = busy_seconds()
            if fig in ("hs", "resume", "hs12", "resume12"):
                mode = "handshakes" if fig.startswith("hs") else "resume"
                extra = ["--seconds", str(a.seconds), "--concurrency", "32"] + (["--tls12"] if fig.endswith("12") else [])
                r = self.loadgen(mode, port, flags, extra, a.seconds + 120)
                value = r["rate"]
            elif fig in ("tp16k", "tp1k"):
                size = 16384 if fig == "tp16k" else 1024
                r = self.loadgen("throughput", port, flags,
                                 ["--size", str(size), "--clients", "4", "--seconds", str(a.seconds)], a.seconds + 120)
                value = r["mb_per_s"]
            elif fig == "ping":
                r = self.loadgen("ping", port, flags, ["--count", str(a.pings), "--warmup", str(a.pings // 10)], 300)
                value = (r["p50_us"], r["p99_us"])
            elif fig == "idle":
                r, value = self.idle(port, servers[0].pid, flags)
            elif fig in ("storm", "storm2", "storm2-12"):
                r = self.loadgen("reconnect", port, flags, ["--count", str(a.storm)], 400)
                value = r["all_back_s"]
            elif fig == "noisy":
                r = self.noisy_storm(port, flags, noise=target.endswith("noise"))
                value = r["all_back_s"]
            elif fig == "recheck":
                r, value = self.idle(port, servers[0].pid, flags, then=lambda n: self.revoke_all(servers[0], n))
            else:
                raise ValueError(fig)
            wall = time.monotonic() - t0
            server_cpu = (sum(cpu_seconds(p) for p in server_pids) - before) / wall * 100 if server_pids else None
            sink_cpu = (cpu_seconds(self.sink.pid) - sink_before) / wall * 100
            r["server_cpu_pct"] = server_cpu
            r["sink_cpu_pct"] = sink_cpu
            ru = resource.getrusage(resource.RUSAGE_CHILDREN)
            r["gen_cpu_pct"] = (ru.ru_utime + ru.ru_stime - gen_before) / wall * 100
            ours = (server_cpu or 0) + sink_cpu + r["gen_cpu_pct"]
            if helpers:
                r["balancer_cpu_pct"] = (sum(cpu_seconds(p.pid) for p in helpers) - helpers_before) / wall * 100
                ours += r["balancer_cpu_pct"]
            # Whatever else ran on the machine meanwhile (other users' builds): the figure's noise.
            r["other_cpu_pct"] = max(0.0, (busy_seconds() - machine_before) / wall * 100 - ours)
            return value, r
        finally:
            for p in servers + helpers:
                self.stop(p)

    def start_replicas(self, variant, servers, helpers):
        """Two mqtls on core 1 (sharing it, as two replicas on one core would) behind HAProxy in TCP mode
        with `balance roundrobin` on core 0; with `shared-keys` both read one ticket_keys file the driver
        writes, with `own-keys` each keeps its own. Returns the balancer's port and the loadgen flags."""
        extra = []
        if variant == "shared-keys":
            # What `openssl rand -base64 80` gives, one key a line; the first seals, both open.
            keys = "".join(base64.b64encode(os.urandom(80)).decode() + "\n" for _ in range(2))
            extra = ["--ticket-keys", self.write("ticket.keys", keys)]
        ports = []
        for i in range(2):
            proc, port, _ = self.start_target("mqtls", self.sink_port, extra=extra, name=f"replica-{i}")
            servers.append(proc)
            ports.append(port)
        port = free_port()
        conf = self.write("balancer.cfg", f"""global
    nbthread 1
    maxconn {self.args.storm + 100}
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend fleet
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
    server a 127.0.0.1:{ports[0]}
    server b 127.0.0.1:{ports[1]}
""")
        helpers.append(self.spawn("balancer", ["haproxy", "-db", "-f", conf], CORE_LOAD, port))
        return port, []

    def noisy_storm(self, port, flags, noise):
        """The storm from a fleet with an address per device; with `noise`, meanwhile one source
        (NOISY_SOURCE) reconnects in NOISY_LOOPS tight loops. The noisy generator runs on core 0 under
        SCHED_IDLE: it takes whatever the fleet's generator and the sink leave of that core, so what it
        costs the fleet is what it costs mqtls, not a slower generator."""
        a = self.args
        proc = None
        stop = os.path.join(self.tmp, f"stop-noisy-{time.monotonic_ns()}")
        if noise:
            argv = ["chrt", "--idle", "0", "taskset", "-c", CORE_LOAD, BENCH, "noisy", f"127.0.0.1:{port}",
                    "--certs", self.certs, "--source", NOISY_SOURCE, "--concurrency", str(NOISY_LOOPS),
                    "--stop-file", stop, "--seconds", "900"] + flags
            proc = self.track(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
            time.sleep(1.0)  # in full swing before the fleet connects
            if proc.poll() is not None:
                raise RuntimeError(f"noisy source exited: {proc.stderr.read().decode(errors='replace')[-1000:]}")
        try:
            r = self.loadgen("reconnect", port, flags, ["--count", str(a.storm), "--spread-sources"], 400)
        finally:
            if proc is not None:
                open(stop, "w").close()
                try:
                    out, err = proc.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    out, err = proc.communicate()
        if proc is not None:
            if proc.returncode != 0:
                raise RuntimeError(f"noisy source failed: {err.decode(errors='replace')[-1000:]}")
            r["noise"] = json.loads(out.decode().strip().splitlines()[-1])
        return r

    def aes(self):
        """The server core's AES-256-GCM rate for 16 KiB and 1 KiB buffers (`openssl speed`, pinned and
        prioritised like the servers; it divides by its own CPU time, so other work skews it little)."""
        seconds = str(self.args.aes_seconds)
        rates = {}
        for size in (16384, 1024):
            argv = self.pin(CORE_SERVER) + ["openssl", "speed", "-evp", "aes-256-gcm", "-mr",
                                            "-seconds", seconds, "-bytes", str(size)]
            p = subprocess.run(argv, capture_output=True, text=True, timeout=self.args.aes_seconds * 4 + 60)
            sizes = values = None
            for line in p.stdout.splitlines():
                if line.startswith("+H:"):
                    sizes = [int(x) for x in line.split(":")[1:]]
                elif line.startswith("+F:"):
                    values = [float(x) for x in line.split(":")[3:]]
            if p.returncode != 0 or not sizes or not values or size not in sizes:
                raise RuntimeError(f"openssl speed ({p.returncode}) printed no rate for {size} bytes: {p.stderr[-500:]}")
            rates[size] = values[sizes.index(size)] / 1e6
        r = {"mode": "aes", "mb_per_s_16k": rates[16384], "mb_per_s_1k": rates[1024], "seconds": self.args.aes_seconds}
        return (rates[16384], rates[1024]), r

    def revoke_all(self, proc, n):
        """Replaces the CRL by one revoking the client certificate, sends SIGHUP, and returns the seconds
        until mqtls reports `n` connections closed as revoked."""
        tmp = self.crl + ".new"
        shutil.copy(os.path.join(self.certs, "revoked.crl"), tmp)
        os.replace(tmp, self.crl)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        deadline = t0 + 300
        while time.monotonic() < deadline:
            closed = 0
            try:
                with socket.create_connection(("127.0.0.1", self.admin_port), timeout=5) as s:
                    s.sendall(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
                    body = b""
                    while chunk := s.recv(65536):
                        body += chunk
                # Summed over the other labels (listener, transport).
                closed = sum(float(line.split()[-1]) for line in body.decode(errors="replace").splitlines()
                             if line.startswith("mqtls_connections_closed_total{") and 'reason="revoked"' in line)
            except OSError:
                pass
            if closed >= n:
                return time.monotonic() - t0
            time.sleep(0.02)
        raise RuntimeError(f"only {closed:.0f} of {n} connections closed within 300 s")

    def idle(self, port, server_pid, flags, then=None):
        """Holds --idle connections and returns the RSS per connection; with `then`, returns
        then(connections held) instead, called while they are held."""
        a = self.args
        hold = os.path.join(self.tmp, f"hold-{time.monotonic_ns()}")
        time.sleep(0.7)
        base = rss_kib(server_pid)
        argv = self.pin(CORE_LOAD) + [BENCH, "idle", f"127.0.0.1:{port}", "--certs", self.certs,
                "--count", str(a.idle), "--hold-file", hold] + flags
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 600
            line = b""
            while time.monotonic() < deadline and b"\n" not in line:
                ready, _, _ = select.select([proc.stdout], [], [], 1.0)
                if ready:
                    chunk = os.read(proc.stdout.fileno(), 4096)
                    if not chunk:
                        break
                    line += chunk
                elif proc.poll() is not None:
                    break
            if b"\n" not in line:
                raise RuntimeError(f"idle clients never reported: {proc.stderr.read().decode(errors='replace')}")
            r = json.loads(line.split(b"\n")[0])
            if then is not None:
                value = then(max(r["connected"], 1))
                r["seconds"] = value
                return r, value
            time.sleep(2.0)  # let the last handshakes' buffers be released
            held = rss_kib(server_pid)
            r.update({"rss_base_kib": base, "rss_held_kib": held})
            n = max(r["connected"], 1)
            value = (held - base) / n
            r["kib_per_conn"] = value
        finally:
            open(hold, "w").close()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return r, value


def versions():
    def first_line(cmd):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            text = (p.stdout + p.stderr).strip().splitlines()
            return next((l for l in text if l.strip()), "?")
        except OSError:
            return "not installed"

    rustls = "?"
    try:
        lock = open(os.path.join(ROOT, "Cargo.lock")).read().split("[[package]]")
        for name in ("rustls", "aws-lc-rs", "tokio"):
            for block in lock:
                if f'name = "{name}"\n' in block:
                    ver = block.split('version = "')[1].split('"')[0]
                    rustls = f"{rustls}, {name} {ver}" if rustls != "?" else f"{name} {ver}"
                    break
    except (OSError, IndexError):
        pass
    stunnel = first_line(["sh", "-c", "stunnel -version 2>&1 | grep -m1 '^stunnel'"])
    openssl = first_line(["openssl", "version"])
    return {
        "mqtls": first_line([MQTLS, "--version"]) + f" ({rustls})",
        "haproxy": first_line(["haproxy", "-v"]),
        "stunnel": stunnel,
        "mosquitto": first_line(["sh", "-c", "mosquitto -h | head -1"]),
        "openssl": openssl,
        "kernel": os.uname().release,
        "cpu": first_line(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"]).strip(),
    }


PAIRS = ("ping", "aes")  # figures whose value is a pair: p50 / p99, 16 KiB / 1 KiB


def fmt(fig, v):
    if v is None:
        return "—"
    if fig in PAIRS:
        return f"{v[0]:.0f} / {v[1]:.0f}"
    if fig == "idle":
        return f"{v:.1f}"
    if fig in ("recheck", "storm", "storm2", "storm2-12", "noisy"):
        return f"{v:.2f}"
    return f"{v:.0f}"


def median(fig, values):
    if not values:
        return None
    if fig in PAIRS:
        return (statistics.median(v[0] for v in values), statistics.median(v[1] for v in values))
    return statistics.median(values)


def key(fig, v):
    return v[1] if fig == "ping" else v


def bounds(med):
    """The single-core throughput bound of a TLS proxy, 1 / (1/plain-fwd + 1/AES-256-GCM), per record
    size: the plain forwarder's MB/s and the core's AES-256-GCM MB/s, measured in the same run."""
    aes = med.get("aes", {}).get("openssl")
    out = {}
    for fig, i in (("tp16k", 0), ("tp1k", 1)):
        plain = med.get(fig, {}).get("plain-fwd")
        if aes and plain:
            out[fig] = (plain, aes[i], 1 / (1 / plain + 1 / aes[i]))
    return out


def storm_cells(runs):
    """The storm table's cells from a unit's runs (medians of those that completed)."""
    ok = [x for x in runs if x.get("back")]
    if not ok:
        return None
    m = lambda k: statistics.median(x.get(k) or 0 for x in ok)
    quiet, storm = m("ping_quiet_p99_us"), m("ping_storm_p99_us")
    return [f"{m('all_back_s'):.2f}", f"{m('connack_p50_ms'):.0f} / {m('connack_p99_ms'):.0f}",
            f"{m('resumed_share') * 100:.0f} %", f"{quiet:.0f} → {storm:.0f} ({storm / max(quiet, 1):.1f}×)"]


def report(results, raw, args, meta):
    figs = [f for f in FIGURES if f in args.figures]
    main_figs = [f for f in figs if f not in VARIANT_FIGURES]
    med = {f: {t: median(f, results[f].get(t, [])) for t in units(f, args.targets)} for f in figs}
    lines = []
    if main_figs:
        head = "| target | " + " | ".join(f"{FIGURES[f][0]} ({FIGURES[f][1]})" for f in main_figs) + " |"
        lines += [head, "|" + "---|" * (len(main_figs) + 1)]
        for t in args.targets:
            row = [t] + [fmt(f, med[f].get(t)) for f in main_figs]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    # mqtls / best peer, per figure.
    ratio_lines = []
    ratio = {}
    for f in main_figs:
        m = med[f].get("mqtls")
        peers = {p: med[f][p] for p in PEERS if med[f].get(p) is not None}
        if m is None or not peers:
            continue
        higher = FIGURES[f][2]
        best = (max if higher else min)(peers, key=lambda p: key(f, peers[p]))

        def r(other):
            return key(f, m) / key(f, other) if other is not None and key(f, other) else None

        ratio[f] = {"best": r(peers[best]), "haproxy": r(med[f].get("haproxy")), "terminator": r(med[f].get("terminator")),
                    BASELINE: r(med[f].get(BASELINE))}
        cells = [f, fmt(f, m), f"{best} {fmt(f, peers[best])}"] + [
            "—" if ratio[f][k] is None else f"{ratio[f][k]:.2f}" for k in ("best", "haproxy", "terminator", BASELINE)]
        ratio_lines.append("| " + " | ".join(cells) + " |")
    if ratio_lines:
        lines += ["| figure | mqtls | best peer | mqtls / best peer | mqtls / haproxy | mqtls / terminator | "
                  f"mqtls / {BASELINE} |", "|---|---|---|---|---|---|---|"] + ratio_lines + [""]
    # The targets.
    checks = []
    if "hs" in ratio:
        checks.append(("handshakes/s ≥ 2× HAProxy", ratio["hs"]["haproxy"], 2.0, True))
        checks.append(("handshakes/s ≥ 0.9× rustls terminator", ratio["hs"]["terminator"], 0.9, True))
        unix, term = med["hs"].get("mqtls-unix"), med["hs"].get("terminator")
        if unix and term:
            checks.append(("the same, mqtls with a unix-socket upstream (sidecar)", unix / term, None, True))
        fwd = med["hs"].get(BASELINE)
        if fwd and term:
            checks.append(("terminator-fwd vs the bare terminator (what the upstream leg costs)", fwd / term, None, True))
    # Against the forwarding terminator: the ceiling of a rustls proxy (issue 19).
    for fig, name in (("hs", "full handshakes (TLS 1.3)"), ("resume", "resumed handshakes (TLS 1.3)"),
                      ("hs12", "full handshakes (TLS 1.2)"), ("resume12", "resumed handshakes (TLS 1.2)")):
        m, fwd = (med.get(fig, {}).get(t) for t in ("mqtls", BASELINE))
        if m and fwd:
            checks.append((f"{name} ≥ 0.97× {BASELINE}", m / fwd, 0.97, True))
    m, fwd = (med.get("ping", {}).get(t) for t in ("mqtls", BASELINE))
    if m and fwd:
        checks.append((f"PINGREQ p99 ≤ 1.05× {BASELINE}", m[1] / fwd[1], 1.05, False))
    if "tp16k" in ratio:
        checks.append(("16 KiB throughput ≥ 1.3× HAProxy", ratio["tp16k"]["haproxy"], 1.3, True))
    if "tp1k" in ratio:
        checks.append(("1 KiB throughput ≥ 1.2× HAProxy", ratio["tp1k"]["haproxy"], 1.2, True))
    bound = bounds(med)
    for fig, name, goal in (("tp16k", "16 KiB", 0.8), ("tp1k", "1 KiB", 0.7)):
        m = med.get(fig, {}).get("mqtls")
        if fig in bound and m:
            checks.append((f"{name} throughput ≥ {goal}× the single-core bound", m / bound[fig][2], goal, True))
    if "ping" in ratio:
        checks.append(("PINGREQ p99 ≤ 0.7× HAProxy", ratio["ping"]["haproxy"], 0.7, False))
        busy, hap, hap_busy = (med["ping"].get(t) for t in ("mqtls-busy", "haproxy", "haproxy-busy"))
        if busy and hap:
            checks.append((f"PINGREQ p99 ≤ 0.7× HAProxy, mqtls with busy_poll = {BUSY_POLL}", busy[1] / hap[1], 0.7, False))
        if busy and hap_busy:
            checks.append(("mqtls with busy_poll vs HAProxy with busy-polling (like for like)",
                           busy[1] / hap_busy[1], None, False))
    if "idle" in ratio:
        checks.append(("RSS per idle connection ≤ 0.5× HAProxy", ratio["idle"]["haproxy"], 0.5, False))
    # MQTT over wss:// against mqtls's own 8883 figures (the WebSocket issue's targets).
    for fig, name, goal, higher in (("hs", "WSS handshakes/s ≥ 0.8× 8883", 0.8, True),
                                    ("tp16k", "WSS 16 KiB throughput ≥ 0.8× 8883", 0.8, True),
                                    ("tp1k", "WSS 1 KiB throughput vs 8883", None, True),
                                    ("resume", "WSS resumed handshakes/s vs 8883", None, True),
                                    ("idle", "WSS RSS per idle connection ≤ 1.5× 8883", 1.5, False)):
        wss, tcp = (med.get(fig, {}).get(t) for t in ("mqtls-wss", "mqtls"))
        if wss and tcp:
            checks.append((name, key(fig, wss) / key(fig, tcp), goal, higher))
    if "resume" in med and "hs" in med and med["resume"].get("mqtls") and med["hs"].get("mqtls"):
        checks.append(("resumption storm ≥ 3× full-handshake rate", med["resume"]["mqtls"] / med["hs"]["mqtls"], 3.0, True))
    if "resume12" in med and "hs12" in med and med["resume12"].get("mqtls") and med["hs12"].get("mqtls"):
        checks.append(("the same with TLS 1.2 tickets", med["resume12"]["mqtls"] / med["hs12"]["mqtls"], 3.0, True))
    for fig, name in (("resume", "resumption storm / full handshakes, bare terminator (TLS 1.3)"),
                      ("resume12", "resumption storm / full handshakes, bare terminator (TLS 1.2)")):
        full = "hs" if fig == "resume" else "hs12"
        if fig in med and full in med and med[fig].get("terminator") and med[full].get("terminator"):
            checks.append((name, med[fig]["terminator"] / med[full]["terminator"], None, True))
    # The fleet (issue 17).
    storm_runs = raw.get("storm", {}).get("mqtls", [])
    if any(x.get("back") for x in storm_runs):
        q = statistics.median(x["ping_quiet_p99_us"] for x in storm_runs if x.get("back"))
        d = statistics.median(x["ping_storm_p99_us"] for x in storm_runs if x.get("back"))
        checks.append(("PINGREQ p99 during the storm ≤ 3× quiet", d / max(q, 1), 3.0, False))
    for fig, name in (("storm2", "TLS 1.3"), ("storm2-12", "TLS 1.2")):
        shared, own = (med.get(fig, {}).get(u) for u in ("shared-keys", "own-keys"))
        if shared and own:
            checks.append((f"2 replicas, all back: own keys / shared keys ≥ 1.8× ({name})", own / shared, 1.8, True))
    quiet, noise, unlimited = (med.get("noisy", {}).get(u) for u in ("limit-quiet", "limit-noise", "nolimit-noise"))
    if quiet and noise:
        checks.append((f"all back with a noisy source / without, max_conn_rate_per_source = {NOISY_RATE}",
                       noise / quiet, 1.2, False))
    if quiet and unlimited:
        checks.append(("the same without the limit (what it buys)", unlimited / quiet, None, False))
    if checks:
        lines += ["| issue target | measured | met? |", "|---|---|---|"]
        for name, v, goal, higher in checks:
            ok = v is not None and goal is not None and (v >= goal if higher else v <= goal)
            verdict = "not a target" if goal is None else "not measured" if v is None else "met" if ok else "NOT met"
            lines.append(f"| {name} | {'—' if v is None else f'{v:.2f}×'} | {verdict} |")
        lines.append("")
    if bound:
        lines += ["Throughput against the single-core bound of a TLS proxy, 1 / (1/plain-fwd + 1/AES-256-GCM) "
                  "(AES-256-GCM: `openssl speed -evp aes-256-gcm` on the server core, same run).", "",
                  "| record | plain-fwd MB/s | AES-256-GCM MB/s | bound MB/s | mqtls MB/s | mqtls / bound | "
                  "HAProxy / bound |", "|---|---|---|---|---|---|---|"]
        for fig, name in (("tp16k", "16 KiB"), ("tp1k", "1 KiB")):
            if fig not in bound:
                continue
            plain, aes, b = bound[fig]
            m, h = (med[fig].get(t) for t in ("mqtls", "haproxy"))
            lines.append(f"| {name} | {plain:.0f} | {aes:.0f} | {b:.0f} | {fmt(fig, m)} | "
                         f"{'—' if not m else f'{m / b:.2f}'} | {'—' if not h else f'{h / b:.2f}'} |")
        lines.append("")
    # What each process spent, to tell which side limited a figure.
    lines += ["CPU use during each figure (median % of one core): server under test / load generator / sink / "
              "other work on the machine (the generator and the sink share core 0; the server has core 1; "
              "\"other\" is everything else that ran meanwhile, i.e. the noise). For the two-replica storm the "
              "server is both replicas, and the balancer's share is counted apart (in the raw results).", "",
              "| target | " + " | ".join(figs) + " |", "|" + "---|" * (len(figs) + 1)]
    rows = list(args.targets) + [u for f in figs if f in VARIANT_FIGURES for u in units(f, args.targets)]
    for t in dict.fromkeys(rows):
        cells = []
        for f in figs:
            runs = raw[f].get(t, [])
            def m(k):
                xs = [x[k] for x in runs if x.get(k) is not None]
                return f"{statistics.median(xs):.0f}" if xs else "—"
            cells.append(" / ".join([m("server_cpu_pct"), m("gen_cpu_pct"), m("sink_cpu_pct"), m("other_cpu_pct")])
                         if runs else "—")
        if any(ch.isdigit() for c in cells for ch in c):
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines.append("")
    extra = []
    for f in ("resume", "resume12"):
        for t, runs in raw.get(f, {}).items():
            fr = [x["resumed"] / x["ok"] for x in runs if x.get("ok")]
            if fr:
                extra.append(f"{t} {statistics.median(fr) * 100:.0f}%")
    if extra:
        lines.append("Share of resume-storm handshakes that were resumptions: " + ", ".join(extra) + ".")
        lines.append("")
    storm_head = ["| all back (s) | CONNACK p50 / p99 (ms) | resumed | PINGREQ p99 (µs) |", "|---|---|---|---|"]
    storm = [f"| {t} | " + " | ".join(c) + " |" for t, runs in raw.get("storm", {}).items() if (c := storm_cells(runs))]
    if storm:
        lines += [f"Reconnect storm ({args.storm} devices, medians): all back from the drop, time to CONNACK p50 / p99 "
                  "from the drop, share resumed, PINGREQ p99 of an established connection quiet → during the storm.",
                  "", "| target " + storm_head[0], "|---" + storm_head[1]] + storm + [""]
    two = []
    for fig, version in (("storm2", "TLS 1.3"), ("storm2-12", "TLS 1.2")):
        for u, runs in raw.get(fig, {}).items():
            if c := storm_cells(runs):
                two.append(f"| {version} | {u} | " + " | ".join(c) + " |")
    if two:
        lines += [f"Reconnect storm through two mqtls replicas ({args.storm} devices; HAProxy in TCP mode, "
                  "`balance roundrobin`, in front; both replicas on core 1, balancer and load generator on core 0), "
                  "with one `ticket_keys` file (shared-keys) and with each replica's own keys (own-keys).", "",
                  "| TLS | ticket keys " + storm_head[0], "|---|---" + storm_head[1]] + two + [""]
    noisy = []
    for u, runs in raw.get("noisy", {}).items():
        if c := storm_cells(runs):
            n = [x["noise"] for x in runs if x.get("noise")]
            nm = (lambda k: statistics.median(x[k] for x in n)) if n else None
            noise = (f"{nm('attempt_rate'):,.0f} tried / {nm('ok_rate'):,.0f} got in" if nm else "—")
            retries = statistics.median(x.get("retries", 0) for x in runs if x.get("back"))
            noisy.append(f"| {u} | " + " | ".join(c) + f" | {retries:.0f} | {noise} |")
    if noisy:
        lines += [f"Reconnect storm with a noisy source ({args.storm} devices, each from its own loopback address; "
                  f"the noisy source {NOISY_SOURCE} in {NOISY_LOOPS} tight loops of full handshakes, SCHED_IDLE on "
                  f"core 0; limit: `max_conn_rate_per_source = {NOISY_RATE}`). Fleet retries: attempts of the fleet "
                  "refused or timed out (a device retries after 200 ms).", "",
                  "| variant " + storm_head[0] + " fleet retries | noisy source per s |",
                  "|---" + storm_head[1] + "---|---|"] + noisy + [""]
    aes = med.get("aes", {}).get("openssl")
    if aes:
        lines += [f"AES-256-GCM on the server core (`openssl speed -evp aes-256-gcm -seconds {args.aes_seconds}`, "
                  f"median): {aes[0]:.0f} MB/s with 16 KiB buffers, {aes[1]:.0f} MB/s with 1 KiB.", ""]
    errs = []
    for f, per in raw.items():
        for t, runs in per.items():
            e = sum(x.get("errors", 0) or 0 for x in runs)
            first = next((x.get("first_error") or x.get("error") for x in runs if x.get("first_error") or x.get("error")), None)
            if e or first:
                errs.append(f"{f}/{t}: {e} errors ({first})")
    if errs:
        lines += ["Client-side errors: " + "; ".join(errs) + ".", ""]
    return "\n".join(lines), med


# The charts: one per group of figures, each target's bar its median ÷ terminator-fwd's.
# The plain-TCP targets (no TLS) are left out of the handshake charts: a TCP connect is no handshake, and
# its bar would squeeze the others.
PLAIN = ("direct", "plain-fwd")
CHARTS = [
    # (file, title, higher is better, [(figure, which value of a pair or None, block name)], targets left out)
    ("handshakes", "Handshakes + CONNECT/CONNACK per second", True,
     [("hs", None, "full, TLS 1.3"), ("resume", None, "resumed, TLS 1.3"),
      ("hs12", None, "full, TLS 1.2"), ("resume12", None, "resumed, TLS 1.2")], PLAIN),
    ("throughput", "Throughput of QoS 0 PUBLISHes into the broker (MB/s)", True,
     [("tp16k", None, "16 KiB PUBLISH"), ("tp1k", None, "1 KiB PUBLISH")], ()),
    ("latency", "PINGREQ → PINGRESP round trip through the proxy (µs)", False,
     [("ping", 0, "p50"), ("ping", 1, "p99")], ()),
    ("memory", "RSS per idle TLS connection (KiB)", False, [("idle", None, "idle connections")], ()),
    ("storm", "Reconnect storm: time until every device is back (s)", False, [("storm", None, "devices")], ()),
]


def chart_data(med, args, meta, conditions):
    """What `bench chart` draws, per chart file, from the medians (blocks without a baseline are left out)."""
    out = {}
    bound = bounds(med)
    for name, title, higher, blocks, left_out in CHARTS:
        groups = []
        for fig, idx, block in blocks:
            per = med.get(fig, {})
            base = per.get(BASELINE)
            base = base[idx] if base is not None and idx is not None else base
            if not base:
                continue
            bars = []
            for t in (t for t in args.targets if t not in left_out):
                v = per.get(t)
                v = v[idx] if v is not None and idx is not None else v
                if v:
                    label = f"{v:.1f}" if fig == "idle" else f"{v:.2f}" if fig == "storm" else f"{v:,.0f}"
                    bars.append({"target": t, "ratio": v / base, "label": f"{label} {FIGURES[fig][1]}"})
            markers = []
            if fig in bound:
                markers.append({"ratio": bound[fig][2] / base,
                                "label": f"single-core bound 1/(1/plain-fwd + 1/AES-GCM): {bound[fig][2]:,.0f} MB/s"})
            if fig == "storm":
                block = f"{args.storm} {block}"
            groups.append({"name": block, "bars": bars, "markers": markers})
        if groups:
            better = "higher" if higher else "lower"
            out[name] = {"title": title, "baseline": BASELINE, "groups": groups,
                         "note": f"Relative to {BASELINE} (the rustls terminator copying to the broker); {better} is "
                                 f"better. bench/run, {meta['started']}.\n{conditions}"}
    return out


def write_charts(med, args, meta, conditions, stem, charts_dir):
    """Writes one SVG per chart beside the Markdown (stem-NAME.svg) and, with charts_dir, as NAME.svg there.
    Returns the files written; raises if bench chart fails."""
    written = []
    for name, data in chart_data(med, args, meta, conditions).items():
        spec = f"{stem}-{name}.json"
        with open(spec, "w") as f:
            json.dump(data, f)
        svg = f"{stem}-{name}.svg"
        p = subprocess.run([BENCH, "chart", spec, svg], capture_output=True, text=True, timeout=60)
        os.remove(spec)
        if p.returncode != 0:
            raise RuntimeError(f"bench chart {name} failed: {p.stderr[-500:]}")
        written.append((name, data["title"], svg))
        if charts_dir:
            os.makedirs(charts_dir, exist_ok=True)
            shutil.copy(svg, os.path.join(charts_dir, f"{name}.svg"))
    return written


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="1 run, short durations, 1,000 idle connections, 500 devices")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--pings", type=int, default=20000)
    ap.add_argument("--idle", type=int, default=9900,
                    help="idle connections; a proxy needs 2 descriptors each and this sandbox's hard limit is 20,000")
    ap.add_argument("--storm", type=int, default=4000, help="devices in the reconnect storms")
    ap.add_argument("--aes-seconds", type=int, default=3, help="seconds of `openssl speed` per buffer size")
    ap.add_argument("--figures", default=",".join(FIGURES))
    # mqtls-shared is an A/B of one setting: run it by naming it (it would add a minute to tests/run's smoke run).
    ap.add_argument("--targets", default=",".join(t for t in ALL_TARGETS + EXTRA_TARGETS if t not in SHARED_TARGETS))
    ap.add_argument("--nice", type=int, default=-10,
                    help="niceness of every benchmark process when run as root (0: leave as is)")
    ap.add_argument("--quiet-wait", type=float, default=60,
                    help="before each round of runs, wait up to this many seconds for other work on the machine "
                         "to fall below a quarter of a core (0: don't wait)")
    ap.add_argument("--pidfile")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results"))
    ap.add_argument("--charts-dir", help="also copy the charts here as NAME.svg (docs/bench for the documentation)")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.seconds, args.pings, args.idle, args.quiet_wait = 1, 2.0, 2000, 1000, 0
        args.storm, args.aes_seconds = 500, 1
    args.runs = max(1, min(args.runs, 20))
    args.aes_seconds = max(1, min(args.aes_seconds, 60))
    args.figures = [f for f in args.figures.split(",") if f]
    args.targets = [t for t in args.targets.split(",") if t]
    for f in args.figures:
        if f not in FIGURES:
            sys.exit(f"unknown figure {f}; known: {', '.join(FIGURES)}")
    for t in args.targets:
        if t not in ALL_TARGETS + EXTRA_TARGETS:
            sys.exit(f"unknown target {t}; known: {', '.join(ALL_TARGETS + EXTRA_TARGETS)}")

    if args.pidfile:
        with open(args.pidfile, "a") as f:
            f.write(f"{os.getpid()}\n")
    if args.nice and os.geteuid() == 0:
        # Kernels with autogroup scheduling (sched_autogroup_enabled) share CPU between sessions first, so
        # a process' own niceness only ranks it inside its session: give the benchmark its own session
        # and raise that session's priority too.
        try:
            os.setsid()
        except OSError:
            pass
        try:
            with open("/proc/self/autogroup", "w") as f:
                f.write(str(args.nice))
        except OSError as e:
            log(f"could not raise the autogroup priority ({e}); figures may be noisier")
    b = Bench(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    meta = {"started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "load_start": loadavg(), "versions": versions(), "load_per_figure": {}}
    results = {f: {} for f in args.figures}
    raw = {f: {} for f in args.figures}
    try:
        b.start_upstreams()
        for f in args.figures:
            loads = [loadavg()]
            for run in range(args.runs):
                if args.quiet_wait > 0:
                    busy = wait_quiet(args.quiet_wait)
                    log(f"{f} run {run + 1}: machine busy {busy:.0f}% of a core before starting")
                for t in units(f, args.targets):
                    try:
                        value, r = b.measure(f, t)
                    except Exception as e:  # one failing peer must not lose the others' figures
                        log(f"{f} {t} run {run + 1}: FAILED: {e}")
                        raw[f].setdefault(t, []).append({"errors": 1, "first_error": str(e)[:300]})
                        continue
                    results[f].setdefault(t, []).append(value)
                    raw[f].setdefault(t, []).append(r)
                    log(f"{f} {t} run {run + 1}: {fmt(f, value)}  {json.dumps(r)}")
            loads.append(loadavg())
            meta["load_per_figure"][f] = loads
    finally:
        b.stop_all()
    meta["load_end"] = loadavg()
    table, med = report(results, raw, args, meta)
    v = meta["versions"]
    conditions = (f"{os.cpu_count()} cores ({v['cpu']}): each server pinned to core {CORE_SERVER}, load generator "
                  f"to core {CORE_LOAD}; ECDSA P-256, client certificates, TLS 1.3 unless marked.")
    header = [
        f"# mqtls benchmark, {meta['started']}",
        "",
        f"Command: `{' '.join(['bench/run'] + [a for a in sys.argv[1:] if a not in ('--pidfile', args.pidfile)])}` "
        f"({args.runs} run(s) per figure, medians; {args.seconds:g} s per rate figure, {args.pings} pings, "
        f"{args.idle} idle connections, {args.storm} storm devices"
        + (", debug build: the figures only show that everything runs" if PROFILE_DIR == "debug" else "") + ").",
        "",
        f"Machine: {os.cpu_count()} cores ({v['cpu']}), kernel {v['kernel']}; servers on core {CORE_SERVER}, "
        f"load generator and upstreams on core {CORE_LOAD}"
        + (f", all at nice {args.nice}." if args.nice and os.geteuid() == 0 else "."),
        f"Load average (1/5/15 min) at start {meta['load_start']}, at end {meta['load_end']}; per figure (before → after): "
        + "; ".join(f"{f} {a} → {z}" for f, (a, z) in meta["load_per_figure"].items()) + ".",
        "",
        "Versions: " + "; ".join(f"{k}: {val}" for k, val in v.items() if k not in ("kernel", "cpu")) + ".",
        "",
    ]
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else ""))
    problems = []
    try:
        charts = write_charts(med, args, meta, conditions, stem, args.charts_dir)
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        charts = []
        problems.append(f"charts: {e}")
    if charts:
        table += "\n" + "\n\n".join(f"![{title}]({os.path.basename(svg)})" for _, title, svg in charts) + "\n"
    text = "\n".join(header) + table + "\n"
    print(text)
    path = stem + ".md"
    with open(path, "w") as f:
        f.write(text)
        f.write("\n<details><summary>raw results</summary>\n\n```json\n" + json.dumps(raw, indent=1) + "\n```\n</details>\n")
    log(f"written to {path}" + "".join(f", {svg}" for _, _, svg in charts))
    # Every figure asked for must have a value for every target it applies to, and every chart must be
    # there: a smoke run (tests/run) fails here, loudly, rather than passing with a hole in the table.
    for f in args.figures:
        for t in units(f, args.targets):
            if not results[f].get(t):
                first = next((x.get("first_error") for x in raw[f].get(t, []) if x.get("first_error")), "no run")
                problems.append(f"{f}/{t}: no value ({first})")
    expected = {name for name, _, _, blocks, _ in CHARTS
                if any(f in args.figures and BASELINE in args.targets for f, _, _ in blocks)}
    missing = expected - {name for name, _, _ in charts}
    if missing and not any(p.startswith("charts:") for p in problems):
        problems.append(f"charts not written: {', '.join(sorted(missing))}")
    if problems:
        log("bench: MISSING FIGURES:\n  " + "\n  ".join(problems))
        sys.exit(1)


if __name__ == "__main__":
    main()
