"""The report: printed tables, docs/BENCHMARKS.md and the SVG, from saved
results. The golden files are what bench/run rendered before it became a
package; the report must not change by accident."""

import contextlib
import io
import os
import tempfile
import unittest
import xml.etree.ElementTree as ET
from unittest import mock

from tqbench import report

from . import support

RUNS = ("full", "quick", "empty", "pinned")


def rendered(name):
    """(printed, returned table, results) of report.render on a saved run."""
    results = support.results(name)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        table = report.render(results, False)
    return out.getvalue(), table, results


class Golden(unittest.TestCase):
    def test_printed_tables(self):
        for name in RUNS:
            with self.subTest(run=name):
                printed, table, _ = rendered(name)
                support.check_golden(self, f"{name}.stdout.txt", printed)
                support.check_golden(self, f"{name}.table.md", table + "\n")

    def test_benchmarks_md_and_svg(self):
        for name in RUNS:
            with self.subTest(run=name):
                _, _, results = rendered(name)  # render fills in the ratios first
                support.check_golden(self, f"{name}.BENCHMARKS.md", report.render_doc(results))
                support.check_golden(self, f"{name}.benchmarks.svg", report.render_svg(results))

    def test_render_writes_the_docs_when_asked(self):
        with tempfile.TemporaryDirectory() as tmp:
            md, svg = os.path.join(tmp, "docs", "BENCHMARKS.md"), os.path.join(tmp, "docs", "benchmarks.svg")
            with mock.patch.object(report, "DOCS_MD", md), mock.patch.object(report, "DOCS_SVG", svg), \
                    mock.patch.object(report, "REPO", tmp), contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()) as err:
                report.render(support.results("quick"), True)
            self.assertIn("wrote docs/BENCHMARKS.md and docs/benchmarks.svg", err.getvalue())
            with open(md) as f:
                support.check_golden(self, "quick.BENCHMARKS.md", f.read())
            with open(svg) as f:
                support.check_golden(self, "quick.benchmarks.svg", f.read())


class Svg(unittest.TestCase):
    def test_well_formed_with_a_bar_per_measured_configuration(self):
        _, _, results = rendered("full")
        results["scenarios"][0]["label"] = "hello <&> \"quoted\""
        root = ET.fromstring(report.render_svg(results))
        ns = "{http://www.w3.org/2000/svg}"
        measured = sum(1 for s in results["scenarios"] for e in s["configs"].values() if e["median"])
        self.assertEqual(len(root.findall(f"{ns}rect")), 1 + measured)  # the background, then the bars
        texts = ["".join(t.itertext()) for t in root.findall(f"{ns}text")]
        self.assertIn('hello <&> "quoted"', texts)
        self.assertIn("26,289 p99 1.4 ms", texts)
        # Each scenario has its own scale: its fastest configuration fills the width.
        widths = [float(r.get("width")) for r in root.findall(f"{ns}rect")[1:9]]
        self.assertEqual(max(widths), 900 - 250 - 190)

    def test_the_quick_run_says_so(self):
        self.assertIn("quick smoke run", report.render_svg(support.results("quick")))
        self.assertNotIn("quick smoke run", report.render_svg(support.results("full")))


class Pinned(unittest.TestCase):
    """A --pin run says so in the tables, the doc and the SVG; the CPU
    table's bound is the servers' one CPU."""

    def results(self):
        results = support.results("full")
        results["meta"]["settings"]["pinned"] = {"servers_cpu": 0, "load_cpu": 1}
        results["ratios"] = report.compute_ratios(results["scenarios"])
        return results

    def test_tables(self):
        table = report.markdown_tables(self.results())
        self.assertTrue(table.startswith(
            "Pinned (`--pin`): the servers (tqserver and its PHP processes, nginx, php-fpm) on CPU 0, "
            "the load generators (wrk, ab, fcgi-bench) on CPU 1.\n\n| scenario |"), table[:300])
        self.assertNotIn("Pinned", report.markdown_tables(support.results("full")))

    def test_cpu_bound_of_one_cpu_without_the_load_generator(self):
        lines = report.cpu_table(self.results()).splitlines()
        self.assertTrue(lines[0].endswith("| total | req/s bound (servers on 1 CPU) |"))
        # tqserver 31.0 + PHP 28.7 us per request: 1e6 / 59.7.
        self.assertEqual(lines[2], "| hello.php, c=20 | tqserver | 31.0 | 28.7 |  | 11.4 | 71.1 | 16,750 |")

    def test_doc_and_svg(self):
        results = self.results()
        doc = report.render_doc(results)
        self.assertIn("4 PHP processes in every configuration; the servers (tqserver and its PHP processes, nginx, "
                      "php-fpm) pinned to CPU 0\nand the load generators (wrk, ab, fcgi-bench, and the harness) to "
                      "CPU 1", doc)
        self.assertIn("The servers' parts share CPU 0", doc)
        self.assertNotIn("share the\nmachine's CPUs", doc)
        self.assertIn("pinned: servers on CPU 0, load on CPU 1", report.render_svg(results))


