"""The edge part's parsing and arithmetic (bench/tqbench/edge.py)."""

import unittest

from tqbench.edge import compression_cost, edge_table, medians, parse_h2load, ratios
from tqbench.targets import parse_targets, TargetsError

H2LOAD = """starting benchmark...
finished in 5.00s, 24123.40 req/s, 2.10MB/s
requests: 120617 total, 120817 started, 120617 done, 120610 succeeded, 7 failed, 0 errored, 0 timeout
status codes: 120610 2xx, 0 3xx, 3 4xx, 4 5xx
traffic: 10.50MB (11010048) total, 1.20MB (1258291) headers (space savings 90.00%), 5.00MB (5242880) data
"""


class Parsing(unittest.TestCase):
    def test_h2load(self):
        self.assertEqual(parse_h2load(H2LOAD), {"rps": 24123.4, "requests": 120617, "errors": 7 + 3 + 4})

    def test_h2load_that_failed_raises(self):
        with self.assertRaises(AttributeError):
            parse_h2load("connect failed")


class Arithmetic(unittest.TestCase):
    def test_medians_and_ratios(self):
        rounds = {"tqserver": [{"https_hello_h1_rps": 3.0}, {"https_hello_h1_rps": 1.0},
                               {"https_hello_h1_rps": 2.0}],
                  "nginx": [{"https_hello_h1_rps": 1.0, "tls_new_conns_per_s": None}]}
        meds = medians(rounds)
        self.assertEqual(meds["tqserver"]["https_hello_h1_rps"], 2.0)
        self.assertIsNone(meds["nginx"]["tls_new_conns_per_s"])
        self.assertEqual(ratios(meds), {"https_hello_h1_rps": 2.0})

    def test_compression_cost_is_beyond_the_uncompressed_page(self):
        self.assertEqual(compression_cost({"identity": 40.0, "br": 300.0, "gzip": None}), {"br": 260.0})
        self.assertEqual(compression_cost({"br": 300.0}), {})

    def test_table_without_the_part(self):
        self.assertEqual(edge_table(None), "(the edge part did not run)")


class Targets(unittest.TestCase):
    def test_edge_targets(self):
        targets = parse_targets('[[edge]]\nname = "h1"\nmeasure = "https_hello_h1_rps"\nat_least = 1.2\n'
                                '[[edge]]\nname = "{connections} idle"\nmeasure = "idle_tls_mb"\nbelow = 150\n')
        part = {"ratio": {"https_hello_h1_rps": 1.1},
                "memory": {"tqserver": {"connections": 10, "opened": 10, "growth_mb": 1.5}}}
        self.assertEqual([t.evaluate(part) for t in targets.edge],
                         [("h1", "1.10x", False), ("10 idle", "1.5 MB (10 held)", True)])

    def test_a_ratio_measure_takes_at_least(self):
        with self.assertRaises(TargetsError):
            parse_targets('[[edge]]\nname = "x"\nmeasure = "https_hello_h1_rps"\nbelow = 1\n')
