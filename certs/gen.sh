#!/usr/bin/env bash
# Makes a development PKI in certs/dev/: a CA, a server certificate for localhost, and client
# certificates. For development and the demo only: nothing here is trusted anywhere else, and the
# generated keys are never committed (certs/dev/ is git-ignored).
#
#   certs/dev/ca.crt                      client CA and issuer of the server certificate
#   certs/dev/server.crt, server.key      CN=localhost, SAN DNS:localhost, IP:127.0.0.1
#   certs/dev/device-42.crt, .key         CN=device-42
#   certs/dev/sensor-7.crt, .key          CN=sensor-7, SAN URI:spiffe://example.org/sensors/7
#   certs/dev/jurgen.crt, .key            a subject with UTF-8, a comma and a multi-valued RDN
#
# Usage: certs/gen.sh [OUT_DIR]   (re-running replaces everything)
set -euo pipefail
command -v openssl >/dev/null || { echo "certs/gen.sh needs openssl: apt-get install openssl" >&2; exit 1; }
out=${1:-"$(cd "$(dirname "$0")" && pwd)/dev"}
mkdir -p "$out"
cd "$out"
umask 077

days=825
ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

ec ca.key
openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/O=mqtls development/CN=mqtls dev CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.crt

# issue NAME SUBJECT EXTENSIONS...
issue() {
  local name=$1 subj=$2; shift 2
  ec "$name.key"
  openssl req -new -key "$name.key" -subj "$subj" -utf8 -multivalue-rdn -out "$name.csr"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature"
    for ext in "$@"; do echo "$ext"; done
  } > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days "$days" \
    -extfile "$name.ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

issue server "/CN=localhost" "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1"
issue device-42 "/CN=device-42" "extendedKeyUsage=clientAuth"
issue sensor-7 "/CN=sensor-7" "extendedKeyUsage=clientAuth" "subjectAltName=URI:spiffe://example.org/sensors/7"
issue jurgen "/C=GB/O=Acme, Inc./OU=Prod+OU=Ops/CN=Jürgen #1" "extendedKeyUsage=clientAuth" \
  "subjectAltName=email:j@example.org"
chmod 644 ./*.crt
echo "development PKI written to $out"
