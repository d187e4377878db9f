"""What the bench tests share: their data files, and golden-file checks."""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
GOLDEN = os.path.join(HERE, "golden")
BENCH = os.path.dirname(HERE)

# BENCH_REGEN=1 rewrites the golden files instead of comparing with them
# (after an intended change to the report or the configuration files).
REGEN = os.environ.get("BENCH_REGEN") == "1"


def data(name):
    with open(os.path.join(DATA, name)) as f:
        return f.read()


def results(name):
    """A saved results dict: bench/tests/data/results_<name>.json."""
    return json.loads(data(f"results_{name}.json"))


def check_golden(test, name, text):
    """Asserts that text is bench/tests/golden/<name>, byte for byte."""
    path = os.path.join(GOLDEN, name)
    if REGEN:
        with open(path, "w") as f:
            f.write(text)
        return
    with open(path) as f:
        expected = f.read()
    test.maxDiff = None
    test.assertEqual(expected, text, f"differs from golden/{name} (BENCH_REGEN=1 rewrites it)")
