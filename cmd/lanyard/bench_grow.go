package main

// --grow-to: redeem at the seeded grant count and again after idle grants
// have been added straight into the store, in one run, with each side
// measured --grow-rounds times next to the ceiling (bench.go).

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
)

// benchGrow is the growth's report.
type benchGrow struct {
	From       int     `json:"from_grants"`
	To         int     `json:"to_grants"`
	Seconds    float64 `json:"seconds"` // adding the grants
	PerSecond  float64 `json:"grants_per_second"`
	StoreBytes int64   `json:"store_bytes_after"`
	HeapAfter  uint64  `json:"server_heap_after_bytes"`
	Rounds     int     `json:"rounds"` // measurements on each side
	// The closed-loop redeem, and the open-loop one with --rate.
	Redeem       benchGrowCmp  `json:"redeem"`
	RedeemAtRate *benchGrowCmp `json:"redeem_at_rate,omitempty"`
}

// benchGrowCmp compares redeem before and after the growth: each figure is
// the median over the rounds of its side (one round caught in a stall of
// the shared machine, such as the one right after writing a gigabyte of
// grants, moves a mean but not the median; every round is in the table),
// and each ratio is after/before.
type benchGrowCmp struct {
	RPSBefore float64 `json:"rps_before"`
	RPSAfter  float64 `json:"rps_after"`
	RPSRatio  float64 `json:"rps_after_over_before"`
	P99Before float64 `json:"p99_ms_before"`
	P99After  float64 `json:"p99_ms_after"`
	P99Ratio  float64 `json:"p99_after_over_before"`
	// The p99 as a multiple of the ceiling's p99 in the same round, which
	// takes out some of the machine's drift.
	P99xCeilBefore float64 `json:"p99_x_ceiling_before"`
	P99xCeilAfter  float64 `json:"p99_x_ceiling_after"`
	P99xCeilRatio  float64 `json:"p99_x_ceiling_after_over_before"`
	// The noise: the largest (max - min) / median among the rounds of one
	// side (0 with one round).
	RPSSpread float64 `json:"rps_spread_within_side"`
	P99Spread float64 `json:"p99_spread_within_side"`
}

// benchRound is one round's redeem and ceiling results (closed loop, and
// open loop when --rate is set).
type benchRound struct {
	ceil, redeem         benchResult
	ceilOpen, redeemOpen benchResult
}

// growScenario measures redeem --grow-rounds times at the seeded grant
// count, has the server add idle grants until the store holds --grow-to,
// and measures again as many times.
func (r *benchRun) growScenario(ctx context.Context, ceilPid, lanyardPid int, ceiling, redeem benchDo) error {
	open := r.f.ratePerSecond > 0 || r.f.rateOfRedeem > 0
	if open {
		if err := r.resolveRate(); err != nil {
			return err
		}
	}
	round := func(grants, k int) benchRound {
		tag := fmt.Sprintf(" (%d grants)", grants)
		if k > 1 {
			tag += fmt.Sprintf(" #%d", k)
		}
		key := fmt.Sprintf("%d grants #%d", grants, k)
		mk := func(name, target string) benchResult {
			x := benchResult{Name: name + tag, Target: target, Round: key}
			if target == "lanyard" {
				x.GrantsInStore = grants
			}
			return x
		}
		var x benchRound
		x.ceil = r.closedLoop(mk("ceiling", "ceiling"), ceilPid, ceiling)
		x.redeem = r.closedLoop(mk("redeem", "lanyard"), lanyardPid, redeem)
		if open {
			x.ceilOpen = r.openLoop(mk("ceiling@rate", "ceiling"), ceilPid, ceiling)
			x.redeemOpen = r.openLoop(mk("redeem@rate", "lanyard"), lanyardPid, redeem)
		}
		return x
	}
	from := r.f.users + r.fx.ExtraGrants
	var before, after []benchRound
	// Each side starts right after every grant was redeemed once, so that
	// both measure the same cache state (the credential cache's TTL may
	// run out during the growth).
	auth := [2]string{r.fx.ResourceID, r.fx.ResourceSecret}
	r.rewarm(&auth)
	for k := 1; k <= r.f.growRounds; k++ {
		before = append(before, round(from, k))
	}
	r.logf("bench: adding %d idle grants to the store (%d → %d) ...\n", r.f.growTo-from, from, r.f.growTo)
	g, err := r.growStore(ctx, r.f.growTo)
	if err != nil {
		return fmt.Errorf("bench: growing the store to %d grants: %w", r.f.growTo, err)
	}
	r.logf("bench: %d grants added in %.1fs (%.0f/s); store file %.1f MiB\n", g.Added, g.Seconds, float64(g.Added)/g.Seconds, float64(g.StoreBytes)/(1<<20))
	r.rewarm(&auth)
	for k := 1; k <= r.f.growRounds; k++ {
		after = append(after, round(g.Grants, k))
	}
	r.grow = &benchGrow{From: from, To: g.Grants, Seconds: g.Seconds, PerSecond: benchDiv(float64(g.Added), g.Seconds),
		StoreBytes: g.StoreBytes, HeapAfter: g.HeapAlloc, Rounds: r.f.growRounds,
		Redeem: benchCompare(before, after, func(x benchRound) (benchResult, benchResult) { return x.redeem, x.ceil })}
	if open {
		c := benchCompare(before, after, func(x benchRound) (benchResult, benchResult) { return x.redeemOpen, x.ceilOpen })
		r.grow.RedeemAtRate = &c
	}
	return nil
}

