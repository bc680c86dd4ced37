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
// Tuner instead lets the heap grow by at least Headroom above the live heap
// (GOGC = 100 × Headroom / live, never below 100), re-reading the live heap
// from runtime/metrics a few times a second. Memory use is bounded: at most
// Headroom more than GOGC=100 would use, and once the live heap exceeds
// Headroom the setting is plain GOGC=100.
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
	"time"
)

// DefaultHeadroom is the headroom used when the configuration sets none.
const DefaultHeadroom = 32 << 20

// liveMetric is the heap the last collection found live.
const liveMetric = "/gc/heap/live:bytes"

// Percent is the GOGC that gives a live heap of live bytes at least
// headroom bytes to grow before the next collection, and never less than
// Go's default of 100.
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
	sample := []metrics.Sample{{Name: liveMetric}}
	set := -1
	tune := func() {
		metrics.Read(sample)
		if sample[0].Value.Kind() != metrics.KindUint64 {
			return
		}
		p := Percent(sample[0].Value.Uint64(), headroom)
		// Only a change of more than a tenth is worth a call (each one
		// recomputes the heap goal).
		if set < 0 || p > set+set/10 || p < set-set/10 {
			debug.SetGCPercent(p)
			set = p
		}
	}
	orig := debug.SetGCPercent(100)
	debug.SetGCPercent(orig)
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
		debug.SetGCPercent(orig)
	}
}
