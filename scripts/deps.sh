#!/usr/bin/env bash
# Installs the Debian packages tqserver's demo and tests use, when missing.
# Usage: scripts/deps.sh demo|test|apps (apps: the WordPress, Laravel and DokuWiki suites)
# As root it runs apt-get; otherwise it prints the exact command and fails.
set -euo pipefail

case "${1:-test}" in
  demo) packages=(php-cgi) ;;
  test) packages=(php-cgi php-fpm php-cli libphp8.2-embed php8.2-dev nginx-light libfcgi-bin prometheus chromium wrk curl
               haproxy redis-server php-redis iproute2 python3 apache2-utils nghttp2-client pebble openssl golang-go nodejs) ;;
  apps) packages=(php-cgi php-fpm php-cli libphp8.2-embed php-mysql php-gd php-xml php-mbstring php-curl php-intl
               nginx-light mariadb-server mariadb-client wordpress wordpress-theme-twentytwentythree
               php-laravel-framework dokuwiki wrk curl) ;;
  *) echo "usage: $0 demo|test|apps" >&2; exit 64 ;;
esac

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

command="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "tqserver needs these Debian packages: ${missing[*]}" >&2
  echo "install them with:  sudo apt-get update && sudo $command" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Keep package services from starting inside containers and CI.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
$command -qq >/dev/null
