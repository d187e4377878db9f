"""The runtime part's figures: a round from its ab runs, medians of rounds,
PSS; and its apps' configuration accepted by tqserver."""

import os
import subprocess
import tempfile
import unittest

from tqbench import configs, runtimes
from tqbench.paths import TQSERVER, TQSERVER_PHP

from . import support


def ab(rps=None, errors=0, **ms):
    """An ab run's parsed result: ms given as p50=..., p99=..., p100=..."""
    return {"rps": rps, "requests": 200, "errors": errors,
            "ms": {int(k[1:]): v for k, v in ms.items()}}


class RoundFigures(unittest.TestCase):
    def test_spawn_is_the_spawn_pools_latency_minus_the_kept_workers_median(self):
        figures = runtimes.round_figures(
            once=ab(rps=812.5), kept=ab(p50=0.25, p99=0.9, p100=1.2), spawn=ab(p50=1.75, p99=6.25, p100=9.0),
            burst=ab(errors=1, p50=101.0, p100=131.5))
        self.assertEqual(figures, {"once_rps": 812.5, "kept_p50_ms": 0.25, "spawn_p50_ms": 1.5,
                                   "spawn_p99_ms": 6.0, "burst_ms": 31.5, "errors": 1})

    def test_a_failed_run_leaves_its_figures_out(self):
        figures = runtimes.round_figures(once=None, kept=None, spawn=ab(p50=2.0, p99=3.0, p100=3.0),
                                         burst=ab(errors=2, p50=100.0, p100=150.0), sleep_ms=100)
        self.assertEqual(figures, {"once_rps": None, "kept_p50_ms": None, "spawn_p50_ms": None,
                                   "spawn_p99_ms": None, "burst_ms": 50.0, "errors": 2})
        # A spawn run too short for a p99 row has a median only.
        figures = runtimes.round_figures(None, ab(p50=1.0, p100=1.0), ab(p50=3.0, p100=4.0), None)
        self.assertEqual((figures["spawn_p50_ms"], figures["spawn_p99_ms"], figures["burst_ms"]), (2.0, None, None))


class Medians(unittest.TestCase):
    def round(self, once, spawn, burst, errors=0):
        return {"once_rps": once, "kept_p50_ms": 0.2, "spawn_p50_ms": spawn, "spawn_p99_ms": spawn * 3,
                "burst_ms": burst, "errors": errors}

    def test_medians_of_the_rounds_and_errors_summed(self):
        rounds = {"cgi": [self.round(40.0, 50.0, 300.0), self.round(20.0, 90.0, 250.0, 1),
                          self.round(30.0, 45.0, None, 2)],
                  "embed": [self.round(900.0, 1.5, 30.0), self.round(700.0, 2.5, 40.0)],
                  }
        self.assertEqual(runtimes.medians(rounds), {
            "cgi": {"once_rps": 30.0, "kept_p50_ms": 0.2, "spawn_p50_ms": 50.0, "spawn_p99_ms": 150.0,
                    "burst_ms": 275.0, "errors": 3},
            "embed": {"once_rps": 800.0, "kept_p50_ms": 0.2, "spawn_p50_ms": 2.0, "spawn_p99_ms": 6.0,
                      "burst_ms": 35.0, "errors": 0}})

    def test_a_saved_run_is_its_rounds_summarised(self):
        part = support.results("pinned")["runtime"]
        self.assertEqual(runtimes.medians(part["rounds"]), part["median"])
        self.assertEqual(part["median"]["embed"]["spawn_p50_ms"], 2.243)

    def test_a_runtime_without_rounds(self):
        self.assertEqual(runtimes.medians({"cgi": [], "embed": [self.round(1.0, 1.0, 1.0)]})["cgi"], None)

    def test_pss(self):
        self.assertEqual(runtimes.pss_figures([2000, 2100, 2500, 2000], 6300),
                         {"worker_pss_kb": [2000, 2100, 2500, 2000], "mean_pss_kb": 2150, "zygote_pss_kb": 6300})
        self.assertEqual(runtimes.pss_figures([])["mean_pss_kb"], None)


class Apps(unittest.TestCase):
    def test_the_same_apps_on_both_runtimes(self):
        with tempfile.TemporaryDirectory() as tmp:
            cgi = configs.runtime_site(tmp, "cgi", 41010, 41011, "/usr/bin/php-cgi8.2", 4)
            embed = configs.runtime_site(tmp, "embed", 41012, 41013, None, 4)
            self.assertEqual(cgi, os.path.join(tmp, "rt-cgi", "config", "server.yaml"))
            for app, script, _, _ in configs.RUNTIME_APPS:
                with open(os.path.join(tmp, "rt-cgi", "workers", app, "config", "worker.yaml")) as f:
                    on_cgi = f.read()
                with open(os.path.join(tmp, "rt-embed", "workers", app, "config", "worker.yaml")) as f:
                    on_embed = f.read()
                self.assertEqual(on_cgi.replace("  binary: /usr/bin/php-cgi8.2\n", "  runtime: embed\n"), on_embed)
                self.assertTrue(os.path.exists(os.path.join(tmp, "rt-embed", "workers", app, "public", script)))
            with open(embed) as f:
                self.assertIn("admin:\n  listen: 127.0.0.1:41013\n", f.read())

    @unittest.skipUnless(os.access(TQSERVER, os.X_OK) and os.access(TQSERVER_PHP, os.X_OK),
                         "tqserver or tqserver-php not built (cargo build --release)")
    def test_tqserver_check_accepts_them(self):
        with tempfile.TemporaryDirectory() as tmp:
            os.chmod(tmp, 0o755)  # the workers' user must reach the document roots
            for runtime, php_cgi in (("cgi", "php-cgi"), ("embed", None)):
                config = configs.runtime_site(tmp, runtime, 41010, 41011, php_cgi, 4)
                check = subprocess.run([TQSERVER, "check", "--config", config], capture_output=True, text=True)
                self.assertEqual(check.returncode, 0, check.stdout + check.stderr)


if __name__ == "__main__":
    unittest.main()
