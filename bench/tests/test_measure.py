"""Parsing what wrk and fcgi-bench print, summarising rounds, reading /proc."""

import os
import subprocess
import sys
import unittest
from unittest import mock

from tqbench import measure
from tqbench.measure import LOAD_OUTPUT_ERRORS, parse_fcgi_bench, parse_wrk, to_ms

from . import support


class WrkOutput(unittest.TestCase):
    def check(self, name, rps, p50_ms, p99_ms, requests, errors):
        result = parse_wrk(support.data(name))
        self.assertEqual(set(result), {"rps", "p50_ms", "p99_ms", "requests", "errors"})
        self.assertEqual(result["rps"], rps)
        self.assertAlmostEqual(result["p50_ms"], p50_ms, places=9)
        self.assertAlmostEqual(result["p99_ms"], p99_ms, places=9)
        self.assertEqual(result["requests"], requests)
        self.assertEqual(result["errors"], errors)

    def test_keepalive_run(self):
        # p50 is printed in microseconds, p99 in milliseconds.
        self.check("wrk_keepalive.txt", 65387.58, 0.05, 5.65, 71906, 0)

    def test_connection_close_run(self):
        self.check("wrk_connection_close.txt", 24704.21, 0.088, 7.74, 25137, 0)

    def test_non_2xx_responses_count_as_errors(self):
        self.check("wrk_non2xx.txt", 60034.37, 0.031, 7.97, 66091, 66091)

    def test_socket_errors_are_summed(self):
        self.check("wrk_socket_errors.txt", 42042.31, 0.076, 1.42, 42176, 860)

    def test_latencies_in_seconds(self):
        # wrk pads "1.20s " with a space; the unit is still seconds.
        self.assertIn("1.20s \n", support.data("wrk_seconds.txt"))
        self.check("wrk_seconds.txt", 2.66, 1200.0, 1200.0, 8, 0)

    def test_failed_runs_raise_a_load_output_error(self):
        truncated = "".join(support.data("wrk_keepalive.txt").splitlines(True)[:4])  # killed early
        no_distribution = support.data("wrk_keepalive.txt").replace("Latency Distribution", "").replace(
            "     50%   50.00us\n", "")
        # A refused connection: wrk says so on stderr, stdout stays empty.
        self.assertIn("Connection refused", support.data("wrk_refused.stderr.txt"))
        for out in ("", truncated, no_distribution):
            with self.assertRaises(LOAD_OUTPUT_ERRORS):
                parse_wrk(out)

    def test_durations(self):
        for text, ms in (("31.00us", 0.031), ("759.00us", 0.759), ("1.70ms", 1.7), ("1.20s", 1200.0),
                         ("2.00m", 120000.0), ("3ms", 3.0)):
            self.assertAlmostEqual(to_ms(text), ms, places=9, msg=text)
        for text in ("12", "1.2h", "ms", "-1ms"):
            with self.assertRaises(LOAD_OUTPUT_ERRORS, msg=text):
                to_ms(text)


class WrkCommand(unittest.TestCase):
    def test_threads_duration_and_keepalive(self):
        url = "http://127.0.0.1:8080/hello.php"
        with mock.patch("os.cpu_count", return_value=2):
            self.assertEqual(measure.wrk_command(url, 20, 5.0, True),
                             ["wrk", "-t", "2", "-c", "20", "-d", "5s", "--latency", "--timeout", "10s", url])
            self.assertEqual(measure.wrk_command(url, 20, 2.0, False),
                             ["wrk", "-t", "2", "-c", "20", "-d", "2s", "--latency", "--timeout", "10s",
                              "-H", "Connection: close", url])
            # No more threads than connections; wrk takes whole seconds, at least 1.
            self.assertEqual(measure.wrk_command(url, 1, 0.3, True)[:7], ["wrk", "-t", "1", "-c", "1", "-d", "1s"])
            self.assertEqual(measure.wrk_command(url, 4, 2.6, True)[6], "3s")
        with mock.patch("os.cpu_count", return_value=None):
            self.assertEqual(measure.wrk_command(url, 4, 1, True)[2], "1")


