"""bench/run's command line, and the entry point end to end on saved results."""

import contextlib
import io
import os
import subprocess
import sys
import tempfile
import unittest
from unittest import mock

from tqbench import cli, runner, services
from tqbench.services import Services
from tqbench.util import round_order

from . import support

RUN = os.path.join(support.BENCH, "run")
DOC = "Summary line\none.\n\nMore text."


class Options(unittest.TestCase):
    def test_defaults(self):
        args = cli.parse_args(DOC, [])
        self.assertEqual((args.rounds, args.duration, args.warmup, args.burst_rounds, args.docs, args.workers,
                          args.connections, args.only, args.render),
                         (3, 5.0, 1.0, 3, True, 4, 10000, None, None))

    def test_quick(self):
        args = cli.parse_args(DOC, ["--quick"])
        self.assertEqual((args.rounds, args.duration, args.warmup, args.burst_rounds, args.docs), (1, 2.0, 1.0, 1, False))
        self.assertTrue(cli.parse_args(DOC, ["--quick", "--docs"]).docs)
        self.assertFalse(cli.parse_args(DOC, ["--no-docs"]).docs)

    def test_explicit_values(self):
        args = cli.parse_args(DOC, ["--quick", "--rounds", "2", "--duration", "1.5", "--warmup", "0",
                                    "--only", "hello_c20,memory", "--workers", "8"])
        self.assertEqual((args.rounds, args.duration, args.warmup, args.only, args.workers),
                         (2, 1.5, 0.0, "hello_c20,memory", 8))


class Pin(unittest.TestCase):
    def test_option(self):
        self.assertFalse(cli.parse_args(DOC, []).pin)
        self.assertTrue(cli.parse_args(DOC, ["--pin"]).pin)

    def test_needs_both_cpus(self):
        with self.assertRaises(SystemExit) as caught:
            cli.pin(Services(), allowed={0})
        self.assertIn("--pin needs CPUs 0 and 1; this process may use [0]", str(caught.exception))

    def test_servers_on_cpu_0_load_and_harness_on_cpu_1(self):
        services = Services()
        with mock.patch("os.sched_setaffinity") as setaffinity, contextlib.redirect_stderr(io.StringIO()):
            cli.pin(services, allowed={0, 1, 2, 3})
        setaffinity.assert_called_once_with(0, {1})
        self.assertEqual((services.server_cpu, services.load_cpu), (0, 1))


class LoadCommands(unittest.TestCase):
    """What the scenarios run, pinned or not."""

    def bench(self, pin):
        bench = runner.Bench(cli.parse_args(DOC, ["--pin"] if pin else []), "/tmp/x")
        bench.urls = {"tqserver": "http://127.0.0.1:1"}
        bench.public, bench.php_cgi, bench.ceiling_php_cgi = "/srv", "/usr/bin/php-cgi8.2", "/tmp/x/php-cgi-pinned"
        return bench

    def test_pinned_load_generators_run_on_cpu_1(self):
        scenario = {"path": "/hello.php", "c": 20, "keepalive": True}
        with mock.patch.object(services, "SERVICES", Services()) as pinned_services, \
                mock.patch.object(runner, "SERVICES", pinned_services), mock.patch("os.cpu_count", return_value=2):
            self.assertEqual(self.bench(False).command_for("tqserver", scenario, 5)[:3], ["wrk", "-t", "2"])
            pinned_services.pin(0, 1)
            bench = self.bench(True)
            self.assertEqual(bench.command_for("tqserver", scenario, 5)[:6],
                             ["taskset", "-c", "1", "wrk", "-t", "1"])
            ceiling = bench.command_for("ceiling", scenario, 5)
            self.assertEqual(ceiling[:3], ["taskset", "-c", "1"])
            self.assertEqual(ceiling[ceiling.index("--php-cgi") + 1], "/tmp/x/php-cgi-pinned")


class CeilingWrapper(unittest.TestCase):
    @unittest.skipUnless({0, 1} <= os.sched_getaffinity(0), "needs 2 CPUs")
    def test_runs_the_program_on_its_cpu_with_the_same_pid_and_arguments(self):
        with tempfile.TemporaryDirectory() as tmp:
            script = os.path.join(tmp, "wrapper")
            with open(script, "w") as f:
                # Prints its pid, its allowed CPUs and its arguments.
                f.write(runner.ceiling_wrapper("/bin/sh", 1))
            os.chmod(script, 0o755)
            self.assertEqual(runner.ceiling_wrapper("/usr/bin/php-cgi8.2", 0),
                             '#!/bin/sh\nexec taskset -c 0 /usr/bin/php-cgi8.2 "$@"\n')
            proc = subprocess.Popen([script, "-c", 'echo $$; grep Cpus_allowed_list /proc/self/status; echo "$0 $1"',
                                     "a b", "c"], stdout=subprocess.PIPE, text=True)
            out, _ = proc.communicate(timeout=10)
        pid, cpus, args = out.splitlines()
        self.assertEqual(int(pid), proc.pid)
        self.assertEqual(cpus.split(), ["Cpus_allowed_list:", "1"])
        self.assertEqual(args, "a b c")


class RoundOrder(unittest.TestCase):
    def test_rotates_each_round(self):
        configs = ["a", "b", "c"]
        self.assertEqual([round_order(configs, n) for n in range(4)],
                         [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]])
        self.assertEqual(round_order(["a"], 5), ["a"])


class EntryPoint(unittest.TestCase):
    def bench_run(self, *argv):
        return subprocess.run([sys.executable, RUN, *argv], capture_output=True, text=True, timeout=60)

    def test_help(self):
        done = self.bench_run("--help")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("tqserver's benchmark suite: tqserver against nginx + php-fpm and against the ceiling",
                      done.stdout)
        for option in ("--quick", "--render FILE", "--only ONLY", "--skip-build", "--no-docs", "--pin"):
            self.assertIn(option, done.stdout)

    def test_render_saved_results(self):
        done = self.bench_run("--render", os.path.join(support.DATA, "results_full.json"), "--no-docs")
        self.assertEqual(done.returncode, 0, done.stderr)
        support.check_golden(self, "full.stdout.txt", done.stdout)

    def test_unknown_option(self):
        done = self.bench_run("--fast")
        self.assertEqual(done.returncode, 2)
        self.assertIn("unrecognized arguments: --fast", done.stderr)


if __name__ == "__main__":
    unittest.main()
