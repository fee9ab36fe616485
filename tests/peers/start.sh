#!/usr/bin/env bash
# Starts real protocol servers on 127.0.0.1 (high ports) for the probe tests: logins with
# PLAIN, LOGIN, CRAM-MD5 (SMTP, IMAP, POP3) and APOP, a refused recipient, a submission port
# that wants AUTH first, and a directory with a read-only account and a subtree.
#   tests/peers/start.sh DIR
# Writes DIR/certs (a "public" test CA chain and a "corporate proxy" CA), per-peer configs and
# logs, DIR/peers.pids ("name pid" lines) and DIR/peers.env (ports, CA paths, credentials).
# Peers of an earlier run in DIR are stopped first. Env: PEERS (subset), PEERS_TIMEOUT, PEER_*_PORT.
# ftp (vsftpd) and ike (strongSwan charon) need root; outside DIR, ftp adds the system user
# peerftp once and ike uses charon's fixed /run/charon.pid (one charon per machine).
set -euo pipefail

DIR=${1:-${TMPDIR:-/tmp}/test-peers}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEFAULT_PEERS="nginx smtp dovecot slapd dnsmasq squid mitmproxy blackbox echo ftp ike"
PEERS=${PEERS:-$DEFAULT_PEERS}
TIMEOUT=${PEERS_TIMEOUT:-30}
PY=/usr/bin/python3            # Debian's python (python3-aiosmtpd lives there)

: "${PEER_HTTP_PORT:=18080}"  "${PEER_HTTPS_PORT:=18443}"
: "${PEER_SMTP_PORT:=10025}"  "${PEER_SMTPS_PORT:=10465}"
: "${PEER_IMAP_PORT:=10143}"  "${PEER_IMAPS_PORT:=10993}"
: "${PEER_POP3_PORT:=10110}"  "${PEER_POP3S_PORT:=10995}"
: "${PEER_LDAP_PORT:=10389}"  "${PEER_LDAPS_PORT:=10636}"
: "${PEER_DNS_PORT:=15353}"   "${PEER_SQUID_PORT:=13128}"
: "${PEER_MITM_PORT:=13129}"  "${PEER_BLACKBOX_PORT:=19115}"
: "${PEER_SUBMISSION_PORT:=10587}"
: "${PEER_FTP_PORT:=10021}"   "${PEER_FTPS_PORT:=10990}"  "${PEER_FTP_BADPASV_PORT:=10022}"
: "${PEER_FTP_REUSE_PORT:=10023}"
: "${PEER_FTP_PASV_MIN:=10100}" "${PEER_FTP_PASV_MAX:=10120}"
: "${PEER_IKE_PORT:=10500}"   "${PEER_IKE_NATT_PORT:=14500}"
FTP_USER=peerftp FTP_PASSWORD=secret      # system user: vsftpd logs users in through PAM
FTP_BAD_BACKEND=127.0.0.2 FTP_BAD_PASV_ADDR=127.0.0.9
: "${PEER_ECHO_PORT:=18090}"  "${PEER_ECHO_TLS_PORT:=18490}"

die() { echo "peers: $*" >&2; exit 1; }
want() { [[ " $PEERS " == *" $1 "* ]]; }
ROOT=0; [ "$(id -u)" -eq 0 ] && ROOT=1
ME=$(id -un); MYGROUP=$(id -gn)
export PATH=$PATH:/usr/sbin:/sbin   # daemons live in /usr/sbin (not in a normal user's PATH)

missing=""
need() { command -v "$1" >/dev/null || missing+=" $2"; }
need openssl openssl; need setsid util-linux
want nginx && need nginx nginx
want smtp && { "$PY" -c 'import aiosmtpd' 2>/dev/null || missing+=" python3-aiosmtpd"; }
want dovecot && { need dovecot dovecot-core; [ -e /usr/lib/dovecot/imap ] || missing+=" dovecot-imapd";
                  [ -e /usr/lib/dovecot/pop3 ] || missing+=" dovecot-pop3d"; }
want slapd && need slapd slapd
want dnsmasq && need dnsmasq dnsmasq-base
want squid && need squid squid
want mitmproxy && need mitmdump mitmproxy
want blackbox && need prometheus-blackbox-exporter prometheus-blackbox-exporter
want ftp && need vsftpd vsftpd
want ike && { [ -x /usr/lib/ipsec/charon ] || missing+=" strongswan-charon"; need swanctl strongswan-swanctl
              [ -e /usr/lib/ipsec/plugins/libstrongswan-openssl.so ] || missing+=" libstrongswan-standard-plugins"; }
if [ $ROOT = 0 ]; then   # vsftpd logs users in only as root; charon needs CAP_NET_ADMIN and /run
  if [ "$PEERS" = "$DEFAULT_PEERS" ]; then PEERS=${PEERS/ ftp ike/}; echo "peers: not root: leaving out ftp ike" >&2
  else for p in ftp ike; do want $p && die "$p needs root (vsftpd logins, charon's kernel interface)"; done; fi
