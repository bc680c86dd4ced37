package broker

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

// TestChained: the bytes a backend stores are exactly json.Marshal of
// the chained event, and its hash is ChainHash, for events with every
// member set, none set, and text that needs escaping.
func TestChained(t *testing.T) {
	now := time.Date(2026, 11, 22, 3, 4, 5, 6, time.FixedZone("X", 3600))
	for _, e := range []AuditEvent{
		{},
		{Action: AuditRedeem, Outcome: OutcomeOK},
		{Time: now, Action: AuditRedeem, Outcome: OutcomeDenied, Reason: "a \"quoted\" <reason> \u2028 é", UserID: "u",
			ClientID: "https://c.example/?a=1&b=2", Resource: "https://r.example/", Tool: "t\x01", Connector: "k",
			ConnectionID: "c", GrantID: "g", RequestID: "r", Hash: "stale"},
	} {
		got, raw := e.Chained(7, "prevhash", now)
		want, err := json.Marshal(got)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(raw, want) {
			t.Errorf("Chained bytes:\n got %s\nwant %s", raw, want)
		}
		if got.Hash != got.ChainHash() || got.Seq != 7 || got.PrevHash != "prevhash" || got.Time.IsZero() {
			t.Errorf("Chained event = %+v (ChainHash %s)", got, got.ChainHash())
		}
		if c, again := e.Chained(7, "prevhash", now); c != got || !bytes.Equal(again, raw) {
			t.Errorf("Chained twice = %+v %s, then %+v %s", got, raw, c, again)
		}
	}
}
