#!/usr/bin/env python3
"""Side-by-side proxy benchmark: Portcullis, nginx and HAProxy behind the same origin,
driven by the same load generators, each proxy pinned to the same single core.

Run through bench/run.sh, which checks the tools and sets the defaults; every knob is an
environment variable (see bench/README.md). Writes raw outputs, results.json and
results.md under the output directory and prints the Markdown table.
"""

import base64
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def env_int(name, default):
    value = os.environ.get(name, "")
    if value == "":
        return default
    try:
        return int(value)
    except ValueError:
        sys.exit(f"bench: {name}={value!r} is not an integer")


class Settings:
    """Every knob, read once from the environment."""

    def __init__(self):
        self.seconds = env_int("BENCH_SECONDS", 10)
        self.conns = env_int("BENCH_CONNS", 50)
        self.rate = env_int("BENCH_RATE", 10000)
        self.rate_conns = env_int("BENCH_RATE_CONNS", 100)
        self.idle_conns = env_int("BENCH_IDLE_CONNS", 10000)
        self.h2_conns = env_int("BENCH_H2_CONNS", 16)
        self.h2_streams = env_int("BENCH_H2_STREAMS", 32)
        self.churn_conns = env_int("BENCH_CHURN_CONNS", 64)
        # One worker like the others by default; more for runs that need the proxy's
        # own concurrency (the seeds' churn appeared with the multi-threaded runtime).
        self.portcullis_threads = env_int("BENCH_PORTCULLIS_THREADS", 1)
        self.scenarios = [
            s.strip() for s in os.environ.get("BENCH_SCENARIOS", "all").split(",") if s.strip()
        ]
        self.proxy_cpu = os.environ.get("BENCH_PROXY_CPU", "0")
        self.load_cpu = os.environ.get("BENCH_LOAD_CPU", "1")
        self.load_threads = env_int("BENCH_LOAD_THREADS", 1)
        # The scaling run: two workers per proxy over both CPUs, load on the same CPUs.
        self.scale_cpus = os.environ.get("BENCH_SCALE_CPUS", f"{self.proxy_cpu},{self.load_cpu}")
        self.scale_workers = env_int("BENCH_SCALE_WORKERS", 2)
        self.port_base = env_int("BENCH_PORT_BASE", 18000)
        self.out = os.path.abspath(os.environ.get("BENCH_OUT", os.path.join(BENCH_DIR, "out")))
        self.proxies = [
            p.strip()
            for p in os.environ.get("BENCH_PROXIES", "nginx,haproxy,portcullis").split(",")
            if p.strip()
        ]
        self.portcullis_bin = os.environ.get("PORTCULLIS_BIN", "")
        self.portcullis_log = os.environ.get("BENCH_PORTCULLIS_LOG", "warn")
        self.nofile = env_int("BENCH_NOFILE", 0) or self.idle_conns * 2 + 4096
        if self.rate % self.rate_conns != 0:
            sys.exit("bench: BENCH_RATE must be a multiple of BENCH_RATE_CONNS")
        for p in self.proxies:
            if p not in ("nginx", "haproxy", "portcullis"):
                sys.exit(f"bench: unknown proxy {p!r} in BENCH_PROXIES")

    def ports(self, proxy):
        offset = {"nginx": 10, "haproxy": 20, "portcullis": 30}[proxy]
        return self.port_base + offset, self.port_base + offset + 1

    @property
    def origin_port(self):
        return self.port_base

    @property
    def admin_port(self):
        return self.port_base + 39

    @property
    def origin_status_port(self):
        return self.port_base + 1

    def wants(self, scenario):
        return "all" in self.scenarios or scenario in self.scenarios


S = None  # the Settings, set in main()


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes and /proc


def pinned(cpu, argv):
    return ["taskset", "-c", str(cpu)] + argv


def descendants(pid):
    """pid and every process below it (nginx master + workers)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(parents.get(p, []))
    return found


def stat_cpu_seconds(path):
    """utime + stime from a /proc stat file, in seconds; None when it is gone."""
    try:
        with open(path) as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def cpu_seconds(pid):
    """utime + stime of pid and its descendants, in seconds (all threads)."""
    return sum(stat_cpu_seconds(f"/proc/{p}/stat") or 0.0 for p in descendants(pid))


def thread_cpu_seconds(pid):
    """utime + stime per thread of pid and its descendants: {(pid, tid): seconds}."""
    out = {}
    for p in descendants(pid):
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tids:
            seconds = stat_cpu_seconds(f"/proc/{p}/task/{t}/stat")
            if seconds is not None:
                out[(p, int(t))] = seconds
    return out


def rss_kib(pid):
    """VmRSS of pid and its descendants, in KiB."""
    total = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def established_to(port):
    """TCP connections in ESTABLISHED state whose remote port is `port` (proxy -> origin)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[3] == "01" and int(cols[2].rsplit(":", 1)[1], 16) == port:
                        count += 1
        except (OSError, StopIteration):
            continue
    return count