class FcgiBenchOutput(unittest.TestCase):
    def test_spawn_run(self):
        result = parse_fcgi_bench(support.data("fcgi_bench_spawn.txt"))
        self.assertEqual(result, {"rps": 31355.0, "p50_ms": 0.06, "p99_ms": 0.192, "requests": 31355,
                                  "errors": 0, "spawn_ms": [103.51, 38.88]})

    def test_failed_connections_are_errors(self):
        result = parse_fcgi_bench(support.data("fcgi_bench_connect_failed.txt"))
        self.assertEqual((result["requests"], result["errors"], result["spawn_ms"]), (0, 180, []))

    def test_the_last_line_is_the_report(self):
        out = "a line of something else\n" + support.data("fcgi_bench_spawn.txt") + "\n"
        self.assertEqual(parse_fcgi_bench(out)["requests"], 31355)

    def test_errors_timeouts_and_non_2xx_add_up(self):
        line = ('{"rps":10.0,"latency_ms":{"p50":1.0,"p99":2.0},"requests":5,'
                '"errors":1,"timeouts":2,"non_2xx":3}')
        result = parse_fcgi_bench(line)
        self.assertEqual((result["errors"], result["spawn_ms"]), (6, []))

    def test_failed_runs_raise_a_load_output_error(self):
        for out in ("", "fcgi-bench: cannot start\n", '{"rps": 1.0}', '{"tool":"fcgi-bench",'):
            with self.assertRaises(LOAD_OUTPUT_ERRORS, msg=out):
                parse_fcgi_bench(out)


class AbOutput(unittest.TestCase):
    def test_a_run(self):
        self.assertEqual(measure.parse_ab(support.data("ab_hello.txt")),
                         {"rps": 99.98, "requests": 20, "errors": 0})

    def test_non_2xx_responses_are_errors(self):
        result = measure.parse_ab(support.data("ab_non2xx.txt"))
        self.assertEqual((result["rps"], result["requests"], result["errors"]), (539.64, 10, 10))

    def test_a_refused_run_raises_a_load_output_error(self):
        self.assertIn("Connection refused", support.data("ab_refused.stderr.txt"))
        banner = "".join(support.data("ab_hello.txt").splitlines(True)[:4])  # what stdout then holds
        for out in ("", banner):
            with self.assertRaises(LOAD_OUTPUT_ERRORS):
                measure.parse_ab(out)

    def test_percentiles_leave_out_the_rows_ab_reads_past_its_times(self):
        # 20 requests: rows 98 and 99 are past the end of ab's array (0.257 ms
        # of garbage); row 100 is the slowest request.
        csv = support.data("ab_hello.csv")
        self.assertIn("98,0.257\n99,0.257\n100,144.066\n", csv)
        rows = measure.parse_ab_percentiles(csv, 20)
        self.assertEqual((rows[0], rows[50], rows[97], rows[100]), (0.654, 3.712, 144.066, 144.066))
        self.assertNotIn(98, rows)
        self.assertNotIn(99, rows)
        # With more than 50 requests every row is within them.
        self.assertEqual(len(measure.parse_ab_percentiles(csv, 200)), 101)

    def test_percentiles_without_their_rows_raise(self):
        for text in ("", "Percentage served,Time in ms\n", "Percentage served,Time in ms\n50,1.0\n",
                     "Percentage served,Time in ms\n50,x\n100,2.0\n"):
            with self.assertRaises(LOAD_OUTPUT_ERRORS, msg=text):
                measure.parse_ab_percentiles(text, 100)

    def test_command(self):
        self.assertEqual(measure.ab_command("http://h/a.php", 4, "/t/ab.csv", seconds=5.0),
                         ["ab", "-q", "-c", "4", "-e", "/t/ab.csv", "-t", "5", "http://h/a.php"])
        self.assertEqual(measure.ab_command("http://h/a.php", 1, "/t/ab.csv", requests=200),
                         ["ab", "-q", "-c", "1", "-e", "/t/ab.csv", "-n", "200", "http://h/a.php"])
        self.assertEqual(measure.ab_command("u", 1, "c", seconds=0.3)[-2], "1")


