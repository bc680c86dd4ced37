package main

import (
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestBenchQuantile(t *testing.T) {
	var v []time.Duration
	for i := 1; i <= 100; i++ {
		v = append(v, time.Duration(i)*time.Millisecond)
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{0, time.Millisecond}, {0.5, 50 * time.Millisecond}, {0.99, 99 * time.Millisecond}, {1, 100 * time.Millisecond}} {
		if got := benchQuantile(v, c.p); got != c.want {
			t.Errorf("quantile %v of 1..100 ms = %v, want %v", c.p, got, c.want)
		}
	}
	if got := benchQuantile(nil, 0.99); got != 0 {
		t.Errorf("quantile of nothing = %v", got)
	}
}

func TestBenchParseRate(t *testing.T) {
	for _, c := range []struct {
		in       string
		abs, rel float64
		bad      bool
	}{{"", 0, 0, false}, {"0", 0, 0, false}, {"1500", 1500, 0, false}, {"0.5x", 0, 0.5, false}, {"2x", 0, 2, false},
		{"0x", 0, 0, true}, {"-3", 0, 0, true}, {"fast", 0, 0, true}, {"x", 0, 0, true}, {"NaN", 0, 0, true}} {
		abs, rel, err := benchParseRate(c.in)
		if (err != nil) != c.bad || abs != c.abs || rel != c.rel {
			t.Errorf("benchParseRate(%q) = %v, %v, %v; want %v, %v, error %v", c.in, abs, rel, err, c.abs, c.rel, c.bad)
		}
	}
}

func TestBenchDue(t *testing.T) {
	start := time.Unix(1000, 0)
	if got := benchDue(start, 4000, 10).Sub(start); got != 2500*time.Microsecond {
		t.Errorf("request 10 at 4000/s is due after %v, want 2.5ms", got)
	}
}

// The open loop keeps its schedule when there are connections enough: no
// late requests, and the rate achieved.
func TestBenchOpenLoopKeepsUp(t *testing.T) {
	ph := benchOpenLoop(1000, 100*time.Millisecond, time.Second, 16, func(*rand.Rand, int) error {
		time.Sleep(time.Millisecond)
		return nil
	})
	if n := len(ph.lats); n != 100 || ph.errs != 0 || ph.unsent != 0 {
		t.Fatalf("%d answers, %d errors, %d unsent; want 100, 0, 0", n, ph.errs, ph.unsent)
	}
	// A busy machine may delay a wake-up now and then.
	if ph.late > 10 {
		t.Errorf("%d of 100 late with 16 connections for 1 ms requests at 1000/s", ph.late)
	}
	if ph.lats[0] < time.Millisecond {
		t.Errorf("fastest latency %v is shorter than the request", ph.lats[0])
	}
}

// One connection for 5 ms requests at 1000/s cannot keep up: the requests
// start late, are counted so, and their latency grows from their intended
// time instead of staying at 5 ms (no coordinated omission); past
// stopAfter the rest are not sent.
func TestBenchOpenLoopLate(t *testing.T) {
	var mu sync.Mutex
	conns := map[int]bool{}
	ph := benchOpenLoop(1000, 50*time.Millisecond, 100*time.Millisecond, 1, func(_ *rand.Rand, w int) error {
		mu.Lock()
		conns[w] = true
		mu.Unlock()
		time.Sleep(5 * time.Millisecond)
		return nil
	})
	sent := len(ph.lats)
	if sent+ph.unsent != 50 || ph.unsent == 0 || sent < 5 {
		t.Fatalf("%d sent, %d unsent; want 50 in all, some of each", sent, ph.unsent)
	}
	if ph.late < sent-2 {
		t.Errorf("%d of %d late, want nearly all", ph.late, sent)
	}
	// Request k (k ≥ 1) starts after k × 5 ms but was due at k ms.
	if max := ph.lats[len(ph.lats)-1]; max < time.Duration(sent-1)*4*time.Millisecond {
		t.Errorf("slowest latency %v for %d serial 5 ms requests due 1 ms apart: measured from the send, not the due time?", max, sent)
	}
	if ph.lateMax < 10*time.Millisecond {
		t.Errorf("largest delay %v", ph.lateMax)
	}
	if len(conns) != 1 {
		t.Errorf("%d workers for 1 connection", len(conns))
	}
}

func TestBenchCompare(t *testing.T) {
	rd := func(rps, p99 float64) benchResult { return benchResult{RPS: rps, P99ms: p99} }
	before := []benchRound{{redeem: rd(1000, 10), ceil: rd(5000, 5)}, {redeem: rd(1200, 14), ceil: rd(5000, 7)}}
	after := []benchRound{{redeem: rd(1100, 12), ceil: rd(5000, 6)}, {redeem: rd(1100, 12), ceil: rd(5000, 6)}}
	c := benchCompare(before, after, func(x benchRound) (benchResult, benchResult) { return x.redeem, x.ceil })
	near := func(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }
	if !near(c.RPSBefore, 1100) || !near(c.RPSRatio, 1) || !near(c.P99Before, 12) || !near(c.P99Ratio, 1) {
		t.Errorf("means and ratios: %+v", c)
	}
	if !near(c.P99xCeilBefore, 2) || !near(c.P99xCeilAfter, 2) || !near(c.P99xCeilRatio, 1) {
		t.Errorf("x ceiling: %+v", c)
	}
	if !near(c.RPSSpread, 200.0/1100) || !near(c.P99Spread, 4.0/12) {
		t.Errorf("spread: %+v", c)
	}
}

func TestBenchWant(t *testing.T) {
	f := benchFlags{only: "ceiling,redeem"}
	if !f.want("redeem") || f.want("vault") || f.want("redeem@rate") {
		t.Errorf("without --rate: %v %v %v", f.want("redeem"), f.want("vault"), f.want("redeem@rate"))
	}
	f.ratePerSecond = 100
	if !f.want("redeem@rate") || !f.want("ceiling@rate") || f.want("vault@rate") {
		t.Error("with --rate, X@rate should follow X")
	}
	f.only = "redeem@rate"
	if f.want("redeem") || !f.want("redeem@rate") || f.want("ceiling@rate") {
		t.Error("--only redeem@rate")
	}
	f.only = ""
	if !f.want("vault@rate") || !f.want("refresh") {
		t.Error("everything by default")
	}
}

func TestBenchMedian(t *testing.T) {
	for _, c := range []struct {
		v    []float64
		want float64
	}{
		{nil, 0}, {[]float64{3}, 3}, {[]float64{9, 1, 5}, 5}, {[]float64{10, 2, 4, 8}, 6},
		{[]float64{20.3, 59.2, 10.3}, 20.3}, // one stalled round does not move it
	} {
		in := slices.Clone(c.v)
		if got := benchMedian(c.v); got != c.want {
			t.Errorf("benchMedian(%v) = %v, want %v", c.v, got, c.want)
		}
		if !slices.Equal(in, c.v) {
			t.Errorf("benchMedian reordered its argument: %v", c.v)
		}
	}
}