// growStore asks the bench server to add idle grants until the store holds
// to grants. It may take minutes; the server's progress comes on its
// stdout, which child copies to stderr.
func (r *benchRun) growStore(ctx context.Context, to int) (benchGrowth, error) {
	var g benchGrowth
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("%s/grow?to=%d", r.fx.Control, to), nil)
	if err != nil {
		return g, err
	}
	resp, err := http.DefaultClient.Do(req) // no timeout: progress shows it is alive
	if err != nil {
		return g, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return g, fmt.Errorf("%d %s", resp.StatusCode, b)
	}
	err = json.NewDecoder(resp.Body).Decode(&g)
	return g, err
}

// benchCompare compares the rounds before and after the growth; pick
// returns a round's redeem result and its ceiling.
func benchCompare(before, after []benchRound, pick func(benchRound) (benchResult, benchResult)) benchGrowCmp {
	side := func(rounds []benchRound) (rps, p99, p99xCeil, rpsSpread, p99Spread float64) {
		var rpss, p99s, xs []float64
		for _, x := range rounds {
			red, ceil := pick(x)
			rpss, p99s = append(rpss, red.RPS), append(p99s, red.P99ms)
			xs = append(xs, benchDiv(red.P99ms, ceil.P99ms))
		}
		return benchMedian(rpss), benchMedian(p99s), benchMedian(xs), benchSpread(rpss), benchSpread(p99s)
	}
	var c benchGrowCmp
	var s1, s2, s3, s4 float64
	c.RPSBefore, c.P99Before, c.P99xCeilBefore, s1, s2 = side(before)
	c.RPSAfter, c.P99After, c.P99xCeilAfter, s3, s4 = side(after)
	c.RPSRatio, c.P99Ratio = benchDiv(c.RPSAfter, c.RPSBefore), benchDiv(c.P99After, c.P99Before)
	c.P99xCeilRatio = benchDiv(c.P99xCeilAfter, c.P99xCeilBefore)
	c.RPSSpread, c.P99Spread = max(s1, s3), max(s2, s4)
	return c
}

// benchMedian is the median of v (the mean of the middle two for an even
// count; 0 for none).
func benchMedian(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Sorted(slices.Values(v))
	if n := len(v); n%2 == 0 {
		return (v[n/2-1] + v[n/2]) / 2
	}
	return v[len(v)/2]
}

// benchSpread is (max - min) / median of v (0 for fewer than two values).
func benchSpread(v []float64) float64 {
	if len(v) < 2 {
		return 0
	}
	return benchDiv(slices.Max(v)-slices.Min(v), benchMedian(v))
}

func (g *benchGrow) print(w io.Writer) {
	fmt.Fprintf(w, "grant growth: %d → %d grants in %.1f s (%.0f grants/s); store file %.1f MiB, server live heap %.1f MiB after it\n",
		g.From, g.To, g.Seconds, g.PerSecond, float64(g.StoreBytes)/(1<<20), float64(g.HeapAfter)/(1<<20))
	line := func(name string, c benchGrowCmp) {
		noise := ""
		if g.Rounds > 1 {
			noise = fmt.Sprintf("; medians of %d rounds a side, which differ by up to %.0f %% in req/s and %.0f %% in p99 (noise)",
				g.Rounds, 100*c.RPSSpread, 100*c.P99Spread)
		}
		fmt.Fprintf(w, "  %s: p99 after/before = %.2f (%.2f → %.2f ms), req/s after/before = %.2f (%.0f → %.0f), p99 x ceiling after/before = %.2f (%.2f → %.2f)%s\n",
			name, c.P99Ratio, c.P99Before, c.P99After, c.RPSRatio, c.RPSBefore, c.RPSAfter,
			c.P99xCeilRatio, c.P99xCeilBefore, c.P99xCeilAfter, noise)
	}
	line("redeem", g.Redeem)
	if g.RedeemAtRate != nil {
		line("redeem@rate", *g.RedeemAtRate)
	}
}
