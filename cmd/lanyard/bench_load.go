package main

// The load loops of `lanyard bench` (bench.go): the closed loop (each
// connection sends its next request when the previous answer is in) and the
// open loop (requests sent on a fixed schedule, --rate), and the figures
// they share. They need no server and are tested in bench_load_test.go.

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// benchDo sends one request from worker w.
type benchDo func(rng *rand.Rand, w int) error

// benchPhase is what one phase of a scenario collected.
type benchPhase struct {
	lats     []time.Duration // of the successful requests, sorted
	errs     int
	firstErr string
	wall     time.Duration
	// open loop only: see benchOpenLoop
	late, unsent int
	lateMax      time.Duration
	sendLagP99   time.Duration
}

// benchWorkers runs loop on conns goroutines and collects what they record:
// the latencies of the successes (sorted) and the errors.
func benchWorkers(conns int, loop func(w int, rng *rand.Rand, rec func(time.Duration, error))) benchPhase {
	lats := make([][]time.Duration, conns)
	var errs atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for w := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), uint64(start.UnixNano())))
			loop(w, rng, func(d time.Duration, err error) {
				if err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					return
				}
				lats[w] = append(lats[w], d)
			})
		}()
	}
	wg.Wait()
	ph := benchPhase{errs: int(errs.Load()), wall: time.Since(start)}
	ph.firstErr, _ = firstErr.Load().(string)
	for _, l := range lats {
		ph.lats = append(ph.lats, l...)
	}
	slices.Sort(ph.lats)
	return ph
}

// benchClosedLoop runs do on conns workers, each sending its next request
// as soon as it has the previous answer, for d. The latency of a request is
// from its send to its answer; requests waiting for a connection are not
// measured (the closed loop's coordinated omission), so under saturation its
// percentiles show the queue of the conns connections, not an arrival rate.
func benchClosedLoop(d time.Duration, conns int, do benchDo) benchPhase {
	deadline := time.Now().Add(d)
	return benchWorkers(conns, func(w int, rng *rand.Rand, rec func(time.Duration, error)) {
		for time.Now().Before(deadline) {
			t := time.Now()
			err := do(rng, w)
			rec(time.Since(t), err)
		}
	})
}

// benchOpenLoop sends round(rate × d) requests on a fixed schedule, request
// i being due at start + i/rate, over at most conns connections (one worker
// each: a free worker takes the next request in order and waits for its due
// time). The latency of a request is measured from its due time, not from
// when it was sent, so a stall of the server or of the generator shows in
// the tail instead of delaying the schedule (no coordinated omission).
//
// A request is late when no connection was free at its due time: its
// worker took it only after that (the server does not keep up with the
// rate, or conns is too small for rate × latency); lateMax is the largest
// such delay. sendLagP99 is the p99 of every request's send time after its
// due time: late requests, and the generator's own precision (timer
// wake-ups, CPU), which also counts in the latency. No request is sent
// after start + stopAfter: those left are unsent, so that a rate far beyond
// the server's ends anyway.
func benchOpenLoop(rate float64, d, stopAfter time.Duration, conns int, do benchDo) benchPhase {
	n := max(int(math.Round(rate*d.Seconds())), 1)
	conns = min(conns, n)
	var next, late, unsent, lateMax atomic.Int64
	lags := make([][]time.Duration, conns)
	// The workers are running before the first request is due.
	start := time.Now().Add(5 * time.Millisecond)
	stop := start.Add(stopAfter)
	ph := benchWorkers(conns, func(w int, rng *rand.Rand, rec func(time.Duration, error)) {
		for {
			i := int(next.Add(1)) - 1
			if i >= n {
				return
			}
			due := benchDue(start, rate, i)
			now := time.Now()
			if now.After(stop) {
				unsent.Add(1)
				continue
			}
			if wait := due.Sub(now); wait > 0 {
				time.Sleep(wait)
			} else {
				late.Add(1)
				for old := lateMax.Load(); int64(-wait) > old && !lateMax.CompareAndSwap(old, int64(-wait)); old = lateMax.Load() {
				}
			}
			lags[w] = append(lags[w], time.Since(due))
			err := do(rng, w)
			rec(time.Since(due), err)
		}
	})
	ph.wall = time.Since(start)
	ph.late, ph.unsent, ph.lateMax = int(late.Load()), int(unsent.Load()), time.Duration(lateMax.Load())
	var all []time.Duration
	for _, l := range lags {
		all = append(all, l...)
	}
	slices.Sort(all)
	ph.sendLagP99 = benchQuantile(all, 0.99)
	return ph
}

// benchDue is the intended send time of request i at rate requests/s.
func benchDue(start time.Time, rate float64, i int) time.Time {
	return start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
}

// benchQuantile is the p-quantile (0..1) of sorted, by the nearest rank
// below: sorted[⌊p·(n-1)⌋]; 0 for no samples.
func benchQuantile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(p*float64(len(sorted)-1))]
}

// benchParseRate parses --rate: requests per second ("1500"), or a
// multiple of the closed-loop redeem throughput of the same run ("0.5x").
// "0" or "" is off.
func benchParseRate(s string) (perSecond, ofRedeem float64, err error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "0" {
		return 0, 0, nil
	}
	v, rel := strings.CutSuffix(s, "x")
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 || (rel && f == 0) {
		return 0, 0, fmt.Errorf("--rate %q: want requests per second (1500) or a multiple of the closed-loop redeem throughput (0.5x)", s)
	}
	if rel {
		return 0, f, nil
	}
	return f, 0, nil
}
