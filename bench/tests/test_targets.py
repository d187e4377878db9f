"""The targets file and the targets' rows: met, missed, not measured, absent."""

import re
import unittest

from tqbench import targets
from tqbench.targets import MemoryTarget, RatioTarget, RuntimeTarget, Targets, TargetsError, evaluate, parse_targets

from . import support


def scenario(sid, **configs):
    """A scenario's results: config=(rps, p99_ms), or None for one that failed."""
    return {"id": sid, "configs": {
        c.replace("_", "-"): {"median": None if v is None else {"rps": v[0], "p99_ms": v[1]}}
        for c, v in configs.items()}}


def run(*scenarios, memory=None, runtime=None):
    return {"scenarios": list(scenarios), "memory": memory, "runtime": runtime}


def runtime_part(cgi, embed):
    """The runtime part's medians: {measure: value} per runtime, or None."""
    return {"median": {"cgi": cgi, "embed": embed}}


def memory(connections, idle_kb, held_kb, opened):
    return {"connections": connections,
            "tqserver": {"idle_rss_kb": idle_kb, "held_rss_kb": held_kb, "opened": opened}}


class TheFile(unittest.TestCase):
    def test_the_issues_targets(self):
        t = targets.load_targets()
        self.assertEqual([r.name for r in t.ratios], [
            "{scenario}: tqserver >= 2x best nginx+php-fpm, p99 no worse",
            "{scenario}: tqserver >= 0.6x ceiling",
            "{scenario}: listener path >= 1.0x best nginx+php-fpm",
            "static 10 KB: tqserver >= 0.8x nginx",
            "{scenario}: embed runtime >= 1.0x php-cgi runtime (tqserver embed vs tqserver)"])
        self.assertEqual(t.scenario_order(), ["hello_c20", "hello_c100", "static10k_c20"])
        self.assertEqual(t.memory, (MemoryTarget("{connections} idle keep-alive connections cost tqserver < 50 MB",
                                                 "tqserver", 50.0),))
        self.assertEqual(t.runtime, (
            RuntimeTarget("max_requests: 1 throughput: embed >= 5x php-cgi", "once_rps", "embed", versus="cgi",
                          at_least=5.0),
            RuntimeTarget("spawn to first response: embed median <= 5 ms", "spawn_p50_ms", "embed", at_most=5.0),
            RuntimeTarget("burst 3 -> 10 workers: embed < 50 ms", "burst_ms", "embed", below=50.0)))

    def test_each_name_states_its_threshold(self):
        t = targets.load_targets()
        for r in t.ratios:
            self.assertEqual(float(re.search(r">= ([\d.]+)x", r.name).group(1)), r.at_least, r.name)
        for m in t.memory:
            self.assertEqual(float(re.search(r"< ([\d.]+) MB", m.name).group(1)), m.below_mb, m.name)
        for r in t.runtime:
            sign, number = re.search(r"(>=|<=|<) ([\d.]+)", r.name).groups()
            self.assertEqual(float(number), {">=": r.at_least, "<=": r.at_most, "<": r.below}[sign], r.name)

    def test_rows_of_a_full_run(self):
        self.assertEqual(evaluate(support.results("full")), [
            ("hello_c20: tqserver >= 2x best nginx+php-fpm, p99 no worse", "0.94x, p99 1.39 vs 465.40 ms", False),
            ("hello_c20: tqserver >= 0.6x ceiling", "0.45x", False),
            ("hello_c20: listener path >= 1.0x best nginx+php-fpm", "0.66x", False),
            ("hello_c100: tqserver >= 2x best nginx+php-fpm, p99 no worse", "1.00x, p99 6.72 vs 6.76 ms", False),
            ("hello_c100: tqserver >= 0.6x ceiling", "0.33x", False),
            ("hello_c100: listener path >= 1.0x best nginx+php-fpm", "not measured", None),
            ("static 10 KB: tqserver >= 0.8x nginx", "0.82x", True),
            ("10000 idle keep-alive connections cost tqserver < 50 MB", "30.5 MB (10000 held)", True),
            ("HTTPS hello.php, HTTP/1.1: tqserver >= 1.2x nginx (TLS) + php-fpm", "1.67x", True),
            ("HTTPS hello.php, HTTP/2: tqserver >= 1.2x nginx (TLS, http2) + php-fpm", "1.85x", True),
            ("HTTPS 10 KB static file, HTTP/2: tqserver >= 0.8x nginx", "0.86x", True),
            ("new TLS connections per second: tqserver >= 0.8x nginx", "0.88x", True),
            ("10000 idle TLS keep-alive connections: tqserver < 150 MB", "97.7 MB (10000 held)", True),
        ])

    def test_nothing_measured_gives_no_rows(self):
        self.assertEqual(evaluate(support.results("empty")), [])