def wait_port(port, deadline_s=15.0):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def http_get(port, path="/", host="localhost", timeout=2.0):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, dict(resp.headers), resp.read()


class Proc:
    """A started server process, stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, name, argv, env=None, log_path=None):
        self.name = name
        self.log_path = log_path or os.path.join(S.out, f"{name}.log")
        self.log_file = open(self.log_path, "wb")
        full_env = dict(os.environ)
        full_env.update(env or {})
        log(f"start {name}: {shlex.join(argv)}")
        self.popen = subprocess.Popen(
            argv, stdout=self.log_file, stderr=subprocess.STDOUT, env=full_env,
            stdin=subprocess.DEVNULL,
        )
        self.pid = self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def stop(self):
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        self.log_file.close()

    def tail(self, n=20):
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""


# ---------------------------------------------------------------- config rendering


def render(template_name, dest, values):
    with open(os.path.join(BENCH_DIR, "conf", template_name)) as f:
        text = f.read()
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", str(value))
    left = re.findall(r"@@[A-Z0-9_]+@@", text)
    if left:
        sys.exit(f"bench: {template_name}: unrendered placeholders {sorted(set(left))}")
    with open(dest, "w") as f:
        f.write(text)
    return dest


def nginx_version():
    out = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    m = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    return out, tuple(int(x) for x in m.groups()) if m else (0, 0, 0)


def base_values(proxy=None):
    values = {
        "OUT": S.out,
        "ORIGIN_PORT": S.origin_port,
        "ORIGIN_STATUS_PORT": S.origin_status_port,
        "NOFILE": S.nofile,
        "WORKER_CONNECTIONS": S.nofile,
        "MAXCONN": S.idle_conns + 64,
    }
    if proxy:
        values["HTTP_PORT"], values["HTTPS_PORT"] = S.ports(proxy)
    return values


def start_origin():
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(os.path.join(S.out, "origin-tmp", d), exist_ok=True)
    conf = render("origin.nginx.conf", os.path.join(S.out, "origin.nginx.conf"), base_values())
    proc = Proc("origin", pinned(S.load_cpu, ["nginx", "-p", S.out, "-c", conf]))
    if not wait_port(S.origin_port):
        sys.exit(f"bench: the origin did not start:\n{proc.tail()}")
    status, _, body = http_get(S.origin_port)
    if status != 200 or body != b"ok\n":
        sys.exit(f"bench: the origin answers {status} {body!r}, expected 200 'ok\\n'")
    return proc


def start_nginx(workers=1, cpus=None):
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(os.path.join(S.out, "nginx-tmp", d), exist_ok=True)
    _, ver = nginx_version()
    values = base_values("nginx")
    values["WORKERS"] = workers
    if ver >= (1, 25, 1):
        values["NGINX_H2_LISTEN"], values["NGINX_H2_DIRECTIVE"] = "", "http2 on;"
    else:
        values["NGINX_H2_LISTEN"], values["NGINX_H2_DIRECTIVE"] = "http2", ""
    conf = render("proxy.nginx.conf", os.path.join(S.out, "nginx.conf"), values)
    return Proc("nginx", pinned(cpus or S.proxy_cpu, ["nginx", "-p", S.out, "-c", conf])), None


def start_haproxy(workers=1, cpus=None):
    values = base_values("haproxy")
    values["WORKERS"] = workers
    conf = render("haproxy.cfg", os.path.join(S.out, "haproxy.cfg"), values)
    return Proc("haproxy", pinned(cpus or S.proxy_cpu, ["haproxy", "-db", "-f", conf])), None


def portcullis_help():
    try:
        return subprocess.run(
            [S.portcullis_bin, "--help"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def start_portcullis(extra_args=(), workers=None, cpus=None):
    if not S.portcullis_bin or not os.access(S.portcullis_bin, os.X_OK):
        raise RuntimeError(f"no Portcullis binary at {S.portcullis_bin!r} (set PORTCULLIS_BIN)")
    manifests = os.path.join(S.out, "portcullis-manifests")
    certs = os.path.join(manifests, "certs", "bench-tls")
    os.makedirs(certs, exist_ok=True)
    for name in ("tls.crt", "tls.key"):
        shutil.copyfile(os.path.join(S.out, "tls", name), os.path.join(certs, name))
    render("portcullis.yaml", os.path.join(manifests, "bench.yaml"), base_values("portcullis"))

    keyring = os.path.join(S.out, "keyring.yaml")
    with open(keyring, "w") as f:
        created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        secret = base64.b64encode(os.urandom(32)).decode()
        f.write(f"keys:\n- id: bench\n  secret: {secret}\n  created: {created}\n  state: active\n")
    os.chmod(keyring, 0o600)

    help_text = portcullis_help()
    argv = [
        S.portcullis_bin, "--manifests", manifests, "--bind", "127.0.0.1",
        "--admin", f"127.0.0.1:{S.admin_port}", "--keyring", keyring,
    ]
    env = {"RUST_LOG": S.portcullis_log}
    if "--log-format" in help_text:
        argv += ["--log-format", "text"]
    threads = workers or S.portcullis_threads
    threads_flag = next(
        (f for f in ("--worker-threads", "--threads", "--workers") if f in help_text), None
    )
    if threads_flag:
        argv += [threads_flag, str(threads)]
        how = f"{threads_flag} {threads}"
    else:
        env["TOKIO_WORKER_THREADS"] = str(threads)
        how = (f"TOKIO_WORKER_THREADS={threads} "
               "(the binary has no worker-thread flag)")
    argv += list(extra_args)
    proc = Proc("portcullis", pinned(cpus or S.proxy_cpu, argv), env=env)
    return proc, how


def start_portcullis_traced():
    """Portcullis recording a span for every request and exporting them by OTLP/HTTP to
    the origin, which answers every POST with 200 like a collector that keeps nothing."""
    if "--otlp-endpoint" not in portcullis_help():
        raise RuntimeError("this Portcullis binary has no --otlp-endpoint flag")
    return start_portcullis([
        "--otlp-endpoint", f"http://127.0.0.1:{S.origin_port}/v1/traces",
        "--trace-sample-ratio", "1",
    ])


STARTERS = {"nginx": start_nginx, "haproxy": start_haproxy, "portcullis": start_portcullis,
            "portcullis-traced": start_portcullis_traced}


def start_proxy(proxy, starter=None, **kw):
    proc, note = STARTERS[starter or proxy](**kw)
    http_port, https_port = S.ports(proxy)
    ok = wait_port(http_port) and wait_port(https_port)
    if ok and proxy == "portcullis":
        end = time.monotonic() + 15
        ok = False
        while time.monotonic() < end and not ok:
            try:
                ok = http_get(S.admin_port, "/readyz")[0] == 200
            except OSError:
                time.sleep(0.2)
    if not ok or not proc.alive():
        proc.stop()
        raise RuntimeError(f"{proxy} did not become ready: {proc.tail(5)}")
    try:
        status, _, body = http_get(http_port)
    except OSError as e:
        status, body = str(e), b""
    if status != 200 or body != b"ok\n":
        proc.stop()
        raise RuntimeError(f"{proxy} answers {status} {body!r} instead of the origin's 200")
    return proc, note


# ---------------------------------------------------------------- load generators


def run_tool(name, argv, timeout):
    log(f"{name}: {shlex.join(argv)}")
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    with open(os.path.join(S.out, f"{name}.txt"), "w") as f:
        f.write(f"$ {shlex.join(argv)}\n{res.stdout}\n{res.stderr}")
    if res.returncode != 0:
        raise RuntimeError(f"{name} failed ({res.returncode}): {res.stderr.strip()[-500:]}")
    return res.stdout


def seconds_of(value, unit):
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


def parse_wrk(out):
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", out)
    if not m:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    requests, elapsed = int(m.group(1)), seconds_of(m.group(2), m.group(3))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    lat = {}
    for pct in ("50", "99"):
        lm = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)", out, re.M)
        if lm:
            lat[f"p{pct}_ms"] = seconds_of(lm.group(1), lm.group(2)) * 1e3
    return {
        "requests": requests,
        "elapsed_s": elapsed,
        "rps": requests / elapsed if elapsed else 0.0,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
        **lat,
    }


def parse_h2load(out):
    m = re.search(r"finished in ([\d.]+)(us|ms|s|m), ([\d.]+) req/s", out)
    r = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored", out)
    if not m or not r:
        raise RuntimeError(f"cannot parse h2load output:\n{out}")
    proto = re.search(r"Application protocol: (\S+)", out)
    return {
        "elapsed_s": seconds_of(m.group(1), m.group(2)),
        "rps": float(m.group(3)),
        "requests": int(r.group(4)),
        "failed": int(r.group(5)),
        "errored": int(r.group(6)),
        "protocol": proto.group(1) if proto else None,
    }


def measured(proc, name, fn):
    """Runs a load, returns its parsed result with the proxy's CPU seconds over it."""
    time.sleep(1.0)  # let the previous run's connections close
    before = cpu_seconds(proc.pid)
    result = fn()
    result["proxy_cpu_s"] = cpu_seconds(proc.pid) - before
    if result.get("elapsed_s"):
        result["proxy_core_busy_pct"] = 100.0 * result["proxy_cpu_s"] / result["elapsed_s"]
    if result.get("requests") and "target_rps" not in result:  # h2load's warm-up is not counted
        result["cpu_s_per_100k"] = result["proxy_cpu_s"] / result["requests"] * 1e5
    if not proc.alive():
        raise RuntimeError(f"{proc.name} exited during {name}:\n{proc.tail()}")
    log(f"{name}: {json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()})}")
    return result


