package gctune

import (
	"log/slog"
	"runtime"
	"runtime/debug"
	"testing"
)

func TestPercent(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		live, headroom uint64
		want           int
	}{
		{live: 4 * mib, headroom: 64 * mib, want: 1600},
		{live: 64 * mib, headroom: 64 * mib, want: 100},
		{live: 500 * mib, headroom: 64 * mib, want: 100}, // never below Go's default
		{live: 0, headroom: 64 * mib, want: 6400},        // before the first collection: 1 MiB assumed
		{live: 1, headroom: 1 << 40, want: 1 << 20},      // bounded
	} {
		if got := Percent(c.live, c.headroom); got != c.want {
			t.Errorf("Percent(%d, %d) = %d, want %d", c.live, c.headroom, got, c.want)
		}
	}
}

func gogc() int {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p
}

func TestStart(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	t.Run("raises GOGC for a small heap and restores it", func(t *testing.T) {
		t.Setenv("GOGC", "")
		before := gogc()
		runtime.GC()
		stop := Start(DefaultHeadroom, log)
		if got := gogc(); got <= 100 {
			t.Errorf("GOGC with a small live heap and the default headroom = %d, want > 100", got)
		}
		stop()
		if got := gogc(); got != before {
			t.Errorf("GOGC after stop = %d, want %d", got, before)
		}
	})
	t.Run("overlapping tuners restore the setting found before the first", func(t *testing.T) {
		t.Setenv("GOGC", "")
		before := gogc()
		runtime.GC()
		stopA := Start(DefaultHeadroom, log)
		stopB := Start(DefaultHeadroom, log)
		stopA()
		if got := gogc(); got <= 100 {
			t.Errorf("GOGC with one tuner still running = %d, want > 100", got)
		}
		stopB()
		if got := gogc(); got != before {
			t.Errorf("GOGC after both stopped = %d, want %d", got, before)
		}
	})
	t.Run("the operator's GOGC wins", func(t *testing.T) {
		t.Setenv("GOGC", "100")
		before := gogc()
		stop := Start(DefaultHeadroom, log)
		defer stop()
		if got := gogc(); got != before {
			t.Errorf("GOGC = %d with GOGC set in the environment, want it left at %d", got, before)
		}
	})
	t.Run("zero headroom is off", func(t *testing.T) {
		t.Setenv("GOGC", "")
		before := gogc()
		stop := Start(0, log)
		defer stop()
		if got := gogc(); got != before {
			t.Errorf("GOGC = %d with headroom 0, want %d", got, before)
		}
	})
}
