// Package audit verifies and exports Lanyard's hash-chained audit record
// (broker.AuditLog): `lanyard audit verify` and `lanyard audit export`.
// Appending is the store's job, in one atomic step per record.
package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/lanyardhq/lanyard/broker"
)

// Problem is the first place the chain breaks.
type Problem struct {
	Seq    uint64
	Reason string
}

func (p *Problem) Error() string { return fmt.Sprintf("audit record %d: %s", p.Seq, p.Reason) }

// Verify walks the whole chain and returns how many records it checked. It
// detects a changed record (its hash no longer matches), a removed record
// (a gap in the sequence or a broken link to the previous hash) and a
// reordered one (sequence out of order, broken link). It cannot detect the
// removal of the newest records; export the head hash elsewhere to cover
// that.
func Verify(ctx context.Context, log broker.AuditLog) (n uint64, head string, err error) {
	var after uint64
	prev := ""
	for {
		page, err := log.Range(ctx, after, broker.MaxLimit)
		if err != nil {
			return n, prev, err
		}
		if len(page) == 0 {
			return n, prev, nil
		}
		for _, e := range page {
			switch {
			case e.Seq != after+1:
				return n, prev, &Problem{Seq: after + 1, Reason: fmt.Sprintf("missing or out of order (found %d)", e.Seq)}
			case e.PrevHash != prev:
				return n, prev, &Problem{Seq: e.Seq, Reason: "does not follow the record before it (removed or reordered)"}
			case e.ChainHash() != e.Hash:
				return n, prev, &Problem{Seq: e.Seq, Reason: "was changed after it was written"}
			}
			after, prev = e.Seq, e.Hash
			n++
		}
	}
}

// Export writes every record after seq `after` as JSON lines (for a SIEM).
func Export(ctx context.Context, log broker.AuditLog, after uint64, w io.Writer) (uint64, error) {
	enc := json.NewEncoder(w)
	var n uint64
	for {
		page, err := log.Range(ctx, after, broker.MaxLimit)
		if err != nil || len(page) == 0 {
			return n, err
		}
		for _, e := range page {
			if err := enc.Encode(e); err != nil {
				return n, err
			}
			after = e.Seq
			n++
		}
	}
}
