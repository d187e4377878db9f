"""The configuration files: the same bytes as bench/run wrote before it
became a package, and accepted by nginx and php-fpm themselves."""

import glob
import json
import os
import shutil
import subprocess
import tempfile
import unittest
from unittest import mock

from tqbench import configs

from . import support

PORTS = {"tqserver": 41001, "nginx-fpm": 41002, "nginx-fpm-ka": 41003, "nginx-burst": 41004,
         "nginx-tq": 41005, "nginx-tq-noka": 41006}
STATIC_FPM = "pm = static\npm.max_children = 4\n"
DYNAMIC_FPM = ("pm = dynamic\npm.max_children = 10\npm.start_servers = 3\n"
               "pm.min_spare_servers = 3\npm.max_spare_servers = 3\n")


def write_all(tmp):
    """Every file a run writes, on a 2-CPU machine with 65536 file descriptors,
    php-fpm's pool once as root (user www-data) and once not."""
    with mock.patch("os.cpu_count", return_value=2), \
            mock.patch("resource.getrlimit", return_value=(65536, 65536)):
        public = configs.make_site(tmp)
        with mock.patch("os.getuid", return_value=0):
            configs.fpm_config(tmp, "fpm", STATIC_FPM)
        with mock.patch("os.getuid", return_value=1000):
            configs.fpm_config(tmp, "fpm-burst", DYNAMIC_FPM)
        socks = {"fpm": f"{tmp}/fpm/php-fpm.sock", "fpm-ka": f"{tmp}/fpm-ka/php-fpm.sock",
                 "fpm-burst": f"{tmp}/fpm-burst/php-fpm.sock"}
        configs.nginx_config(tmp, public, PORTS, socks, f"{tmp}/tq-listener.sock", 4)
        configs.tqserver_config(tmp, "tq", public, 41001, "/usr/bin/php-cgi8.2", configs.static_pool(4),
                                f"{tmp}/tq-listener.sock")
        configs.tqserver_config(tmp, "tq-embed", public, 41008, None, configs.static_pool(4), None, runtime="embed")
        configs.tqserver_config(tmp, "tq-burst", public, 41007, "/usr/bin/php-cgi8.2", configs.dynamic_pool(), None)
    return public


def files_under(tmp):
    files = {}
    for root, _, names in os.walk(tmp):
        for name in names:
            path = os.path.join(root, name)
            with open(path) as f:
                files[os.path.relpath(path, tmp)] = {"mode": oct(os.stat(path).st_mode & 0o777),
                                                     "text": f.read().replace(tmp, "$TMP")}
    return dict(sorted(files.items()))


class Golden(unittest.TestCase):
    def test_the_same_files_as_before(self):
        with tempfile.TemporaryDirectory() as tmp:
            write_all(tmp)
            files = files_under(tmp)
        support.check_golden(self, "configs.json", json.dumps(files, indent=1) + "\n")

    def test_the_site(self):
        with tempfile.TemporaryDirectory() as tmp:
            public = configs.make_site(tmp)
            self.assertEqual(os.path.getsize(os.path.join(public, "static10k.html")), 10240)
            self.assertEqual(sorted(os.listdir(public)), ["burst.php", "hello.php", "idle.txt", "page50k.php",
                                                          "sleep100.php", "static10k.html"])

    def test_tqserver_without_the_listener(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = configs.tqserver_config(tmp, "tq", "/srv", 8080, "/usr/bin/php-cgi", configs.static_pool(2), None)
            self.assertEqual(path, os.path.join(tmp, "tq", "config", "server.yaml"))
            with open(os.path.join(tmp, "tq", "workers", "bench", "config", "worker.yaml")) as f:
                worker = f.read()
        self.assertNotIn("fastcgi", worker)
        self.assertIn("    max_workers: 2\n", worker)


PHP_FPM = next(iter(sorted(glob.glob("/usr/sbin/php-fpm*"))), None)


@unittest.skipUnless(shutil.which("nginx") and PHP_FPM, "nginx or php-fpm not installed (scripts/deps.sh test)")
class AcceptedByTheServers(unittest.TestCase):
    def test_nginx_t(self):
        with tempfile.TemporaryDirectory() as tmp:
            public = configs.make_site(tmp)
            socks = {k: f"{tmp}/{k}/php-fpm.sock" for k in ("fpm", "fpm-ka", "fpm-burst")}
            conf = configs.nginx_config(tmp, public, PORTS, socks, f"{tmp}/tq-listener.sock", 4)
            check = subprocess.run(["nginx", "-t", "-e", f"{tmp}/nginx/error.log", "-p", f"{tmp}/nginx", "-c", conf],
                                   capture_output=True, text=True)
            self.assertEqual(check.returncode, 0, check.stderr)

    def test_php_fpm_t(self):
        with tempfile.TemporaryDirectory() as tmp:
            for name, pool in (("fpm", STATIC_FPM), ("fpm-burst", DYNAMIC_FPM)):
                conf, sock = configs.fpm_config(tmp, name, pool)
                self.assertEqual(sock, os.path.join(tmp, name, "php-fpm.sock"))
                check = subprocess.run([PHP_FPM, "-t", "--fpm-config", conf], capture_output=True, text=True)
                self.assertEqual(check.returncode, 0, check.stdout + check.stderr)


if __name__ == "__main__":
    unittest.main()