class Rounds(unittest.TestCase):
    def test_saved_results_are_their_rounds_summarised(self):
        for scenario in support.results("full")["scenarios"] + support.results("pinned")["scenarios"]:
            for config, entry in scenario["configs"].items():
                with self.subTest(scenario=scenario["id"], config=config):
                    self.assertEqual(measure.summarize(entry["rounds"], entry["concurrency"]), entry)

    def test_medians_skip_failed_rounds(self):
        rounds = [
            {"rps": 100.0, "p50_ms": 1.0, "p99_ms": 9.0, "requests": 500, "errors": 1,
             "cpu_us": {"tqserver": 10.0, "PHP": 20.0, "nginx": 0.0, "load generator": 5.0}},
            None,
            {"rps": 300.0, "p50_ms": 3.0, "p99_ms": 7.0, "requests": 1500, "errors": 2, "stalled": True},
            {"rps": 200.0, "p50_ms": 2.0, "p99_ms": 8.0, "requests": 1000, "errors": 0,
             "cpu_us": {"tqserver": 30.0, "PHP": 40.0, "nginx": 0.0, "load generator": 7.0}},
        ]
        summary = measure.summarize(rounds, 20)
        self.assertIs(summary["rounds"], rounds)
        self.assertEqual(summary["concurrency"], 20)
        self.assertEqual(summary["median"], {
            "rps": 200.0, "p50_ms": 2.0, "p99_ms": 8.0, "errors": 3, "stalled_rounds": 1,
            # Only the rounds that measured CPU time count.
            "cpu_us": {"tqserver": 20.0, "PHP": 30.0, "nginx": 0.0, "load generator": 6.0}})

    def test_no_cpu_figures_and_no_rounds(self):
        one = {"rps": 1.0, "p50_ms": 1.0, "p99_ms": 1.0, "requests": 1, "errors": 0}
        self.assertIsNone(measure.summarize([one], 4)["median"]["cpu_us"])
        self.assertIsNone(measure.summarize([None, None], 4)["median"])
        self.assertIsNone(measure.summarize([], 4)["median"])


class Proc(unittest.TestCase):
    def test_stat_fields_after_an_awkward_command_name(self):
        # comm may hold spaces and parentheses; fields count from the last ")".
        rest = ["S", "4321", "1", "1", "0", "-1", "4194560", "10", "0", "0", "0", "250", "75"] + ["0"] * 39
        line = ("999 (a (b) c) " + " ".join(rest) + "\n").encode()
        self.assertEqual(measure.stat_ppid(line), 4321)
        self.assertEqual(measure.stat_cpu_ticks(line), 325)
        self.assertEqual(measure.stat_fields(line)[0], b"S")

    def test_this_process(self):
        with open("/proc/self/stat", "rb") as f:
            self.assertEqual(measure.stat_ppid(f.read()), os.getppid())
        pid = os.getpid()
        self.assertGreater(measure.rss_kb(pid), 1000)
        self.assertGreaterEqual(measure.open_fds(pid), 3)
        self.assertGreaterEqual(measure.cpu_seconds(pid), 0.0)

    def test_php_processes_and_workers_of_both_runtimes(self):
        # tqserver 10 with two php-cgi (11, 12); tqserver 20 with a zygote 21
        # that forked 22 and 23; 30 is someone else's.
        tree = {10: 1, 11: 10, 12: 10, 20: 1, 21: 20, 22: 21, 23: 21, 30: 1, 31: 30}
        self.assertEqual(measure.php_workers(10, "cgi", tree), [11, 12])
        self.assertEqual(measure.php_processes(10, tree), [11, 12])
        self.assertEqual(measure.php_workers(20, "embed", tree), [22, 23])
        self.assertEqual(measure.php_processes(20, tree), [21, 22, 23])
        self.assertEqual(measure.php_workers(20, "cgi", tree), [21])
        self.assertEqual(measure.children_of(99, tree), [])

    def test_pss(self):
        pss = measure.pss_kb(os.getpid())
        self.assertGreater(pss, 1000)
        self.assertLessEqual(pss, measure.rss_kb(os.getpid()))

    def test_children_and_a_process_that_is_gone(self):
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        try:
            self.assertIn(child.pid, measure.children_of(os.getpid()))
        finally:
            child.stdin.close()
            child.wait()
        self.assertNotIn(child.pid, measure.children_of(os.getpid()))
        self.assertEqual(measure.cpu_seconds(child.pid), 0.0)
        self.assertEqual(measure.pss_kb(child.pid), 0)


if __name__ == "__main__":
    unittest.main()
