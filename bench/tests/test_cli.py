"""bench/run's command line, and the entry point end to end on saved results."""

import os
import subprocess
import sys
import unittest

from tqbench import cli
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
        for option in ("--quick", "--render FILE", "--only ONLY", "--skip-build", "--no-docs"):
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