class Ratios(unittest.TestCase):
    def rows(self, *scenarios, memory=None):
        return evaluate(run(*scenarios, memory=memory))

    def test_met_against_the_faster_php_fpm(self):
        rows = self.rows(scenario("hello_c20", tqserver=(50000.0, 2.0), nginx_fpm=(20000.0, 3.0),
                                  nginx_fpm_ka=(24000.0, 2.5), ceiling=(80000.0, 0.2), nginx_tq=(25000.0, 2.0)))
        self.assertEqual(rows, [
            ("hello_c20: tqserver >= 2x best nginx+php-fpm, p99 no worse", "2.08x, p99 2.00 vs 2.50 ms", True),
            ("hello_c20: tqserver >= 0.6x ceiling", "0.62x", True),
            ("hello_c20: listener path >= 1.0x best nginx+php-fpm", "1.04x", True),
        ])

    def test_exactly_at_the_threshold_is_met(self):
        rows = self.rows(scenario("hello_c100", tqserver=(40000.0, 2.0), nginx_fpm=(20000.0, 2.0),
                                  nginx_tq=(20000.0, 9.0)))
        self.assertEqual([met for _, _, met in rows], [True, True])

    def test_fast_but_a_worse_p99_is_missed(self):
        rows = self.rows(scenario("hello_c20", tqserver=(50000.0, 4.0), nginx_fpm=(20000.0, 3.0)))
        self.assertEqual(rows[0], ("hello_c20: tqserver >= 2x best nginx+php-fpm, p99 no worse",
                                   "2.50x, p99 4.00 vs 3.00 ms", False))

    def test_the_listener_not_measured_is_a_row_the_others_are_not(self):
        rows = self.rows(scenario("hello_c20", tqserver=None, nginx_fpm=(20000.0, 3.0), nginx_tq=None))
        self.assertEqual(rows, [("hello_c20: listener path >= 1.0x best nginx+php-fpm", "not measured", None)])

    def test_nothing_to_compare_with_gives_no_rows(self):
        self.assertEqual(self.rows(scenario("hello_c20", tqserver=(1.0, 1.0), nginx_tq=(1.0, 1.0))), [])
        self.assertEqual(self.rows(scenario("sleep100_c50", tqserver=(40.0, 1.0), nginx_fpm=(39.0, 1.0))), [])

    def test_rows_follow_the_targets_order_not_the_runs(self):
        rows = self.rows(scenario("static10k_c20", tqserver=(70000.0, 1.0), nginx=(80000.0, 1.0)),
                         scenario("hello_c100", tqserver=(1.0, 1.0), ceiling=(1.0, 1.0)),
                         scenario("hello_c20", tqserver=(1.0, 1.0), ceiling=(2.0, 1.0)),
                         memory=memory(100, 1024, 2048, 100))
        self.assertEqual([name for name, _, _ in rows], [
            "hello_c20: tqserver >= 0.6x ceiling", "hello_c100: tqserver >= 0.6x ceiling",
            "static 10 KB: tqserver >= 0.8x nginx", "100 idle keep-alive connections cost tqserver < 50 MB"])
        self.assertEqual(rows[2], ("static 10 KB: tqserver >= 0.8x nginx", "0.88x", True))

    def test_given_targets_instead_of_the_file(self):
        mine = Targets(ratios=(RatioTarget("{scenario}: fpm-ka over fpm", ("page50k_c20",), "nginx-fpm-ka",
                                           ("nginx-fpm",), 1.1),), memory=())
        rows = evaluate(run(scenario("page50k_c20", nginx_fpm=(100.0, 1.0), nginx_fpm_ka=(105.0, 1.0))), mine)
        self.assertEqual(rows, [("page50k_c20: fpm-ka over fpm", "1.05x", False)])


