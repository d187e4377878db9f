"""The machine and the software a run measured on, for the report."""

import os
import platform

from .paths import REPO, TQSERVER
from .util import command_output


def find_php_fpm(php_version):
    """The php-fpm of the same PHP version as php-cgi, else any php-fpm."""
    candidates = sorted(n for n in os.listdir("/usr/sbin") if n.startswith("php-fpm"))
    major_minor = ".".join(php_version.split(".")[:2])
    for name in candidates:
        if name == f"php-fpm{major_minor}":
            return os.path.join("/usr/sbin", name)
    return os.path.join("/usr/sbin", candidates[0]) if candidates else None


def machine_info():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "os": command_output(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
    }


def versions(php_cgi, php_fpm):
    def first_line(text):
        return text.splitlines()[0] if text else "unknown"
    wrk = command_output(["wrk", "-v"])
    git = command_output(["git", "-C", REPO, "describe", "--always", "--dirty"])
    return {
        "php_cgi": first_line(command_output([php_cgi, "-v"])),
        "php_fpm": first_line(command_output([php_fpm, "-v"])) if php_fpm else "missing",
        "nginx": command_output(["nginx", "-v"]).replace("nginx version: ", ""),
        "wrk": first_line(wrk),
        "tqserver": first_line(command_output([TQSERVER, "--version"])) + f" (git {git})",
        "rustc": command_output(["rustc", "--version"]),
    }

