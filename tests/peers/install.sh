#!/usr/bin/env bash
# Installs what the tests need, once: the protocol servers of the loopback peers (vsftpd and
# strongSwan's charon included) and Lua
# (Debian packages), and the Helm SDK for the chart tests (PyPI).
# Skips packages already present; needs root (or sudo) only when something is missing.
set -euo pipefail
PKGS="nginx python3-aiosmtpd dovecot-imapd dovecot-pop3d slapd ldap-utils dnsmasq-base squid mitmproxy
prometheus-blackbox-exporter openssl iproute2 lua5.4 lua-cjson
vsftpd strongswan-charon strongswan-swanctl libstrongswan-standard-plugins"
PIP_PKGS="helm-python-sdk==0.2.2"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=" $p"
done
# Python packages for the chart tests, into the python3 the tests run.
python3 -c 'import helm_python' 2>/dev/null || python3 -m pip install -q --disable-pip-version-check $PIP_PKGS
[ -z "$missing" ] && exit 0
echo "installing:$missing" >&2
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
