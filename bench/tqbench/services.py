"""The processes the harness starts (servers and load generators), and
stopping them whatever happens: each server runs in its own session, is
stopped with SIGTERM, and after a grace period its whole process group is
killed. With --pin, servers run on one CPU and load generators on another
(taskset)."""

import os
import signal
import subprocess

from .measure import children_of, php_workers
from .paths import TQSERVER
from .util import http_get, wait_for


# --pin: the servers' CPU and the load generators'.
PIN_SERVER_CPU, PIN_LOAD_CPU = 0, 1


def pinned(argv, cpu):
    """argv run on CPU `cpu` only (taskset; its children inherit that), or
    as it is when cpu is None."""
    return argv if cpu is None else ["taskset", "-c", str(cpu)] + argv


class Services:
    """Every long-running process the harness starts; all are stopped on exit."""

    def __init__(self):
        self.procs = {}  # name -> Popen
        self.transient = set()  # load generators running right now
        self.server_cpu = None  # with --pin, the CPU every server runs on
        self.load_cpu = None  # and the load generators'

    def pin(self, server_cpu=PIN_SERVER_CPU, load_cpu=PIN_LOAD_CPU):
        """From now on, servers start on server_cpu and load generators (see
        load_argv) on load_cpu."""
        self.server_cpu, self.load_cpu = server_cpu, load_cpu

    def load_argv(self, argv):
        """A load generator's argv as it is run (and recorded)."""
        return pinned(argv, self.load_cpu)

    def start(self, name, argv, log_path):
        """Starts a server (on the servers' CPU with --pin)."""
        argv = pinned(argv, self.server_cpu)
        log = open(log_path, "ab")
        # Own session: a Ctrl-C at the terminal reaches the harness, which
        # then stops servers in order instead of leaving them half-dead.
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def stop(self, name, grace=5.0):
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            # The whole group: nginx and php-fpm workers, tqserver's php-cgi.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    def stop_all(self):
        for proc in list(self.transient):
            if proc.poll() is None:
                proc.kill()
        for name in list(self.procs):
            self.stop(name)


SERVICES = Services()


def on_signal(signum, _frame):
    raise SystemExit(f"bench/run: stopped by signal {signum}")


def run_load(argv, timeout):
    """Runs a load generator to the end and returns its stdout."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    SERVICES.transient.add(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err += "\n(killed: ran past its time)"
    finally:
        SERVICES.transient.discard(proc)
    return proc.returncode, out, err



def start_tqserver(name, config_path, port, tmp, expected_workers, runtime="cgi", probe="/hello.php"):
    """Starts tqserver; returns its Popen once `probe` answers 200 (and once
    expected_workers of its PHP workers run, or 10 s passed), or None and a
    reason."""
    check = subprocess.run([TQSERVER, "check", "--config", config_path],
                           capture_output=True, text=True)
    if check.returncode != 0:
        return None, f"tqserver check refused the config: {(check.stdout + check.stderr).strip()}"
    proc = SERVICES.start(name, [TQSERVER, "run", "--config", config_path],
                          os.path.join(tmp, f"{name}.log"))
    ok = wait_for(lambda: proc.poll() is not None or http_get(
        f"http://127.0.0.1:{port}{probe}", timeout=2)[0] == 200, 30, 0.1)
    if not ok or proc.poll() is not None:
        SERVICES.stop(name)
        with open(os.path.join(tmp, f"{name}.log")) as f:
            tail = f.read()[-2000:]
        return None, f"tqserver did not start serving: {tail}"
    wait_for(lambda: len(php_workers(proc.pid, runtime)) >= expected_workers, 10)
    return proc, None


def start_fpm(name, php_fpm, conf, sock, tmp, expected):
    proc = SERVICES.start(name, [php_fpm, "--nodaemonize", "--fpm-config", conf],
                          os.path.join(tmp, f"{name}.log"))
    if not wait_for(lambda: os.path.exists(sock) or proc.poll() is not None, 15) or proc.poll() is not None:
        return None
    wait_for(lambda: len(children_of(proc.pid)) >= expected, 10)
    return proc

