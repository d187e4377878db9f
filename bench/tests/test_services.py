"""Starting and stopping processes; php-fpm and nginx started from the
generated configurations serve hello.php (skipped without them)."""

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from tqbench import configs, services
from tqbench.measure import children_of
from tqbench.util import free_port, http_get, wait_for

PHP_FPM = next(iter(sorted(glob.glob("/usr/sbin/php-fpm*"))), None)


def alive(pid):
    """Running (not a zombie waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


class Services(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="tqbench-test-")
        self.services = services.Services()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.addCleanup(self.services.stop_all)

    def test_stop_sends_sigterm(self):
        log = os.path.join(self.tmp, "sleeper.log")
        proc = self.services.start("sleeper", ["sh", "-c", "echo started; exec sleep 30"], log)
        self.assertTrue(wait_for(lambda: os.path.getsize(log) > 0, 5))
        self.services.stop("sleeper")
        self.assertEqual(proc.returncode, -15)
        self.assertNotIn("sleeper", self.services.procs)
        with open(log) as f:
            self.assertEqual(f.read(), "started\n")
        self.services.stop("sleeper")  # stopping twice, or a name never started, is fine
        self.services.stop("never-started")

    def test_a_process_that_ignores_sigterm_is_killed_with_its_group(self):
        log = os.path.join(self.tmp, "stubborn.log")
        proc = self.services.start("stubborn", ["sh", "-c", "trap '' TERM; sleep 30 & echo ready; wait"], log)
        self.assertTrue(wait_for(lambda: children_of(proc.pid), 5))
        [child] = children_of(proc.pid)
        self.services.stop("stubborn", grace=0.3)
        self.assertEqual(proc.returncode, -9)
        self.assertTrue(wait_for(lambda: not alive(child), 5), "the grandchild outlived its group")

    def test_stop_all_ends_servers_and_load_generators(self):
        server = self.services.start("server", ["sleep", "30"], os.path.join(self.tmp, "server.log"))
        load = subprocess.Popen(["sleep", "30"])
        self.services.transient.add(load)
        self.services.stop_all()
        self.assertEqual(load.wait(timeout=5), -9)
        self.assertEqual(server.returncode, -15)
        self.assertEqual(self.services.procs, {})

    def test_pinned_argv(self):
        self.assertEqual(services.pinned(["wrk", "-c", "20"], 1), ["taskset", "-c", "1", "wrk", "-c", "20"])
        self.assertEqual(services.pinned(["wrk"], None), ["wrk"])
        self.assertEqual(self.services.load_argv(["ab", "-n", "1"]), ["ab", "-n", "1"])
        self.services.pin(0, 1)
        self.assertEqual(self.services.load_argv(["ab", "-n", "1"]), ["taskset", "-c", "1", "ab", "-n", "1"])

    @unittest.skipUnless(shutil.which("taskset") and {0, 1} <= os.sched_getaffinity(0), "needs taskset and 2 CPUs")
    def test_pinned_servers_run_on_their_cpu_and_so_do_their_children(self):
        self.services.pin(0, 1)
        proc = self.services.start("server", ["sh", "-c", "sleep 30 & wait"], os.path.join(self.tmp, "server.log"))
        self.assertTrue(wait_for(lambda: children_of(proc.pid), 5))
        # taskset execs the server: the pid is the server's own.
        with open(f"/proc/{proc.pid}/comm") as f:
            self.assertEqual(f.read().strip(), "sh")
        self.assertEqual(os.sched_getaffinity(proc.pid), {0})
        self.assertEqual(os.sched_getaffinity(children_of(proc.pid)[0]), {0})

    def test_run_load(self):
        code, out, err = services.run_load([sys.executable, "-c", "print('out'); import sys; sys.exit(3)"], 30)
        self.assertEqual((code, out, err), (3, "out\n", ""))
        self.assertEqual(services.SERVICES.transient, set())

    def test_run_load_past_its_time_is_killed(self):
        code, out, err = services.run_load(["sleep", "30"], 0.2)
        self.assertEqual(code, -9)
        self.assertTrue(err.endswith("(killed: ran past its time)"))
        self.assertEqual(services.SERVICES.transient, set())


@unittest.skipUnless(shutil.which("nginx") and PHP_FPM, "nginx or php-fpm not installed (scripts/deps.sh test)")
class NginxAndPhpFpm(unittest.TestCase):
    """The generated configurations, run: nginx -> php-fpm serves hello.php and the static file."""

    def test_hello_through_nginx_and_php_fpm(self):
        tmp = tempfile.mkdtemp(prefix="tqbench-test-")
        self.addCleanup(shutil.rmtree, tmp, True)
        os.chmod(tmp, 0o755)  # php-fpm's pool runs as www-data when root
        self.addCleanup(services.SERVICES.stop_all)
        public = configs.make_site(tmp)
        conf, sock = configs.fpm_config(tmp, "fpm", "pm = static\npm.max_children = 1\n")
        ports = {name: free_port() for name in ("tqserver", "nginx-fpm", "nginx-fpm-ka", "nginx-burst",
                                                "nginx-tq", "nginx-tq-noka")}
        socks = {"fpm": sock, "fpm-ka": sock, "fpm-burst": sock}
        nginx_conf = configs.nginx_config(tmp, public, ports, socks, os.path.join(tmp, "tq.sock"), 1)
        fpm = services.start_fpm("php-fpm", PHP_FPM, conf, sock, tmp, 1)
        self.assertIsNotNone(fpm, "php-fpm did not start")
        self.assertGreaterEqual(len(children_of(fpm.pid)), 1)
        nginx = services.SERVICES.start("nginx", ["nginx", "-e", os.path.join(tmp, "nginx", "error.log"),
                                                  "-p", os.path.join(tmp, "nginx"), "-c", nginx_conf],
                                        os.path.join(tmp, "nginx.log"))
        base = f"http://127.0.0.1:{ports['nginx-fpm']}"
        self.assertTrue(wait_for(lambda: nginx.poll() is not None or http_get(base + "/idle.txt")[0] == 200, 10),
                        "nginx did not start")
        self.assertEqual(http_get(base + "/hello.php"), (200, b"Hello, World!\n"))
        status, body = http_get(base + "/static10k.html")
        self.assertEqual((status, len(body)), (200, 10240))
        services.SERVICES.stop_all()
        self.assertEqual(services.SERVICES.procs, {})
        self.assertIsNotNone(fpm.poll())


if __name__ == "__main__":
    unittest.main()