def wrk(proxy, name, url, headers=(), seconds=None, conns=None, threads=None, cpus=None):
    argv = ["wrk", f"-t{threads or S.load_threads}", f"-c{conns or S.conns}",
            f"-d{seconds or S.seconds}s", "--latency"]
    for h in headers:
        argv += ["-H", h]
    argv.append(url)
    return parse_wrk(run_tool(
        f"{proxy}.{name}", pinned(cpus or S.load_cpu, argv), S.seconds * 4 + 60))


def h2load(proxy, name, argv, timeout):
    return parse_h2load(run_tool(f"{proxy}.{name}", pinned(S.load_cpu, ["h2load"] + argv), timeout))


def latency_at_rate(proxy, url):
    log_file = os.path.join(S.out, f"{proxy}.latency.tsv")
    per_client = S.rate // S.rate_conns
    res = h2load(proxy, "latency", [
        "--h1", f"-t{S.load_threads}", f"-c{S.rate_conns}", f"--rps={per_client}", f"-D{S.seconds}",
        "--warm-up-time=1", f"--log-file={log_file}", url,
    ], S.seconds * 4 + 60)
    times = []
    with open(log_file) as f:
        for line in f:
            cols = line.split("\t")
            if len(cols) >= 3 and cols[1] == "200":
                times.append(int(cols[2]) / 1000.0)
    times.sort()
    if not times:
        raise RuntimeError("h2load logged no successful request")

    def pct(p):
        return times[min(len(times) - 1, max(0, int(round(p / 100.0 * len(times))) - 1))]

    res.update({"p50_ms": pct(50), "p99_ms": pct(99), "p999_ms": pct(99.9),
                "samples": len(times), "target_rps": S.rate})
    res["saturated"] = res["rps"] < 0.95 * S.rate
    return res