class Runtime(unittest.TestCase):
    CGI = {"once_rps": 40.0, "spawn_p50_ms": 46.0, "burst_ms": 300.0}

    def rows(self, embed, cgi=CGI):
        return evaluate(run(runtime=runtime_part(cgi, embed)))

    def test_met(self):
        self.assertEqual(self.rows({"once_rps": 812.5, "spawn_p50_ms": 1.52, "burst_ms": 31.0}), [
            ("max_requests: 1 throughput: embed >= 5x php-cgi", "20.31x (812.5 vs 40.0 req/s)", True),
            ("spawn to first response: embed median <= 5 ms", "1.5 ms", True),
            ("burst 3 -> 10 workers: embed < 50 ms", "31.0 ms", True)])

    def test_at_the_thresholds(self):
        # >= and <= hold at the threshold, < does not.
        rows = self.rows({"once_rps": 200.0, "spawn_p50_ms": 5.0, "burst_ms": 50.0})
        self.assertEqual([met for _, _, met in rows], [True, True, False])
        rows = self.rows({"once_rps": 199.9, "spawn_p50_ms": 5.01, "burst_ms": 49.9})
        self.assertEqual([met for _, _, met in rows], [False, False, True])

    def test_what_was_not_measured_gives_no_row(self):
        self.assertEqual(evaluate(run()), [])
        self.assertEqual(self.rows(None), [])
        # No cgi figure: no ratio, the absolute targets still have rows.
        rows = self.rows({"once_rps": 800.0, "spawn_p50_ms": 2.0, "burst_ms": None}, cgi=None)
        self.assertEqual(rows, [("spawn to first response: embed median <= 5 ms", "2.0 ms", True)])
        rows = self.rows({"once_rps": 800.0}, cgi={"once_rps": 0.0})
        self.assertEqual(rows, [])

    def test_after_the_other_targets(self):
        rows = evaluate(run(scenario("hello_c20", tqserver=(1.0, 1.0), ceiling=(1.0, 1.0)),
                            memory=memory(100, 1024, 2048, 100),
                            runtime=runtime_part(self.CGI, {"burst_ms": 20.0})))
        self.assertEqual([name for name, _, _ in rows], [
            "hello_c20: tqserver >= 0.6x ceiling", "100 idle keep-alive connections cost tqserver < 50 MB",
            "burst 3 -> 10 workers: embed < 50 ms"])

    def test_embed_against_php_cgi_in_a_scenario(self):
        rows = evaluate(run(scenario("hello_c100", tqserver=(20000.0, 2.0), tqserver_embed=(21000.0, 2.0))))
        self.assertEqual(rows, [("hello_c100: embed runtime >= 1.0x php-cgi runtime (tqserver embed vs tqserver)",
                                 "1.05x", True)])


class Memory(unittest.TestCase):
    def row(self, mem):
        return evaluate(run(memory=mem))

    def test_under_the_limit_with_every_connection_held(self):
        self.assertEqual(self.row(memory(10000, 9000, 9000 + 49 * 1024, 10000)),
                         [("10000 idle keep-alive connections cost tqserver < 50 MB", "49.0 MB (10000 held)", True)])

    def test_at_the_limit_or_short_of_connections_is_missed(self):
        self.assertFalse(self.row(memory(10000, 0, 50 * 1024, 10000))[0][2])
        self.assertEqual(self.row(memory(10000, 0, 1024, 9000))[0][1:], ("1.0 MB (9000 held)", False))

    def test_not_measured_gives_no_row(self):
        self.assertEqual(self.row(None), [])
        self.assertEqual(self.row({"connections": 10, "nginx": {}}), [])


VALID = """
[[ratio]]
name = "{scenario}: x"
scenarios = ["hello_c20"]
config = "tqserver"
versus = ["nginx-fpm"]
at_least = 2

[[memory]]
name = "{connections} conns"
server = "tqserver"
below_mb = 50
"""


RUNTIME = """
[[runtime]]
name = "x"
measure = "once_rps"
runtime = "embed"
versus = "cgi"
at_least = 5

[[runtime]]
name = "y"
measure = "burst_ms"
runtime = "embed"
below = 50
"""


