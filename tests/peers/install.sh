#!/usr/bin/env bash
# Installs what the tests need, once: the protocol servers of the loopback peers (vsftpd and
# strongSwan's charon included), Lua, Prometheus with promtool for the monitoring tests,
# podman and runc for the image and the install test (Debian packages), and the Helm SDK for
# the chart tests (PyPI). Writes /etc/containers/containers.conf when there is none (see
# below). Skips packages already present; needs root (or sudo) only when something is missing.
set -euo pipefail
PKGS="nginx python3-aiosmtpd dovecot-imapd dovecot-pop3d slapd ldap-utils dnsmasq-base squid mitmproxy
prometheus-blackbox-exporter openssl iproute2 lua5.4 lua-cjson prometheus
podman runc binutils ca-certificates
vsftpd strongswan-charon strongswan-swanctl libstrongswan-standard-plugins"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo

# podman's defaults fail on machines like CI's: crun refuses cgroups in hybrid mode, and the
# default ulimits exceed what an unprivileged container host may set (setrlimit EPERM).
# runc and explicit ulimits work everywhere; an existing configuration is left alone.
containers_conf() {
  [ -e /etc/containers/containers.conf ] && return 0
  $SUDO mkdir -p /etc/containers
  $SUDO tee /etc/containers/containers.conf >/dev/null <<'CONF'
# Written by NetReach's tests/peers/install.sh (remove it to go back to podman's defaults).
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
CONF
}
PIP_PKGS="helm-python-sdk==0.2.2"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=" $p"
done
# Python packages for the chart tests, into the python3 the tests run.
python3 -c 'import helm_python' 2>/dev/null || python3 -m pip install -q --disable-pip-version-check $PIP_PKGS
if [ -z "$missing" ]; then containers_conf; exit 0; fi
echo "installing:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
containers_conf