CHURN_LUA = """-- Spreads requests over the three churn farms, one Host per request in turn.
local hosts = {"churn-a.localhost", "churn-b.localhost", "churn-c.localhost"}
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/", {Host = hosts[n % 3 + 1]})
end
"""


def origin_accepts():
    """Connections the origin accepted so far (nginx stub_status)."""
    status, _, body = http_get(S.origin_status_port)
    if status != 200:
        raise RuntimeError(f"origin stub_status answered {status}")
    lines = body.decode().splitlines()
    return int(lines[2].split()[0])


def churn(proxy, port):
    """The seeds' churn: 64 keep-alive clients over three farms (or upstreams) that name
    one origin; counts the origin connections the proxy opened meanwhile."""
    script = os.path.join(S.out, "churn.lua")
    with open(script, "w") as f:
        f.write(CHURN_LUA)
    time.sleep(1.0)
    before = origin_accepts()
    argv = ["wrk", f"-t{S.load_threads}", f"-c{S.churn_conns}", f"-d{S.seconds}s", "-s", script,
            f"http://127.0.0.1:{port}/"]
    res = parse_wrk(run_tool(f"{proxy}.churn", pinned(S.load_cpu, argv), S.seconds * 4 + 60))
    res["origin_connections_opened"] = origin_accepts() - before
    res["origin_connections_per_10k_requests"] = (
        res["origin_connections_opened"] / res["requests"] * 1e4 if res.get("requests") else None)
    log(f"churn: {json.dumps(res)}")
    return res


