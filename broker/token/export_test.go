package token

// Snapshot returns the in-memory key set, so tests can tell whether Reload
// replaced it.
func (k *Keyring) Snapshot() any { return k.cur.Load() }