class Parsing(unittest.TestCase):
    def test_a_valid_file(self):
        t = parse_targets(VALID)
        self.assertEqual(t.ratios, (RatioTarget("{scenario}: x", ("hello_c20",), "tqserver", ("nginx-fpm",), 2.0),))
        self.assertIsInstance(t.ratios[0].at_least, float)
        self.assertEqual(t.memory, (MemoryTarget("{connections} conns", "tqserver", 50.0),))
        self.assertEqual(parse_targets(""), Targets((), ()))
        t = parse_targets(VALID + RUNTIME)
        self.assertEqual(t.runtime, (RuntimeTarget("x", "once_rps", "embed", versus="cgi", at_least=5.0),
                                     RuntimeTarget("y", "burst_ms", "embed", below=50.0)))

    def test_errors_say_where_and_what(self):
        cases = [
            (VALID.replace("at_least = 2", "at_least = 2\nat_most = 3"),
             "f.toml: [[ratio]] 1: unknown key `at_most`"),
            (VALID.replace('config = "tqserver"\n', ""), "f.toml: [[ratio]] 1: missing key `config`"),
            (VALID.replace("at_least = 2", 'at_least = "2x"'),
             "f.toml: [[ratio]] 1: key `at_least`: expected a number, got '2x'"),
            (VALID.replace("at_least = 2", "at_least = true"), "key `at_least`: expected a number, got True"),
            (VALID.replace('"hello_c20"]', '"hello_c30"]'),
             "f.toml: [[ratio]] 1: key `scenarios`: 'hello_c30' is not a scenario id"),
            (VALID.replace('["nginx-fpm"]', '["php-fpm"]'), "key `versus`: 'php-fpm' is not a configuration id"),
            (VALID.replace('["nginx-fpm"]', '"nginx-fpm"'), "key `versus`: expected a list of strings"),
            (VALID.replace('["nginx-fpm"]', "[]"), "`scenarios` and `versus` must each name at least one"),
            (VALID.replace('"{scenario}: x"', '"{sid}: x"'), "f.toml: [[ratio]] 1: key `name`: '{sid}: x' may use only {scenario}"),
            (VALID.replace('server = "tqserver"', 'server = "php-fpm"'),
             "f.toml: [[memory]] 1: key `server`: 'php-fpm' is not a server of the memory part"),
            (VALID.replace("below_mb = 50", "below_mb = 50\np99_no_worse = true"),
             "f.toml: [[memory]] 1: unknown key `p99_no_worse`"),
            (VALID + "\n[limits]\nx = 1\n", "f.toml: unknown table 'limits'"),
            (VALID + RUNTIME.replace('"once_rps"', '"hello_rps"'),
             "f.toml: [[runtime]] 1: key `measure`: 'hello_rps' is not a figure of the runtime part"),
            (VALID + RUNTIME.replace('runtime = "embed"\nversus', 'runtime = "fpm"\nversus'),
             "f.toml: [[runtime]] 1: key `runtime`: 'fpm' is not a php.runtime (cgi, embed)"),
            (VALID + RUNTIME.replace('versus = "cgi"', 'versus = "fpm"'), "[[runtime]] 1: key `versus`: 'fpm' is not"),
            (VALID + RUNTIME.replace("below = 50", "below = 50\nat_most = 40"),
             "f.toml: [[runtime]] 2: exactly one of `at_least` (with `versus`), `at_most` or `below` is expected, "
             "got `at_most`, `below`"),
            (VALID + RUNTIME.replace("below = 50", ""), "[[runtime]] 2: exactly one of `at_least` (with `versus`), "
             "`at_most` or `below` is expected, got none"),
            (VALID + RUNTIME.replace("below = 50", 'below = 50\nversus = "cgi"'),
             "[[runtime]] 2: `versus` goes with `at_least` (a ratio), and only with it"),
            (VALID + RUNTIME.replace('versus = "cgi"\n', ""), "[[runtime]] 1: `versus` goes with `at_least`"),
            (VALID + RUNTIME.replace('name = "y"', 'name = "{scenario}"'),
             "[[runtime]] 2: key `name`: '{scenario}' may use no {...} placeholder"),
            ("ratio = 3\n", "f.toml: `ratio` must be an array of tables ([[ratio]])"),
            ("[[ratio]\n", "f.toml: "),
        ]
        for text, message in cases:
            with self.subTest(message=message):
                with self.assertRaises(TargetsError) as caught:
                    parse_targets(text, "f.toml")
                self.assertIn(message, str(caught.exception))


if __name__ == "__main__":
    unittest.main()