def scaling(proxy, one_worker):
    """The h1 run with the proxy's workers on both CPUs: S.scale_workers workers (nginx
    worker processes, HAProxy threads, Portcullis runtime threads) pinned to
    S.scale_cpus, and wrk with as many threads (S.conns connections each) on the same
    CPUs; the origin stays where it is. On a machine whose load generator must share the
    proxy's cores, throughput cannot show scaling; CPU per request can: the estimate is
    workers x (one worker's CPU per request) / (CPU per request with the workers), i.e.
    what the workers would serve on cores of their own if each kept the one-worker rate.
    It falls below the worker count by whatever the workers spend on each other (locks,
    shared counters, cross-core wake-ups). The busiest threads' CPU shows whether the
    workers really shared the load."""
    if not (isinstance(one_worker, dict) and one_worker.get("cpu_s_per_100k")):
        raise RuntimeError("no one-worker h1 run to compare with")
    http_port, _ = S.ports(proxy)
    url = f"http://localhost:{http_port}/"
    proc, _ = start_proxy(proxy, workers=S.scale_workers, cpus=S.scale_cpus)
    try:
        run = dict(threads=S.scale_workers, cpus=S.scale_cpus, conns=S.conns * S.scale_workers)
        wrk(proxy, "scaling-warmup", url, seconds=2, **run)
        before = thread_cpu_seconds(proc.pid)
        result = measured(proc, "scaling", lambda: wrk(proxy, "scaling", url, **run))
        after = thread_cpu_seconds(proc.pid)
    finally:
        proc.stop()
    busiest = sorted((after[k] - before.get(k, 0.0) for k in after), reverse=True)
    result["busiest_threads_cpu_s"] = [round(b, 2) for b in busiest[: S.scale_workers + 1]]
    top = busiest[: S.scale_workers]
    result["worker_balance"] = (min(top) / max(top)) if top and max(top) > 0 else None
    result["workers"] = S.scale_workers
    result["scaling"] = (
        S.scale_workers * one_worker["cpu_s_per_100k"] / result["cpu_s_per_100k"])
    log(f"{proxy} scaling estimate: {result['scaling']:.2f}x, busiest threads "
        f"{result['busiest_threads_cpu_s']}")
    return result


def idle_memory(proc, port):
    time.sleep(1.0)
    before = rss_kib(proc.pid)
    argv = pinned(S.load_cpu, [
        sys.executable, os.path.join(BENCH_DIR, "idle_conns.py"),
        "--port", str(port), "--connections", str(S.idle_conns),
    ])
    log(f"idle connections: {shlex.join(argv)}")
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ready = json.loads(child.stdout.readline() or "{}")
        if ready.get("event") != "ready":
            raise RuntimeError("idle_conns.py did not report ready")
        time.sleep(2.0)  # let the proxy finish its bookkeeping for the last ones
        after = rss_kib(proc.pid)
        upstream = established_to(S.origin_port)
        child.stdin.close()
        done = json.loads(child.stdout.readline() or "{}")
    finally:
        if child.poll() is None:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
    # Memory given back once the connections are gone (allocator retention shows here).
    time.sleep(3.0)
    closed = rss_kib(proc.pid)
    open_conns = ready["open"] - done.get("closed_by_peer", 0)
    res = {
        "rss_before_kib": before,
        "rss_after_kib": after,
        "rss_after_close_kib": closed,
        "retained_after_close_kib": closed - before,
        "connections_opened": ready["open"],
        "connections_failed": ready["failed"],
        "first_failures": ready.get("first_failures", []),
        "closed_by_proxy_while_idle": done.get("closed_by_peer"),
        "upstream_connections_established": upstream,
        "kib_per_connection": (after - before) / ready["open"] if ready["open"] else None,
    }
    if open_conns < ready["open"]:
        res["note"] = f"only {open_conns} of {ready['open']} stayed open"
    log(f"idle memory: {json.dumps(res)}")
    return res


