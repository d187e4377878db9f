"""tqbench: the pieces of tqserver's benchmark suite, run by `bench/run`.

One run, in the order it happens (`runner.run`):

1. `configs` writes a document root and the configuration of every server
   (tqserver, php-fpm, nginx) into a private temp dir, on free ports;
2. `services` starts them, waits until each serves, and stops every process
   it started on exit, Ctrl-C or error;
3. `runner` drives the scenarios of `scenarios` through each configuration,
   rounds alternating, and the memory and burst parts; `runtimes` runs the
   runtime part (php.runtime cgi against embed);
4. `measure` builds the load generators' command lines, parses what wrk,
   fcgi-bench and ab print, and reads CPU time, RSS, PSS and child processes
   from /proc;
5. `targets` checks the issue's targets (bench/targets.toml) against the
   medians, and `report` renders the tables, docs/BENCHMARKS.md and
   docs/benchmarks.svg.

`machine` describes the machine and the software versions for the report;
`util` holds the small helpers (logging, polling, HTTP GETs); `paths` where
things are.

Everything that only computes (parsing, summarising, targets, rendering,
configuration text) is unit-tested in bench/tests without starting a server.
"""
