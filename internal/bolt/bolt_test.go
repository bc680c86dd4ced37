package bolt

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, now func() time.Time) broker.Store {
		db, err := Open(filepath.Join(t.TempDir(), "lanyard.db"), Options{Now: now})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { _ = db.Close() })
		return db
	})
}
