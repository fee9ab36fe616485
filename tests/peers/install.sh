#!/usr/bin/env bash
# Installs the protocol servers the loopback peers need (Debian packages), once.
# Skips packages already present; needs root (or sudo) only when something is missing.
set -euo pipefail
PKGS="nginx python3-aiosmtpd dovecot-imapd dovecot-pop3d slapd ldap-utils dnsmasq-base squid mitmproxy
prometheus-blackbox-exporter openssl iproute2 lua5.4 lua-cjson"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=" $p"
done
[ -z "$missing" ] && exit 0
echo "installing:$missing" >&2
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
