package redeem

import (
	"testing"

	"github.com/lanyardhq/lanyard/broker"
)

// BenchmarkCheckPolicy: the tool policy decision for an allowed call, with
// a policy of 20 tools and the matching rule last.
func BenchmarkCheckPolicy(b *testing.B) {
	var p broker.ToolPolicy
	for i := range 19 {
		p.Tools = append(p.Tools, broker.ToolRule{Name: "tool_" + string(rune('a'+i)), Scopes: []string{"mail.read"}})
	}
	p.Tools = append(p.Tools, broker.ToolRule{Name: "search_messages", Scopes: []string{"mail.read"}, Connectors: []string{"imap"}})
	scopes := []string{"mail.read", "mail.send"}
	b.ReportAllocs()
	for b.Loop() {
		if f := checkPolicy(p, "search_messages", "imap", scopes); f != nil {
			b.Fatal(f.err)
		}
	}
}