fi
[ -z "$missing" ] || die "missing packages:$missing (apt-get install --no-install-recommends ...)"

# ---- stop leftovers from a previous run (by PID) ----
if [ -s "$DIR/peers.pids" ]; then "$HERE/stop.sh" "$DIR"; fi
: > "$DIR/peers.pids"
chmod 755 "$DIR"

# ---- certificates (kept across runs; leaf renewed when < 1 day left) ----
C=$DIR/certs
if [ ! -s "$C/server.pem" ] || ! openssl x509 -checkend 86400 -noout -in "$C/server.pem" >/dev/null; then
  rm -rf "$C"; mkdir -p "$C"
  cat > "$C/ext.cnf" <<'EOF'
[ca]
basicConstraints=critical,CA:TRUE
keyUsage=critical,keyCertSign,cRLSign
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid:always
[int]
basicConstraints=critical,CA:TRUE,pathlen:0
keyUsage=critical,keyCertSign,cRLSign
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid:always
[leaf]
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid:always
subjectAltName=DNS:localhost,DNS:example.com,DNS:*.example.com,DNS:maas360.com,DNS:*.maas360.com,DNS:*.m1.maas360.com,DNS:*.m3.maas360.com,IP:127.0.0.1,IP:::1
EOF
  key() { openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$C/$1.key" 2>/dev/null; }
  sign() { # name subject issuer ext days
    openssl req -new -key "$C/$1.key" -subj "$2" -out "$C/$1.csr"
    openssl x509 -req -in "$C/$1.csr" -CA "$C/$3.pem" -CAkey "$C/$3.key" -set_serial "0x$(openssl rand -hex 8)" \
      -sha256 -days "$5" -extfile "$C/ext.cnf" -extensions "$4" -out "$C/$1.pem" 2>/dev/null; }
  key public-root; key public-int; key server; key proxy-ca
  openssl req -x509 -new -key "$C/public-root.key" -sha256 -days 3650 -config "$C/ext.cnf" -extensions ca \
    -subj "/C=US/O=Test Public CA/CN=Test Public Root" -out "$C/public-root.pem"
  sign public-int "/C=US/O=Test Public CA/CN=Test Public Issuing CA 1" public-root int 3650
  sign server "/CN=localhost" public-int leaf 825
  openssl req -x509 -new -key "$C/proxy-ca.key" -sha256 -days 3650 -config "$C/ext.cnf" -extensions ca \
    -subj "/C=US/O=Example Corp./OU=IT/CN=Web Proxy" -out "$C/proxy-ca.pem"
  cat "$C/server.pem" "$C/public-int.pem" > "$C/server-chain.pem"
  rm -f "$C"/*.csr
fi

mkdir -p "$DIR"/{nginx/tmp,smtp,dovecot,slapd,dnsmasq,squid,mitmproxy,blackbox,echo,ftp,ftps,ftp-badpasv,ftp-badpasv-fwd,ftp-reuse,ike}
printf '127.0.0.1 localhost maas360.com www.maas360.com example.com mail.example.com ldap.example.com %s\n' "$(for m in 1 2 3 4 6; do printf 'mpnsv2.m%s.maas360.com ' $m; done)services.m3.maas360.com" > "$DIR/hosts"

# ---- configs ----
cat > "$DIR/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $DIR/nginx/nginx.pid;
error_log $DIR/nginx/error.log warn;
events { worker_connections 128; }
http {
  access_log off;
  client_body_temp_path $DIR/nginx/tmp/body; proxy_temp_path $DIR/nginx/tmp/proxy;
  fastcgi_temp_path $DIR/nginx/tmp/fcgi; uwsgi_temp_path $DIR/nginx/tmp/uwsgi; scgi_temp_path $DIR/nginx/tmp/scgi;
  server {
    listen 127.0.0.1:$PEER_HTTP_PORT;
    listen 127.0.0.1:$PEER_HTTPS_PORT ssl;
    listen [::1]:$PEER_HTTP_PORT;          # dual stack: maas360.com also answers AAAA ::1
    listen [::1]:$PEER_HTTPS_PORT ssl;
    ssl_certificate $C/server-chain.pem;
    ssl_certificate_key $C/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { return 404; }
  }
}
EOF

cat > "$DIR/smtp/smtpd.py" <<'EOF'
# SMTP peer: STARTTLS port + implicit-TLS port, AUTH PLAIN LOGIN CRAM-MD5 (after TLS);
# submission port: STARTTLS, MAIL FROM only after AUTH. RCPT to @blocked.example.com: 550.
import asyncio, hmac, logging, os, ssl, sys
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
host, port, tls_port, cert, key, sub_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6])
USER, PASSWORD = b"user@example.com", sys.argv[7].encode()
BLOCKED_DOMAIN = "blocked.example.com"
logging.basicConfig(level=logging.ERROR)

def authenticator(server, session, envelope, mechanism, data):   # PLAIN, LOGIN
    ok = isinstance(data, LoginPassword) and data.login == USER and data.password == PASSWORD
    return AuthResult(success=ok, handled=False, auth_data=data)  # handled=False: 535 on failure

class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.rpartition("@")[2].lower() == BLOCKED_DOMAIN:
            return "550 5.7.1 <%s>: Recipient address rejected: domain blocked" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"
    async def auth_CRAM__MD5(self, server, args):                 # advertised as CRAM-MD5
        challenge = f"<{os.getpid()}.{os.urandom(4).hex()}@localhost>".encode()
        resp = await server.challenge_auth(challenge)           # base64-decoded reply
        if not isinstance(resp, bytes):
            return AuthResult(success=False, handled=True)
        user, _, digest = resp.partition(b" ")
        good = hmac.new(PASSWORD, challenge, "md5").hexdigest().encode()
        ok = user == USER and hmac.compare_digest(digest, good)
        return AuthResult(success=ok, handled=False, auth_data=LoginPassword(user, b""))

ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)

async def main():
    loop, h = asyncio.get_running_loop(), Handler()
    kw = dict(hostname="mail.example.com", ident="ESMTP test peer", authenticator=authenticator)
    await loop.create_server(lambda: SMTP(h, tls_context=ctx, **kw), host, port)
    await loop.create_server(lambda: SMTP(h, auth_require_tls=False, **kw), host, tls_port, ssl=ctx)
    await loop.create_server(lambda: SMTP(h, tls_context=ctx, auth_required=True, **kw), host, sub_port)
    await asyncio.Event().wait()
asyncio.run(main())
EOF

MAILUID=$ME MAILGID=$MYGROUP
# CRAM-MD5 and APOP need the plaintext {PLAIN} passdb; APOP is POP3's own. Debian's dovecot
# has no NTLM: its auth process would die on it, and every login hang.
MAIL_MECHS="plain login cram-md5 apop"
# Distinctive, so tests can grep every output for it.
MAIL_PASSWORD=Mailbox-pw-3f9c
rm -rf "$DIR/dovecot/mail"; MD=$DIR/dovecot/mail/user@example.com/Maildir
mkdir -p "$MD"/{cur,new,tmp}   # INBOX exists from the start, with one message nothing deletes
cat > "$MD/new/1700000000.M1P1.peers" <<'EOF'
From: Peer Sender <sender@example.com>
To: user@example.com
Subject: hello from the test peers
Date: Tue, 14 Nov 2023 22:13:20 +0000
Message-ID: <hello.1@peers.example.com>

This message was put in INBOX by start.sh.
EOF
if [ $ROOT = 1 ]; then MAILUID=nobody MAILGID=nogroup; chown -R nobody:nogroup "$DIR/dovecot/mail"; fi
chmod 700 "$DIR/dovecot/mail"
printf 'user@example.com:{PLAIN}%s\n' "$MAIL_PASSWORD" > "$DIR/dovecot/users"
{ cat <<EOF
base_dir = $DIR/dovecot/run
state_dir = $DIR/dovecot/state
instance_name = peer-dovecot-$PEER_IMAP_PORT
log_path = $DIR/dovecot/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
ssl = yes
ssl_cert = <$C/server-chain.pem
ssl_key = <$C/server.key
ssl_dh = </usr/share/dovecot/dh.pem
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = yes
auth_mechanisms = $MAIL_MECHS
# A refused login answers at once (the default waits 2 s), and failed logins do not slow
# down later ones from the same address (anvil's penalty), so wrong-password tests are quick.
auth_failure_delay = 0
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
passdb {
  driver = passwd-file
  args = scheme=PLAIN $DIR/dovecot/users
}
userdb {
  driver = static
  args = uid=$MAILUID gid=$MAILGID home=$DIR/dovecot/mail/%u
}
mail_location = maildir:~/Maildir
service imap-login {
  inet_listener imap {
    port = $PEER_IMAP_PORT
  }
  inet_listener imaps {
    port = $PEER_IMAPS_PORT
    ssl = yes
  }
}
service pop3-login {
  inet_listener pop3 {
    port = $PEER_POP3_PORT
  }
  inet_listener pop3s {
    port = $PEER_POP3S_PORT
    ssl = yes
  }
}
EOF
  if [ $ROOT = 0 ]; then cat <<EOF
first_valid_uid = 1
default_internal_user = $ME
default_internal_group = $MYGROUP
default_login_user = $ME
service anvil {
  chroot =
}
service imap-login {
  chroot =
}
service pop3-login {
  chroot =
}
EOF
  fi; } > "$DIR/dovecot/dovecot.conf"

cat > "$DIR/slapd/slapd.conf" <<EOF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile $DIR/slapd/slapd.pid
argsfile $DIR/slapd/slapd.args
TLSCertificateFile $C/server-chain.pem
TLSCertificateKeyFile $C/server.key
access to dn.base="" by * read
access to dn.base="cn=Subschema" by * read
access to attrs=userPassword by anonymous auth by * none
access to * by dn.exact="cn=reader,dc=example,dc=com" read by * none
database mdb
maxsize 16777216
suffix "dc=example,dc=com"
rootdn "cn=admin,dc=example,dc=com"
rootpw adminsecret
directory $DIR/slapd/data
EOF
cat > "$DIR/slapd/base.ldif" <<EOF
dn: dc=example,dc=com
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: cn=reader,dc=example,dc=com
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: reader
userPassword: readersecret

dn: ou=people,dc=example,dc=com
objectClass: organizationalUnit
ou: people

dn: uid=jdoe,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
uid: jdoe
cn: John Doe
sn: Doe
mail: jdoe@example.com

dn: uid=asmith,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
uid: asmith
cn: Ann Smith
sn: Smith
mail: asmith@example.com

dn: ou=empty,dc=example,dc=com
objectClass: organizationalUnit
ou: empty
EOF

cat > "$DIR/squid/squid.conf" <<EOF
http_port 127.0.0.1:$PEER_SQUID_PORT
acl loopback src 127.0.0.0/8
http_access allow loopback
http_access deny all
cache deny all
pid_filename $DIR/squid/squid.pid
cache_log $DIR/squid/cache.log
access_log stdio:$DIR/squid/access.log
cache_store_log none
coredump_dir $DIR/squid
netdb_filename none
pinger_enable off
hosts_file $DIR/hosts
dns_nameservers 127.0.0.1
dns_timeout 3 seconds
visible_hostname test-proxy
shutdown_lifetime 0 seconds
EOF
[ $ROOT = 1 ] && chown -R proxy:proxy "$DIR/squid"

cat "$C/proxy-ca.key" "$C/proxy-ca.pem" > "$DIR/mitmproxy/mitmproxy-ca.pem"
cat > "$DIR/mitmproxy/hosts_addon.py" <<'EOF'
# Map names from the shared hosts file to loopback before connecting upstream (SNI unchanged).
import os
MAP = {}
for line in open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "hosts")):
    f = line.split("#")[0].split()
    MAP.update({n.lower(): f[0] for n in f[1:]})
def server_connect(data):
    host, port = data.server.address
    if host.lower() in MAP:
        data.server.address = (MAP[host.lower()], port)
EOF

cat > "$DIR/blackbox/blackbox.yml" <<EOF
modules:
  tls_connect:
    prober: tcp
    timeout: 5s
    tcp: {tls: true, tls_config: {ca_file: $C/public-root.pem, server_name: localhost}}
  http_404:
    prober: http
    timeout: 5s
    http: {valid_status_codes: [404], tls_config: {ca_file: $C/public-root.pem}}
  smtp_starttls:
    prober: tcp
    timeout: 5s
    tcp:
      tls_config: {ca_file: $C/public-root.pem, server_name: localhost}
      query_response:
        - expect: "^220 "
        - send: "EHLO probe\r"
        - expect: "^250-STARTTLS"
        - send: "STARTTLS\r"
        - expect: "^220 "
        - starttls: true
        - send: "EHLO probe\r"
        - expect: "^250-AUTH .*CRAM-MD5"
        - send: "QUIT\r"
  dns_a:
    prober: dns
    timeout: 5s
    dns: {query_name: maas360.com, query_type: A, transport_protocol: udp, valid_rcodes: [NOERROR]}
EOF

# vsftpd: one process per listener (AUTH TLS optional, implicit TLS, bad PASV). Anonymous and
# the user (local_root) see the same read-only tree, DIR/ftp/root with pub/hello.txt.
# The bad-PASV vsftpd listens on 127.0.0.2 behind a TCP forwarder on 127.0.0.1: its PASV reply
# names 127.0.0.9 and its data sockets sit on 127.0.0.2, so a data connection to the advertised
# address (PASV) or to the control address (EPSV, or PASV with the address ignored) is refused.
rm -rf "$DIR/ftp/root"; mkdir -p "$DIR/ftp/root/pub" "$DIR/ftp/empty"
echo "hello from the FTP test peer" > "$DIR/ftp/root/pub/hello.txt"
vsftpd_conf() { # name listen-address port pasv-min pasv-max [extra lines]
  local name=$1 addr=$2 port=$3 min=$4 max=$5; shift 5
  { cat <<EOF
listen=YES
listen_ipv6=NO
listen_address=$addr
listen_port=$port
background=NO
seccomp_sandbox=NO
isolate_network=NO
secure_chroot_dir=$DIR/ftp/empty
pam_service_name=other
anonymous_enable=YES
no_anon_password=YES
anon_root=$DIR/ftp/root
local_enable=YES
local_root=$DIR/ftp/root
chroot_local_user=YES
write_enable=NO
pasv_enable=YES
pasv_min_port=$min
pasv_max_port=$max
ssl_enable=YES
rsa_cert_file=$C/server-chain.pem
rsa_private_key_file=$C/server.key
ssl_ciphers=HIGH
allow_anon_ssl=YES
force_local_logins_ssl=NO
force_local_data_ssl=NO
require_ssl_reuse=NO
xferlog_enable=YES
xferlog_std_format=NO
log_ftp_protocol=YES
vsftpd_log_file=$DIR/$name/vsftpd.log
EOF
    printf '%s\n' "$@"; } > "$DIR/$name/vsftpd.conf"; }
vsftpd_conf ftp 127.0.0.1 "$PEER_FTP_PORT" "$PEER_FTP_PASV_MIN" "$PEER_FTP_PASV_MAX"
vsftpd_conf ftps 127.0.0.1 "$PEER_FTPS_PORT" "$PEER_FTP_PASV_MIN" "$PEER_FTP_PASV_MAX" implicit_ssl=YES
vsftpd_conf ftp-badpasv "$FTP_BAD_BACKEND" "$PEER_FTP_BADPASV_PORT" $((PEER_FTP_PASV_MAX + 1)) $((PEER_FTP_PASV_MAX + 5)) \
  pasv_address=$FTP_BAD_PASV_ADDR pasv_addr_resolve=NO
# Like ftp, but data connections must resume the control connection's TLS session (vsftpd's
# default, which clients without session reuse fail); the last setting of a key wins.
vsftpd_conf ftp-reuse 127.0.0.1 "$PEER_FTP_REUSE_PORT" $((PEER_FTP_PASV_MAX + 6)) $((PEER_FTP_PASV_MAX + 10)) \
  require_ssl_reuse=YES
cat > "$DIR/ftp-badpasv-fwd/fwd.py" <<'EOF'
# TCP forwarder LISTEN-HOST PORT TARGET-HOST PORT, bytes unchanged (the bad-PASV FTP control channel).
import asyncio, sys
lhost, lport, thost, tport = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])

async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    except OSError:
        writer.close()

async def handle(creader, cwriter):
    try:
        ureader, uwriter = await asyncio.open_connection(thost, tport)
    except OSError:
        cwriter.close()
        return
    await asyncio.gather(pipe(creader, uwriter), pipe(ureader, cwriter))
    cwriter.close(); uwriter.close()

async def main():
    server = await asyncio.start_server(handle, lhost, lport)
    await server.serve_forever()
asyncio.run(main())
EOF
if want ftp && ! id -u "$FTP_USER" >/dev/null 2>&1; then  # PAM "other" = pam_unix: no shell needed
  useradd --system --no-create-home --home-dir / --shell /usr/sbin/nologin --comment "netreach test peers FTP user" \
    --password "$(openssl passwd -6 "$FTP_PASSWORD")" "$FTP_USER"
fi

# charon: IKEv2 responder, PSK, two proposals. socket-default binds 0.0.0.0 (it has no bind
# address option); interfaces_use = lo makes charon drop packets sent to any non-lo address.
# No children: an IKE_AUTH may complete, but no IPsec SA or policy reaches the kernel.
IKE_PSK=ikesecret IKE_ID=ike.example.com IKE_PROPOSALS=aes256-sha256-modp2048,aes128gcm16-prfsha256-x25519
cat > "$DIR/ike/strongswan.conf" <<EOF
charon {
  load = random nonce openssl aes sha1 sha2 hmac gmp kdf pem pkcs1 x509 pubkey kernel-netlink socket-default vici
  port = $PEER_IKE_PORT
  port_nat_t = $PEER_IKE_NATT_PORT
  interfaces_use = lo
  install_routes = no
  install_virtual_ip = no
  # no COOKIE replies or per-IP blocking after a few half-open IKE_SAs (probes never finish)
  dos_protection = no
  plugins {
    socket-default {
      use_ipv6 = no
    }
    vici {
      socket = unix://$DIR/ike/charon.vici
    }
  }
  filelog {
    stderr {
      default = 1
      ike = 2
    }
  }
}
EOF
cat > "$DIR/ike/swanctl.conf" <<EOF
connections {
  peers {
    version = 2
    local_addrs = 127.0.0.1
    proposals = ${IKE_PROPOSALS//,/, }
    local {
      auth = psk
      id = $IKE_ID
    }
    remote {
      auth = psk
    }
  }
}
secrets {
  ike-peers {
    secret = "$IKE_PSK"
  }
}
EOF

# Echo service for source-address checks: GET / answers the caller's address as text
# ("127.0.0.1\n"), GET /json as {"ip": "..."}; a plain and a TLS port on 127.0.0.1.
cat > "$DIR/echo/echo.py" <<'EOF'
import http.server, json, ssl, sys, threading
port, tls_port, cert, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
tls.load_cert_chain(cert, key)

class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version, timeout = "HTTP/1.1", 10
    def do_GET(self):
        ip = self.client_address[0].removeprefix("::ffff:")
        answers = {"/": (ip + "\n", "text/plain"), "/json": (json.dumps({"ip": ip}) + "\n", "application/json")}
        if self.path not in answers:
            return self.send_error(404)
        body, kind = answers[self.path]
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", kind + "; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    tls = False
    def finish_request(self, request, client_address):
        if self.tls:  # the handshake runs in the connection's own thread
            request.settimeout(10)
            request = tls.wrap_socket(request, server_side=True)
        super().finish_request(request, client_address)
    def handle_error(self, request, client_address):
        pass

for p, wrapped in ((port, False), (tls_port, True)):
    server = type("EchoServer", (Server,), {"tls": wrapped})(("127.0.0.1", p), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
threading.Event().wait()
EOF

# ---- pre-flight ----
port_busy() { (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null; }   # port [host]
udp_bound() { local hex; hex=$(printf ':%04X' "$1")   # any local address (charon binds 0.0.0.0)
  cat /proc/net/udp /proc/net/udp6 2>/dev/null | awk -v p="$hex" 'substr($2, length($2) - 4) == p {f = 1} END {exit !f}'; }
if [ $ROOT = 1 ] && { want squid || want dovecot; }; then  # they switch to proxy / nobody
  setpriv --reuid=proxy --regid=proxy --clear-groups test -w "$DIR/squid" ||
    die "$DIR is not reachable by unprivileged users (a parent dir lacks o+x); use a dir under /tmp"
fi
busy=""
want nginx && for p in $PEER_HTTP_PORT $PEER_HTTPS_PORT; do port_busy $p && busy+=" $p"; done
want smtp && for p in $PEER_SMTP_PORT $PEER_SMTPS_PORT $PEER_SUBMISSION_PORT; do port_busy $p && busy+=" $p"; done
want dovecot && for p in $PEER_IMAP_PORT $PEER_IMAPS_PORT $PEER_POP3_PORT $PEER_POP3S_PORT; do port_busy $p && busy+=" $p"; done
want slapd && for p in $PEER_LDAP_PORT $PEER_LDAPS_PORT; do port_busy $p && busy+=" $p"; done
want squid && { port_busy $PEER_SQUID_PORT && busy+=" $PEER_SQUID_PORT"; }
want mitmproxy && { port_busy $PEER_MITM_PORT && busy+=" $PEER_MITM_PORT"; }
want blackbox && { port_busy $PEER_BLACKBOX_PORT && busy+=" $PEER_BLACKBOX_PORT"; }
want ftp && for p in $PEER_FTP_PORT $PEER_FTPS_PORT $PEER_FTP_BADPASV_PORT $PEER_FTP_REUSE_PORT; do port_busy $p && busy+=" $p"; done
want ftp && { port_busy $PEER_FTP_BADPASV_PORT $FTP_BAD_BACKEND && busy+=" $FTP_BAD_BACKEND:$PEER_FTP_BADPASV_PORT"; }
want ike && for p in $PEER_IKE_PORT $PEER_IKE_NATT_PORT; do udp_bound $p && busy+=" udp/$p"; done
want ike && [ -s /run/charon.pid ] && kill -0 "$(cat /run/charon.pid)" 2>/dev/null &&
  die "a charon already runs (pid $(cat /run/charon.pid), /run/charon.pid); only one can run per machine: stop it, or leave ike out of PEERS"
want echo && for p in $PEER_ECHO_PORT $PEER_ECHO_TLS_PORT; do port_busy $p && busy+=" $p"; done
[ -z "$busy" ] || die "ports already in use:$busy"

# ---- launch (all at once, own session each, output to DIR/<name>/out.log) ----
T0=$(date +%s%N)
launch() { local name=$1; shift
  setsid "$@" </dev/null >"$DIR/$name/out.log" 2>&1 &
  echo "$name $!" >> "$DIR/peers.pids"; }

want nginx && launch nginx nginx -p "$DIR/nginx" -c "$DIR/nginx/nginx.conf" -e "$DIR/nginx/error.log" -g 'daemon off;'
want smtp && launch smtp "$PY" "$DIR/smtp/smtpd.py" 127.0.0.1 "$PEER_SMTP_PORT" "$PEER_SMTPS_PORT" "$C/server-chain.pem" "$C/server.key" \
  "$PEER_SUBMISSION_PORT" "$MAIL_PASSWORD"
if want dovecot; then rm -rf "$DIR/dovecot/run"; launch dovecot dovecot -F -c "$DIR/dovecot/dovecot.conf"; fi
if want slapd; then
  rm -rf "$DIR/slapd/data"; mkdir -p "$DIR/slapd/data"
  slapadd -f "$DIR/slapd/slapd.conf" -l "$DIR/slapd/base.ldif" > "$DIR/slapd/slapadd.log" 2>&1 ||
    die "slapadd failed: $(cat "$DIR/slapd/slapadd.log")"
  launch slapd slapd -d 0 -f "$DIR/slapd/slapd.conf" -h "ldap://127.0.0.1:$PEER_LDAP_PORT/ ldaps://127.0.0.1:$PEER_LDAPS_PORT/"
fi
want dnsmasq && launch dnsmasq dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts --no-poll \
  --bind-interfaces --listen-address=127.0.0.1 --port="$PEER_DNS_PORT" --pid-file="$DIR/dnsmasq/dnsmasq.pid" \
  --log-facility=- --address=/maas360.com/127.0.0.1 --address=/maas360.com/::1 --address=/example.com/127.0.0.1 \
  --mx-host=example.com,mail.example.com,10 --address=/#/
if want squid; then  # -n: unique service name => own /dev/shm segments (stale ones break startup)
  SQN=peersquid$PEER_SQUID_PORT; rm -f /dev/shm/"$SQN"-*.shm
  launch squid squid -N -n "$SQN" -f "$DIR/squid/squid.conf"
fi
want mitmproxy && launch mitmproxy mitmdump --listen-host 127.0.0.1 --listen-port "$PEER_MITM_PORT" \
  --set confdir="$DIR/mitmproxy" --set ssl_verify_upstream_trusted_ca="$C/public-root.pem" -s "$DIR/mitmproxy/hosts_addon.py"
want blackbox && launch blackbox prometheus-blackbox-exporter --config.file="$DIR/blackbox/blackbox.yml" \
  --web.listen-address="127.0.0.1:$PEER_BLACKBOX_PORT"
if want ftp; then
  for f in ftp ftps ftp-badpasv ftp-reuse; do launch $f vsftpd "$DIR/$f/vsftpd.conf"; done
  launch ftp-badpasv-fwd "$PY" "$DIR/ftp-badpasv-fwd/fwd.py" 127.0.0.1 "$PEER_FTP_BADPASV_PORT" "$FTP_BAD_BACKEND" "$PEER_FTP_BADPASV_PORT"
fi
if want ike; then  # charon ignores the extra argument; it puts DIR in the command line for stop.sh
  rm -f "$DIR/ike/loaded" "$DIR/ike/charon.vici"
  launch ike env STRONGSWAN_CONF="$DIR/ike/strongswan.conf" /usr/lib/ipsec/charon "$DIR/ike"
fi
want echo && launch echo "$PY" "$DIR/echo/echo.py" "$PEER_ECHO_PORT" "$PEER_ECHO_TLS_PORT" "$C/server-chain.pem" "$C/server.key"

# ---- readiness ----
dns_ok() { "$PY" - "$1" <<'EOF'
import socket, struct, sys
q = struct.pack(">HHHHHH", 7, 0x100, 1, 0, 0, 0) + b"\x07maas360\x03com\x00" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.3)
s.sendto(q, ("127.0.0.1", int(sys.argv[1])))
r = s.recv(512); sys.exit(0 if r[3] & 15 == 0 and r[6:8] != b"\0\0" else 1)
EOF
}
ike_loaded() { # once charon's vici socket is up, load swanctl.conf (connection + PSK)
  [ -e "$DIR/ike/loaded" ] || { [ -S "$DIR/ike/charon.vici" ] &&
    STRONGSWAN_CONF="$DIR/ike/strongswan.conf" swanctl --load-all --noprompt --uri "unix://$DIR/ike/charon.vici" \
      --file "$DIR/ike/swanctl.conf" > "$DIR/ike/swanctl.log" 2>&1 && touch "$DIR/ike/loaded"; }; }
ready() { case $1 in
  nginx) port_busy $PEER_HTTP_PORT && port_busy $PEER_HTTPS_PORT ;;
  smtp) port_busy $PEER_SMTP_PORT && port_busy $PEER_SMTPS_PORT && port_busy $PEER_SUBMISSION_PORT ;;
  dovecot) port_busy $PEER_IMAP_PORT && port_busy $PEER_IMAPS_PORT && port_busy $PEER_POP3_PORT && port_busy $PEER_POP3S_PORT ;;
  slapd) port_busy $PEER_LDAP_PORT && port_busy $PEER_LDAPS_PORT ;;
  dnsmasq) dns_ok $PEER_DNS_PORT 2>/dev/null ;;
  squid) port_busy $PEER_SQUID_PORT ;;
  mitmproxy) port_busy $PEER_MITM_PORT ;;
  blackbox) port_busy $PEER_BLACKBOX_PORT ;;
  ftp) port_busy $PEER_FTP_PORT ;;
  ftps) port_busy $PEER_FTPS_PORT ;;
  ftp-badpasv) port_busy $PEER_FTP_BADPASV_PORT $FTP_BAD_BACKEND ;;
  ftp-badpasv-fwd) port_busy $PEER_FTP_BADPASV_PORT ;;
  ftp-reuse) port_busy $PEER_FTP_REUSE_PORT ;;
  ike) udp_bound $PEER_IKE_PORT && udp_bound $PEER_IKE_NATT_PORT && ike_loaded ;;
  echo) port_busy $PEER_ECHO_PORT && port_busy $PEER_ECHO_TLS_PORT ;;
esac; }
fail() { echo "peers: $1 not ready: $2; last log lines:" >&2
  tail -n 20 "$DIR/$1"/*.log >&2 2>/dev/null || true
  "$HERE/stop.sh" "$DIR" >&2 || true; exit 1; }
deadline=$(( $(date +%s) + TIMEOUT ))
while read -r name pid; do
  until ready "$name"; do
    kill -0 "$pid" 2>/dev/null || fail "$name" "process $pid exited"
    [ "$(date +%s)" -lt "$deadline" ] || fail "$name" "timeout ${TIMEOUT}s"
    sleep 0.05
  done
  printf '%-10s pid %-7s ready after %5d ms\n' "$name" "$pid" $(( ($(date +%s%N) - T0) / 1000000 ))
done < "$DIR/peers.pids"

cat > "$DIR/peers.env" <<EOF
PEERS_DIR=$DIR
PEERS_CA_PUBLIC=$C/public-root.pem
PEERS_CA_PROXY=$C/proxy-ca.pem
PEERS_SERVER_CERT=$C/server-chain.pem
PEER_HTTP_PORT=$PEER_HTTP_PORT
PEER_HTTPS_PORT=$PEER_HTTPS_PORT
PEER_SMTP_PORT=$PEER_SMTP_PORT
PEER_SMTPS_PORT=$PEER_SMTPS_PORT
PEER_IMAP_PORT=$PEER_IMAP_PORT
PEER_IMAPS_PORT=$PEER_IMAPS_PORT
PEER_POP3_PORT=$PEER_POP3_PORT
PEER_POP3S_PORT=$PEER_POP3S_PORT
PEER_LDAP_PORT=$PEER_LDAP_PORT
PEER_LDAPS_PORT=$PEER_LDAPS_PORT
PEER_DNS_PORT=$PEER_DNS_PORT
PEER_SQUID_PORT=$PEER_SQUID_PORT
PEER_ECHO_PORT=$PEER_ECHO_PORT
PEER_ECHO_TLS_PORT=$PEER_ECHO_TLS_PORT
PEER_MITM_PORT=$PEER_MITM_PORT
PEER_BLACKBOX_PORT=$PEER_BLACKBOX_PORT
PEER_SUBMISSION_PORT=$PEER_SUBMISSION_PORT
PEER_MAIL_USER=user@example.com
PEER_MAIL_PASSWORD=$MAIL_PASSWORD
PEER_MAIL_MECHS=$(echo $MAIL_MECHS | tr 'a-z ' 'A-Z,')
PEER_MAIL_MESSAGES=1
PEER_SMTP_GOOD_RCPT=listener@example.com
PEER_SMTP_BAD_RCPT=nobody@blocked.example.com
PEER_LDAP_SUBTREE=ou=people,dc=example,dc=com
PEER_LDAP_SUBTREE_ENTRIES=2
PEER_LDAP_EMPTY_SUBTREE=ou=empty,dc=example,dc=com
PEER_LDAP_BASE=dc=example,dc=com
PEER_LDAP_BIND_DN=cn=reader,dc=example,dc=com
PEER_LDAP_BIND_PASSWORD=readersecret
PEER_FTP_PORT=$PEER_FTP_PORT
PEER_FTPS_PORT=$PEER_FTPS_PORT
PEER_FTP_BADPASV_PORT=$PEER_FTP_BADPASV_PORT
PEER_FTP_BADPASV_ADDR=$FTP_BAD_PASV_ADDR
PEER_FTP_REUSE_PORT=$PEER_FTP_REUSE_PORT
PEER_FTP_PASV_MIN=$PEER_FTP_PASV_MIN
PEER_FTP_PASV_MAX=$PEER_FTP_PASV_MAX
PEER_FTP_USER=$FTP_USER
PEER_FTP_PASSWORD=$FTP_PASSWORD
PEER_IKE_PORT=$PEER_IKE_PORT
PEER_IKE_NATT_PORT=$PEER_IKE_NATT_PORT
PEER_IKE_PROPOSALS=$IKE_PROPOSALS
EOF
echo "all peers ready in $(( ($(date +%s%N) - T0) / 1000000 )) ms; pids in $DIR/peers.pids, settings in $DIR/peers.env"
