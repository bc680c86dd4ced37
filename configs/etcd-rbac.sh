#!/bin/sh
# etcd-rbac.sh: give Lanyard an etcd user whose role may read and write its
# own key prefix and nothing else, and turn etcd authentication on.
# For etcd 3.4 (etcdctl v3 API); see docs/deployment.md, "etcd".
#
# Idempotent: every step checks first, so running it again changes nothing
# (and re-grants the prefix permission, which is harmless). It never deletes
# a user, role or permission; it prints the role at the end so you can see
# whether it holds anything else.
#
# Run it as the etcd administrator, against the cluster's client URLs, with
# a client certificate whose CN is "root" (signed by the CA the members
# trust with --trusted-ca-file). etcdctl reads its connection settings from
# the environment:
#
#   export ETCDCTL_API=3
#   export ETCDCTL_ENDPOINTS=https://etcd-1.example.internal:2379,https://etcd-2.example.internal:2379,https://etcd-3.example.internal:2379
#   export ETCDCTL_CACERT=/etc/etcd/pki/ca.pem         # CA of the members' server certificates
#   export ETCDCTL_CERT=/etc/etcd/pki/admin-root.pem    # client certificate, CN=root
#   export ETCDCTL_KEY=/etc/etcd/pki/admin-root-key.pem
#
# Settings (environment, with defaults):
#   LANYARD_ETCD_PREFIX    /lanyard/   must equal store.etcd.prefix, ending in "/"
#   LANYARD_ETCD_USER      lanyard     etcd user Lanyard connects as
#   LANYARD_ETCD_ROLE      lanyard     role holding the prefix permission
#   LANYARD_ETCD_PASSWORD  (unset)     unset: the user has no password and
#                                      authenticates by its client
#                                      certificate's CN (= LANYARD_ETCD_USER);
#                                      set: a password user (store.etcd.username
#                                      and password); read from the environment,
#                                      never put on a command line
#   ETCD_ROOT_PASSWORD     (unset)     unset: root has no password (certificate
#                                      CN=root only); set: root gets this password
#
# Notes (checked against etcd 3.4.23):
#   - With --client-cert-auth, a certificate's CN logs in as the user of that
#     name when the client sends no username/password. When it does send
#     them, the password login wins over the CN.
#   - A user created without a password cannot log in with one ("password
#     was given for no password user"): choose one way per user.
#   - Any certificate from the trusted CA with CN=root is root. Sign client
#     certificates with a CA used for nothing else, and give a CN=root
#     certificate to administrators only.

set -eu

: "${ETCDCTL_ENDPOINTS:?set ETCDCTL_ENDPOINTS (and ETCDCTL_CACERT, ETCDCTL_CERT, ETCDCTL_KEY)}"
export ETCDCTL_API=3

PREFIX=${LANYARD_ETCD_PREFIX:-/lanyard/}
USER_NAME=${LANYARD_ETCD_USER:-lanyard}
ROLE=${LANYARD_ETCD_ROLE:-lanyard}

case $PREFIX in
  /*/) ;;
  *) echo "LANYARD_ETCD_PREFIX must start and end with /: $PREFIX" >&2; exit 2 ;;
esac

say() { printf '%s\n' "etcd-rbac: $*"; }

# add_user NAME PASSWORD-OR-EMPTY: create the user unless it exists. The
# password goes through standard input (--interactive=false), never argv.
add_user() {
  if etcdctl user get "$1" >/dev/null 2>&1; then
    say "user $1 exists"
  elif [ -n "$2" ]; then
    printf '%s\n' "$2" | etcdctl user add "$1" --interactive=false >/dev/null
    say "user $1 created (password)"
  else
    etcdctl user add "$1" --no-password >/dev/null
    say "user $1 created (no password: client certificate CN=$1 only)"
  fi
}

# 1. root: must exist with the root role before authentication is enabled.
add_user root "${ETCD_ROOT_PASSWORD:-}"
etcdctl user grant-role root root >/dev/null          # granting twice is a no-op

# 2. The role: read and write on [PREFIX, PREFIX+1), that is every key that
#    starts with PREFIX. Lanyard keeps everything there (records, indexes,
#    expiry keys, the audit chain, counters, lock keys).
if etcdctl role get "$ROLE" >/dev/null 2>&1; then
  say "role $ROLE exists"
else
  etcdctl role add "$ROLE" >/dev/null
  say "role $ROLE created"
fi
etcdctl role grant-permission --prefix=true "$ROLE" readwrite "$PREFIX" >/dev/null
say "role $ROLE may read and write keys under $PREFIX"

# 3. Lanyard's user, with that role only.
add_user "$USER_NAME" "${LANYARD_ETCD_PASSWORD:-}"
etcdctl user grant-role "$USER_NAME" "$ROLE" >/dev/null

# 4. Authentication on. Enabling it again is a no-op; from now on every
#    etcdctl call needs the root certificate (or --user root).
etcdctl auth enable >/dev/null
say "authentication enabled"

# What the role and user hold now: check that nothing else is listed.
etcdctl role get "$ROLE"
etcdctl user get "$USER_NAME"