class Tables(unittest.TestCase):
    def test_targets_table(self):
        self.assertEqual(report.targets_table([]), "No target could be evaluated in this run.")
        self.assertEqual(report.targets_table([("a", "1.00x", True), ("b", "0.50x", False), ("c", "not measured", None)]),
                         "| target | measured | met |\n|---|---|---|\n| a | 1.00x | yes |\n| b | 0.50x | **no** |\n"
                         "| c | not measured | - |")

    def test_fmt(self):
        self.assertEqual(report.fmt(None), "-")
        self.assertEqual(report.fmt(26289.4, 0), "26,289")
        self.assertEqual(report.fmt(3, 0), "3")
        self.assertEqual(report.fmt(1210.0, 2), "1,210.00")
        self.assertEqual(report.fmt(0.07), "0.1")

    def test_ratios_leave_out_what_was_not_measured(self):
        s = {"id": "hello_c20", "configs": {
            "tqserver": {"median": {"rps": 300.0}}, "nginx-fpm": {"median": {"rps": 200.0}},
            "nginx-fpm-ka": {"median": None}, "ceiling": {"median": {"rps": 900.0}}}}
        self.assertEqual(report.compute_ratios([s]), {"hello_c20": {
            "tqserver / nginx+php-fpm": 1.5, "tqserver / ceiling": 0.33}})

    def test_runtime_table(self):
        part = {"workers": 4, "burst": {"concurrency": 10, "sleep_ms": 100, "from": 3, "to": 10},
                "rounds": {"cgi": [{}, {}, {}], "embed": [{}, {}]},
                "median": {"cgi": {"once_rps": 40.4, "kept_p50_ms": 0.2, "spawn_p50_ms": 46.0, "spawn_p99_ms": 90.0,
                                   "burst_ms": 310.0, "errors": 0},
                           "embed": {"once_rps": 812.0, "kept_p50_ms": 0.15, "spawn_p50_ms": 1.5,
                                     "spawn_p99_ms": None, "burst_ms": 31.0, "errors": 2}},
                "pss": {"cgi": {"mean_pss_kb": 11264, "zygote_pss_kb": None},
                        "embed": {"mean_pss_kb": 2048, "zygote_pss_kb": 6400}}}
        lines = report.runtime_table(part).splitlines()
        self.assertEqual(lines[0], "Two tqserver instances serve the same apps, one per runtime; medians of 3 round(s):")
        self.assertEqual(lines[4], "| `max_requests: 1` throughput, req/s (ab -c 4 for the run's duration, 4 workers, "
                                   "each replaced after one request) | 40 | 812 | 20.10x |")
        self.assertEqual(lines[6][-22:], "| 46.0 | 1.5 | 0.03x |")
        self.assertEqual(lines[7], "| spawn to first response, p99 ms | 90.0 | - |  |")
        self.assertEqual(lines[8], "| burst 3 -> 10 workers: slowest of 10 concurrent 100 ms requests, minus 100 ms "
                                   "| 310.0 | 31.0 | 0.10x |")
        self.assertEqual(lines[9:], [
            "| PSS per worker, MiB (the kept pool's 4, after the rounds) | 11.0 | 2.0 | 0.18x |",
            "| the zygote's PSS, MiB | | 6.2 | |",
            "| errors (all ab runs) | 0 | 2 | |"])
        # A runtime whose server never started.
        part["median"]["cgi"], part["pss"]["cgi"] = None, None
        lines = report.runtime_table(part).splitlines()
        self.assertTrue(lines[4].endswith(" | - | 812 |  |"), lines[4])
        self.assertEqual(lines[-1], "| errors (all ab runs) | - | 2 | |")

    def test_parts_not_measured(self):
        self.assertEqual(report.runtime_table(None), "Not measured in this run.")
        self.assertEqual(report.memory_table(None), "Not measured in this run.")
        self.assertEqual(report.burst_table(None, []), "Not measured in this run.")
        self.assertEqual(report.cpu_table(support.results("quick")), "Not measured in this run.")
        self.assertTrue(report.burst_table(None, [2.0, 1.0, 4.0]).endswith(
            "3 spawns): median 2.0 ms, min 1.0 ms, max 4.0 ms."))


if __name__ == "__main__":
    unittest.main()
