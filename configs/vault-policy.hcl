# Vault policy "lanyard": the least a Lanyard replica needs.
#
# Written for the set-up in docs/deployment.md:
#   secrets.vault.mount:  kv-lanyard   (a KV version 2 secrets engine of Lanyard's own)
#   secrets.vault.prefix: prod
# If you change either, change every path below to match. Lanyard keeps a
# secret with key OWNER/NAME at MOUNT/data/PREFIX/OWNER/NAME, and nothing
# anywhere else: upstream credentials of linked accounts (OWNER = the user's
# id), and its own keys under OWNER "system" (signing-keys, web-csrf-key,
# link-key).
#
# Install it with:
#   vault policy write lanyard configs/vault-policy.hcl
# and give it to the AppRole role with token_no_default_policy=true, so that
# these rules are all a Lanyard token can do (docs/deployment.md, "Vault").

# Secret values (KV v2 "data" endpoint).
#   read   - Get: read the current version of a secret.
#   create - Put: write the first version (check-and-set 0), or a new
#            version over a deleted one.
#   update - Put: write a new version of an existing secret (always with a
#            check-and-set version, so concurrent replicas never overwrite
#            each other's writes).
# No "delete" (Lanyard never soft-deletes a version; it removes the whole
# secret through the metadata endpoint), no "list" (listing goes through
# metadata), no "patch".
path "kv-lanyard/data/prod/*" {
  capabilities = ["create", "read", "update"]
}

# Secret metadata (KV v2 "metadata" endpoint).
#   read   - the current version number: check-and-set writes on a mount with
#            cas_required, re-creating a secret whose last version was
#            deleted, and the existence check before Delete.
#   list   - List: LIST MOUNT/metadata/PREFIX/OWNER/ (one owner's secrets).
#   delete - Delete: DELETE MOUNT/metadata/PREFIX/OWNER/NAME removes every
#            version of a secret at once (unlink, resource or key removal).
# No "create"/"update": Lanyard never writes metadata (max_versions and
# cas_required are the operator's, set on the mount).
path "kv-lanyard/metadata/prod/*" {
  capabilities = ["read", "list", "delete"]
}

# The AppRole token's own lifecycle. With token_no_default_policy=true the
# "default" policy does not grant these, so they are repeated here.
#   renew-self  - the lifetime watcher renews the token before its TTL ends.
#   lookup-self - after a "permission denied" answer Lanyard asks whether its
#                 token is still valid before logging in again (without it,
#                 re-logins are limited to one per 30 s and Lanyard logs a
#                 warning).
#   revoke-self - a token replaced by a new login is revoked at once rather
#                 than left valid until it expires.
path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/lookup-self" {
  capabilities = ["read"]
}

path "auth/token/revoke-self" {
  capabilities = ["update"]
}

# Not needed, and not granted:
#   sys/health                   - unauthenticated (Lanyard's /readyz asks it).
#   auth/approle/login           - unauthenticated (the role id and secret id
#                                  are the credentials).
#   sys/wrapping/unwrap          - the secret id is unwrapped by whoever
#                                  delivers it, not by Lanyard.
#   cubbyhole/*, sys/leases/*, identity/*, sys/capabilities-self - unused.
