"""What is measured: the configurations compared, the scenarios run through
them, and the PHP files they request. (The targets the results are checked
against are data: bench/targets.toml.)"""

CONFIGS = {
    # id: (label, description)
    "tqserver": ("tqserver", "wrk -> tqserver HTTP front -> php-cgi pool"),
    "tqserver-embed": ("tqserver embed", "wrk -> tqserver HTTP front -> embed pool (`php.runtime: embed`), "
                       "workers forked from a zygote"),
    "nginx-fpm": ("nginx+php-fpm", "wrk -> nginx -> php-fpm, a new FastCGI connection per request"),
    "nginx-fpm-ka": ("nginx+php-fpm keepalive", "wrk -> nginx -> a second php-fpm of the same size, upstream keepalive + fastcgi_keep_conn"),
    "nginx-tq": ("nginx+tq listener keepalive", "wrk -> nginx -> tqserver FastCGI listener on a unix socket (upstream keepalive) -> php-cgi pool"),
    "nginx-tq-noka": ("nginx+tq listener", "wrk -> nginx -> tqserver FastCGI listener on a unix socket, a connection per request"),
    "nginx": ("nginx", "wrk -> nginx serving the file itself"),
    "ceiling": ("ceiling (fcgi-bench->php-cgi)", "fcgi-bench -> php-cgi over kept-alive FastCGI connections, one per process"),
    "fcgi-fpm": ("fcgi-bench->php-fpm", "fcgi-bench -> php-fpm socket, one kept-alive connection per child"),
    "fcgi-tq": ("fcgi-bench->tq listener", "fcgi-bench -> tqserver FastCGI listener, kept-alive connections"),
}
LISTENER_CONFIGS = {"nginx-tq", "nginx-tq-noka", "fcgi-tq"}
TQ_CONFIGS = {"tqserver", "tqserver-embed"} | LISTENER_CONFIGS
PHP_HTTP = ["tqserver", "tqserver-embed", "nginx-fpm", "nginx-fpm-ka", "nginx-tq"]

SCENARIOS = [
    dict(id="hello_c20", label="hello.php, c=20", path="/hello.php", c=20, keepalive=True,
         configs=PHP_HTTP + ["nginx-tq-noka", "ceiling", "fcgi-fpm", "fcgi-tq"]),
    dict(id="hello_c100", label="hello.php, c=100", path="/hello.php", c=100, keepalive=True,
         configs=PHP_HTTP + ["nginx-tq-noka", "ceiling"]),
    dict(id="page50k_c20", label="50 KB PHP page, c=20", path="/page50k.php", c=20, keepalive=True,
         configs=PHP_HTTP + ["ceiling"]),
    dict(id="sleep100_c50", label="100 ms sleep, c=50", path="/sleep100.php", c=50, keepalive=True,
         configs=PHP_HTTP + ["ceiling"]),
    dict(id="static10k_c20", label="10 KB static file, c=20", path="/static10k.html", c=20, keepalive=True,
         configs=["tqserver", "nginx"]),
    dict(id="hello_c20_close", label="hello.php, c=20, HTTP keep-alive off", path="/hello.php", c=20,
         keepalive=False, configs=PHP_HTTP),
]

PHP_FILES = {
    "hello.php": '<?php\necho "Hello, World!\\n";\n',
    # About 50 KB of HTML built by PHP, like a list page.
    "page50k.php": """<?php
echo "<!doctype html><html><head><title>Rows</title></head><body><table>\\n";
for ($i = 0; $i < 600; $i++) {
    echo '<tr><td class="id">', $i, '</td><td><a href="/item/', $i, '">Item number ', $i,
        '</a></td><td>', str_repeat('x', 12), "</td></tr>\\n";
}
echo "</table></body></html>\\n";
""",
    "sleep100.php": "<?php\nusleep(100000);\necho \"slept\\n\";\n",
    # For the burst: when this request started running in PHP, and where.
    "burst.php": """<?php
$start = microtime(true);
usleep((int)($_GET['ms'] ?? 1000) * 1000);
echo getmypid(), ' ', sprintf('%.6f', $start), "\\n";
""",
}


# The parts whose CPU time is accounted per request.
CPU_GROUPS = ("tqserver", "PHP", "nginx", "load generator")
