// Package gctune sets the garbage collector's target for a server whose
// live heap is small and whose allocation rate is high: Lanyard's, where the
// live heap is a few MiB plus about a kilobyte per active grant, and every
// redemption allocates a few tens of kilobytes that die with the request.
//
// With Go's default (GOGC=100) the heap may grow only by as much as is live
// before the next collection, so a 4 MiB live heap is collected dozens of
// times a second under load, and each cycle's fixed cost (scanning every
// goroutine's stack, regrowing the stacks it shrank) is paid each time; in
// the redeem profile that was 10–15% of the server's CPU (BENCHMARKS.md).
// Start instead lets the heap grow by about headroom bytes between
// collections (GOGC = 100 × headroom / (live heap + stacks + globals), never
// below 100), re-reading those from runtime/metrics a few times a second.
// Memory use is bounded: the heap goal is at most headroom above the live
// heap, or what GOGC=100 gives if that is more, which it is once the live
// heap (with stacks and globals) exceeds headroom.
//
// This is the "minimum heap" Go does not offer itself (golang/go#44309);
// the operator's own GOGC environment variable always wins. It sits below
// cmd/lanyard, which starts it for `lanyard serve` and `lanyard dev`.
package gctune

import (
	"log/slog"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"time"
)

// DefaultHeadroom is the headroom used when the configuration sets none.
const DefaultHeadroom = 32 << 20

// The metrics Go's heap goal is computed from: goal = live + (live +
// stacks + globals) × GOGC/100 (the GC guide, Go 1.18 and later).
var goalMetrics = []string{"/gc/heap/live:bytes", "/gc/scan/stack:bytes", "/gc/scan/globals:bytes"}

// running counts the tuners of this process (two apps in one process, as
// in tests) and keeps the setting found before the first, which the last
// one to stop restores.
var running struct {
	mu   sync.Mutex
	n    int
	orig int
}

// Percent is the GOGC that lets the heap grow headroom bytes before the
// next collection when the collector's scannable roots (the live heap,
// goroutine stacks and globals) total live bytes, and never less than Go's
// default of 100.
func Percent(live, headroom uint64) int {
	if live == 0 {
		live = 1 << 20 // before the first collection
	}
	p := headroom * 100 / live
	if p < 100 {
		return 100
	}
	return int(min(p, 1<<20))
}

// Start keeps GOGC at Percent(live heap, headroom) until stop is called,
// which restores the setting found at the start. It does nothing when
// headroom is 0 or the GOGC environment variable is set.
func Start(headroom uint64, log *slog.Logger) (stop func()) {
	if headroom == 0 || os.Getenv("GOGC") != "" {
		return func() {}
	}
	done, finished := make(chan struct{}), make(chan struct{})
	sample := make([]metrics.Sample, len(goalMetrics))
	for i, name := range goalMetrics {
		sample[i].Name = name
	}
	set := -1
	tune := func() {
		metrics.Read(sample)
		var roots uint64
		for _, x := range sample {
			if x.Value.Kind() != metrics.KindUint64 {
				return
			}
			roots += x.Value.Uint64()
		}
		p := Percent(roots, headroom)
		// Only a change of more than a tenth is worth a call (each one
		// recomputes the heap goal).
		if set < 0 || p > set+set/10 || p < set-set/10 {
			debug.SetGCPercent(p)
			set = p
		}
	}
	running.mu.Lock()
	if running.n == 0 {
		running.orig = debug.SetGCPercent(100)
		debug.SetGCPercent(running.orig)
	}
	running.n++
	running.mu.Unlock()
	tune()
	log.Debug("gc tuning on", "headroom_bytes", headroom, "gogc", set)
	go func() {
		defer close(finished)
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				tune()
			}
		}
	}()
	return func() {
		close(done)
		<-finished
		running.mu.Lock()
		if running.n--; running.n == 0 {
			debug.SetGCPercent(running.orig)
		}
		running.mu.Unlock()
	}
}