def closes_on_request(port):
    """Whether the proxy answers `Connection: close` over TLS and then closes."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                data = b""
                while True:
                    chunk = tls.recv(4096)
                    if not chunk:
                        return True
                    data += chunk
    except (OSError, ssl.SSLError):
        return False


def affinity_sets_cookie(port):
    try:
        _, headers, _ = http_get(port, host="affinity.localhost")
    except OSError:
        return False
    return any(k.lower() == "set-cookie" for k in headers)


def bench_proxy(proxy):
    http_port, https_port = S.ports(proxy)
    proc, note = start_proxy(proxy)
    results = {"start_note": note}
    http_url = f"http://localhost:{http_port}/"
    https_url = f"https://localhost:{https_port}/"

    def step(key, fn, own_proxy=False):
        """One scenario; a failure is recorded and the next scenario still runs."""
        if key != "warmup" and not S.wants(key):
            return
        if not own_proxy and not proc.alive():
            results[key] = {"error": f"{proxy} is no longer running"}
            return
        try:
            results[key] = fn()
        except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as e:
            log(f"{proxy} {key} failed: {e}")
            results[key] = {"error": str(e).splitlines()[0] if str(e) else type(e).__name__}

    try:
        # Warm-up: opens the upstream pool and faults in the code paths.
        step("warmup", lambda: wrk(proxy, "warmup", http_url, seconds=2))
        step("idle_memory", lambda: idle_memory(proc, http_port))
        step("h1", lambda: measured(proc, "h1", lambda: wrk(proxy, "h1", http_url)))
        step("latency", lambda: measured(
            proc, "latency", lambda: latency_at_rate(proxy, http_url)))
        step("https", lambda: measured(proc, "https", lambda: wrk(proxy, "https", https_url)))
        if S.wants("handshakes"):
            results["handshake_closes"] = closes_on_request(https_port)
        step("handshakes", lambda: measured(
            proc, "handshakes",
            lambda: wrk(proxy, "handshakes", https_url, headers=["Connection: close"])))
        step("h2", lambda: measured(proc, "h2", lambda: h2load(proxy, "h2", [
            f"-t{S.load_threads}", f"-c{S.h2_conns}", f"-m{S.h2_streams}",
            f"-D{S.seconds}", https_url,
        ], S.seconds * 4 + 60)))
        if "protocol" in results.get("h2", {}) and results["h2"]["protocol"] != "h2":
            results["h2"]["note"] = f"negotiated {results['h2']['protocol']}, not h2"
        if proxy in ("haproxy", "portcullis") and S.wants("affinity"):
            results["affinity_sets_cookie"] = affinity_sets_cookie(http_port)
            step("affinity", lambda: measured(
                proc, "affinity",
                lambda: wrk(proxy, "affinity", http_url, headers=["Host: affinity.localhost"])))
        step("churn", lambda: churn(proxy, http_port))
        results["rss_end_kib"] = rss_kib(proc.pid)
    finally:
        proc.stop()
    step("scaling", lambda: scaling(proxy, results.get("h1")), own_proxy=True)
    if proxy == "portcullis" and S.wants("traced"):
        results["traced"] = traced(http_url)
    return results


def traced(http_url):
    """The h1 run again with a span per request exported by OTLP: the cost of tracing."""
    try:
        proc, _ = start_proxy("portcullis", "portcullis-traced")
    except RuntimeError as e:
        return {"error": str(e).splitlines()[0]}
    try:
        wrk("portcullis", "traced-warmup", http_url, seconds=2)
        run = measured(proc, "traced", lambda: wrk("portcullis", "traced", http_url))
        try:
            _, _, body = http_get(S.admin_port, "/metrics")
            m = re.search(rb'portcullis_trace_spans_total\{outcome="exported"\} (\d+)', body)
            run["spans_exported"] = int(m.group(1)) if m else 0
        except OSError:
            pass
        return run
    except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as e:
        return {"error": str(e).splitlines()[0] if str(e) else type(e).__name__}
    finally:
        proc.stop()


# ---------------------------------------------------------------- report


def first_line(argv):
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "missing"
    text = (res.stdout + res.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def portcullis_version(git):
    """The binary's --version and build time, and the repository revision next to it (the
    binary may come from PORTCULLIS_BIN, built from another revision)."""
    parts = []
    if S.portcullis_bin and os.access(S.portcullis_bin, os.X_OK):
        parts.append(first_line([S.portcullis_bin, "--version"]))
        built = datetime.datetime.fromtimestamp(
            os.path.getmtime(S.portcullis_bin), datetime.timezone.utc)
        parts.append(f"binary built {built.strftime('%Y-%m-%d %H:%M UTC')}")
    if git:
        parts.append(f"repository at git {git}")
    return ", ".join(parts) or "unknown"


def machine_info():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    with open("/proc/loadavg") as f:
        loadavg = " ".join(f.read().split()[:3])
    git = subprocess.run(["git", "-C", REPO_DIR, "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip()
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": f"{platform.system()} {platform.release()}",
        "loadavg_start": loadavg,
        "nginx": nginx_version()[0],
        "haproxy": first_line(["haproxy", "-v"]),
        "wrk": first_line(["wrk", "-v"]),
        "h2load": first_line(["h2load", "--version"]),
        "portcullis": portcullis_version(git),
    }
    return info


def fmt(value, digits=2):
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def get(results, proxy, *path):
    cur = results.get(proxy)
    for key in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(key)
    return cur


ROWS = [
    # label, path, better ("higher"/"lower"), digits
    ("HTTP/1.1 keep-alive, req/s (wrk, {conns} conns)", ("h1", "rps"), "higher", 0),
    ("**Proxy CPU per 100k HTTP/1.1 keep-alive requests, s** (ranks)",
     ("h1", "cpu_s_per_100k"), "lower", 2),
    ("HTTP/1.1 keep-alive, every request traced (OTLP export), req/s",
     ("traced", "rps"), "higher", 0),
    ("Proxy CPU per 100k HTTP/1.1 requests, every request traced, s",
     ("traced", "cpu_s_per_100k"), "lower", 2),
    ("Latency p50 at {rate_k}k req/s, ms (h2load --h1, {rate_conns} conns)",
     ("latency", "p50_ms"), "lower", 2),
    ("Latency p99 at {rate_k}k req/s, ms", ("latency", "p99_ms"), "lower", 2),
    ("Memory per idle keep-alive connection, KiB ({idle_k}k conns, RSS delta)",
     ("idle_memory", "kib_per_connection"), "lower", 2),
    ("Memory kept 3 s after the idle connections closed, KiB (RSS over the start)",
     ("idle_memory", "retained_after_close_kib"), "lower", 0),
    ("HTTPS keep-alive, req/s (wrk, {conns} conns)", ("https", "rps"), "higher", 0),
    ("Proxy CPU per 100k HTTPS keep-alive requests, s", ("https", "cpu_s_per_100k"), "lower", 2),
    ("New TLS handshakes/s (wrk, `Connection: close`)", ("handshakes", "rps"), "higher", 0),
    ("Proxy CPU per 100k TLS handshakes (+1 request each), s",
     ("handshakes", "cpu_s_per_100k"), "lower", 1),
    ("HTTP/2 over TLS, req/s (h2load {h2c} conns x {h2s} streams)", ("h2", "rps"), "higher", 0),
    ("Proxy CPU per 100k HTTP/2 requests, s", ("h2", "cpu_s_per_100k"), "lower", 2),
    ("HTTP/1.1 keep-alive with cookie affinity, req/s (Set-Cookie on every response)",
     ("affinity", "rps"), "higher", 0),
    ("Proxy CPU per 100k requests with cookie affinity, s",
     ("affinity", "cpu_s_per_100k"), "lower", 2),
    ("HTTP/1.1 keep-alive, {scale_w} workers on CPUs {scale_cpus} with the load, req/s",
     ("scaling", "rps"), "higher", 0),
    ("Proxy CPU per 100k HTTP/1.1 requests, {scale_w} workers, s",
     ("scaling", "cpu_s_per_100k"), "lower", 2),
    ("**{scale_w}-worker scaling estimate** ({scale_w} x one worker's CPU/request / "
     "{scale_w} workers' CPU/request)", ("scaling", "scaling"), "higher", 2),
    ("**Origin connections opened, churn run** (3 farms naming one origin, {churn_c} "
     "keep-alive clients, {seconds} s)", ("churn", "origin_connections_opened"), "lower", 0),
    ("Origin connections opened per 10k requests, churn run",
     ("churn", "origin_connections_per_10k_requests"), "lower", 2),
]


def table(results):
    labels = {
        "conns": S.conns, "rate_k": f"{S.rate / 1000:g}", "rate_conns": S.rate_conns,
        "idle_k": f"{S.idle_conns / 1000:g}", "h2c": S.h2_conns, "h2s": S.h2_streams,
        "churn_c": S.churn_conns, "seconds": S.seconds,
        "scale_w": S.scale_workers, "scale_cpus": S.scale_cpus,
    }
    names = {"nginx": "nginx", "haproxy": "HAProxy", "portcullis": "Portcullis"}
    cols = [p for p in ("nginx", "haproxy", "portcullis") if p in results]
    ratio_cols = [p for p in ("nginx", "haproxy") if p in results] if "portcullis" in results else []
    head = ["Metric (better)"] + [names[p] for p in cols] + [
        f"Portcullis / {names[p]}" for p in ratio_cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(
        ["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for label, path, better, digits in ROWS:
        values = {p: get(results, p, *path) for p in cols}
        if all(v is None for v in values.values()):
            continue
        cells = [f"{label.format(**labels)} ({better})"]
        for p in cols:
            v = values[p]
            cell = fmt(v, digits)
            if path[0] == "affinity" and p == "nginx":
                cell = "n/a (no sticky cookie in nginx OSS)"
            if path[0] == "latency" and get(results, p, "latency", "saturated"):
                cell += " (saturated)"
            cells.append(cell)
        for p in ratio_cols:
            pv, rv = values.get("portcullis"), values.get(p)
            cells.append(f"{pv / rv:.2f}x" if pv is not None and rv else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(results):
    out = []
    for p, r in results.items():
        if not isinstance(r, dict):
            continue
        if r.get("start_note"):
            out.append(f"- {p}: single-threaded runtime via {r['start_note']}.")
        mem = r.get("idle_memory") or {}
        if "connections_opened" in mem:
            out.append(
                f"- {p}: idle test opened {mem['connections_opened']} connections "
                f"({mem['connections_failed']} failed), the proxy held "
                f"{mem['upstream_connections_established']} origin connections, RSS "
                f"{mem['rss_before_kib']} -> {mem['rss_after_kib']} KiB"
                + (f"; {mem['note']}" if mem.get("note") else "") + ".")
        busy = [f"{key} {r[key]['proxy_core_busy_pct']:.0f}%"
                for key in ("h1", "latency", "https", "handshakes", "h2", "affinity")
                if isinstance(r.get(key), dict) and "proxy_core_busy_pct" in r[key]]
        if busy:
            out.append(f"- {p}: proxy core busy: " + ", ".join(busy) + ".")
        for key in ("h1", "https", "handshakes", "h2", "affinity"):
            run = r.get(key) or {}
            bad = run.get("non_2xx", 0) + run.get("socket_errors", 0) + run.get(
                "failed", 0) + run.get("errored", 0)
            if bad:
                out.append(f"- {p} {key}: {bad} failed/non-2xx requests or socket errors.")
            if run.get("note"):
                out.append(f"- {p} {key}: {run['note']}.")
        sc = r.get("scaling") or {}
        if sc.get("busiest_threads_cpu_s"):
            out.append(
                f"- {p} scaling run: CPU seconds of the busiest threads/processes "
                f"{sc['busiest_threads_cpu_s']} (the workers' balance "
                f"{sc['worker_balance']:.2f}), proxy busy {sc.get('proxy_core_busy_pct', 0):.0f}% "
                f"of one core.")
        for key in ("warmup", "idle_memory", "h1", "latency", "https", "handshakes", "h2",
                    "affinity", "scaling"):
            run = r.get(key)
            if isinstance(run, dict) and run.get("error"):
                out.append(f"- {p} {key}: FAILED: {run['error']}")
        t, h = r.get("traced") or {}, r.get("h1") or {}
        if t.get("cpu_s_per_100k") and h.get("cpu_s_per_100k"):
            out.append(
                f"- {p}: tracing every request costs {t['cpu_s_per_100k'] / h['cpu_s_per_100k']:.2f}x "
                f"the CPU per request of the untraced h1 run "
                f"({t.get('spans_exported', 0):,} spans exported).")
        if t.get("error"):
            out.append(f"- {p} traced: FAILED: {t['error']}")
        if r.get("handshake_closes") is False:
            out.append(f"- {p}: did not close after `Connection: close`; the handshake row "
                       "is not a handshake rate.")
        if "affinity_sets_cookie" in r and not r["affinity_sets_cookie"]:
            out.append(f"- {p}: the affinity farm sent no Set-Cookie.")
        if r.get("error"):
            out.append(f"- {p}: FAILED: {r['error']}")
    return "\n".join(out)


def main():
    global S
    S = Settings()
    os.makedirs(S.out, exist_ok=True)
    command = os.environ.get("BENCH_COMMAND", "bench/run.sh")
    info = machine_info()
    log(f"machine: {json.dumps(info)}")

    results = {}
    origin = start_origin()
    try:
        for proxy in S.proxies:
            log(f"=== {proxy}")
            try:
                results[proxy] = bench_proxy(proxy)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                log(f"{proxy} failed: {e}")
                results[proxy] = {"error": str(e).splitlines()[0]}
            if not origin.alive():
                sys.exit(f"bench: the origin died:\n{origin.tail()}")
    finally:
        origin.stop()
    with open("/proc/loadavg") as f:
        info["loadavg_end"] = " ".join(f.read().split()[:3])

    settings = {k: v for k, v in vars(S).items()}
    with open(os.path.join(S.out, "results.json"), "w") as f:
        json.dump({"machine": info, "settings": settings, "command": command,
                   "results": results}, f, indent=2)

    md = [
        f"Command: `{command}`",
        "",
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), {info['kernel']}; "
        f"load average {info['loadavg_start']} at start, {info['loadavg_end']} at end. "
        f"Each proxy pinned to CPU {S.proxy_cpu} with one worker/thread; origin (nginx, one "
        f"worker) and load generators pinned to CPU {S.load_cpu}; {S.seconds} s per run.",
        "",
        f"Versions: {info['nginx']}; {info['haproxy']}; {info['wrk']}; {info['h2load']}; "
        f"Portcullis {info['portcullis']}.",
        "",
        table(results),
        "",
        "Ratios are Portcullis / other: below 1.00x is better for CPU, latency and memory, "
        "above 1.00x is better for req/s. The affinity row compares Portcullis' sealed "
        "(AEAD-encrypted) cookie with HAProxy's plain `cookie SRV insert`; wrk sends "
        "no cookie, so every response gets a new Set-Cookie.",
    ]
    extra = notes(results)
    if extra:
        md += ["", "Notes:", extra]
    text = "\n".join(md) + "\n"
    with open(os.path.join(S.out, "results.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
