package main

// `lanyard bench` is the load harness of the redeem hot path (BENCHMARKS.md).
//
// It is a subcommand of lanyard rather than a command of its own because the
// server it measures must be wired exactly as `lanyard serve` wires it
// (openApp, mountOAuth: package main) and seeded through the services users
// go through (links.Service, authserver.Decide), which only this package
// can reach without copying the wiring. The binary runs twice: this process
// is the load generator; `lanyard bench server` (bench_server.go) is the
// seeded Lanyard in a child process, so its CPU time and peak RSS are
// measured apart from the client's; `lanyard bench ceiling` is the
// trivial JSON handler of the ceiling, a child process too.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
)

type benchFlags struct {
	users, extraGrants, concurrency, codes int
	duration, warmup                       time.Duration
	jsonOut, profile, keep, only           string
	vaultPid                               int
	logLevel                               string
	cacheTTL                               time.Duration
	rate                                   string
	ratePerSecond, rateOfRedeem            float64 // parsed --rate
	growTo, growRounds                     int
}

// benchScenarios are the names --only takes.
var benchScenarios = []string{"ceiling", "vault", "redeem", "exchange", "introspect", "code", "refresh",
	"ceiling@rate", "vault@rate", "redeem@rate"}

// bench is `lanyard bench`: the load generator, or (first argument) one of
// its child processes.
func (m *Main) bench(ctx context.Context, args []string) error {
	if len(args) > 0 {
		switch args[0] {
		case "server":
			return m.benchServer(ctx, args[1:])
		case "ceiling":
			return m.benchCeiling(ctx, args[1:])
		}
	}
	fs := m.flagSet("bench", "[flags]", `Measures the redeem hot path under load (see BENCHMARKS.md). It starts a fresh
Lanyard (bbolt in a temporary directory, the real Vault at VAULT_ADDR with
VAULT_TOKEN) in a child process, seeds --users users, each with a linked API
key and OAuth account and a grant, and drives it over loopback with
--concurrency keep-alive connections: redeem, RFC 8693 exchange,
introspection, authorization-code exchange and refresh, next to the
Vault-direct baseline (the same API key read from Vault KV v2) and the ceiling
(a trivial Go JSON handler in a child process). It prints a table and writes
JSON with every figure also as a ratio to the baseline and to the ceiling.
('lanyard bench server' and 'lanyard bench ceiling' are its child processes.)`)
	var f benchFlags
	fs.IntVar(&f.users, "users", 200, "users, each with two linked connections and one grant")
	fs.IntVar(&f.extraGrants, "extra-grants", 0, "more grants in the store (not redeemed), to measure a large grant table")
	fs.IntVar(&f.concurrency, "concurrency", 64, "concurrent keep-alive connections")
	fs.DurationVar(&f.duration, "duration", 5*time.Second, "measured time of each timed scenario")
	fs.DurationVar(&f.warmup, "warmup", time.Second, "unmeasured time before each timed scenario")
	fs.IntVar(&f.codes, "codes", 1000, "authorization codes to mint and exchange (at most 60 s old when used)")
	fs.StringVar(&f.jsonOut, "json", "", "write the report as JSON to this file")
	fs.StringVar(&f.profile, "cpuprofile", "", "write a CPU profile of the server taken during the redeem scenario")
	fs.StringVar(&f.only, "only", "", "comma-separated scenarios to run (default all): ceiling,vault,redeem,exchange,introspect,code,refresh; with --rate, X@rate runs when X or X@rate is named (ceiling@rate, vault@rate, redeem@rate)")
	fs.StringVar(&f.rate, "rate", "0", "open loop: also run ceiling, vault and redeem at this fixed arrival rate, in requests/s, or as a multiple of this run's closed-loop redeem throughput (0.5x); latency is measured from each request's intended send time (0: off)")
	fs.IntVar(&f.growTo, "grow-to", 0, "after the other scenarios, measure redeem (and the ceiling), add idle grants straight into the store until it holds this many grants, and measure again (0: off)")
	fs.IntVar(&f.growRounds, "grow-rounds", 2, "with --grow-to: measurements on each side of the growth (their spread shows the noise)")
	fs.IntVar(&f.vaultPid, "vault-pid", 0, "pid of the Vault server, to report its CPU time and peak RSS for the baseline")
	fs.DurationVar(&f.cacheTTL, "credential-cache-ttl", 0, "the server's credential cache TTL (0: the default; negative: no cache, every redemption reads Vault)")
	fs.StringVar(&f.logLevel, "log-level", "info", "the server's log level (its log goes to a file in the run directory)")
	fs.StringVar(&f.keep, "dir", "", "run directory (kept); default a temporary one, removed afterwards")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("bench: unexpected argument %q", fs.Arg(0))
	}
	if f.users < 1 || f.concurrency < 1 || f.duration <= 0 || f.codes < f.concurrency {
		return usagef("bench: --users and --concurrency must be positive, --duration too, and --codes at least --concurrency")
	}
	var err error
	if f.ratePerSecond, f.rateOfRedeem, err = benchParseRate(f.rate); err != nil {
		return usagef("bench: %v", err)
	}
	if f.only != "" {
		for name := range strings.SplitSeq(f.only, ",") {
			if !slices.Contains(benchScenarios, name) {
				return usagef("bench: --only: unknown scenario %q (known: %s)", name, strings.Join(benchScenarios, ","))
			}
		}
	}
	if f.rateOfRedeem > 0 && !f.want("redeem") {
		return usagef("bench: --rate %s is a multiple of the closed-loop redeem throughput: the redeem scenario must run", f.rate)
	}
	if f.growTo != 0 && (f.growTo <= f.users+f.extraGrants || f.growRounds < 1) {
		return usagef("bench: --grow-to must exceed --users + --extra-grants (%d), and --grow-rounds must be positive", f.users+f.extraGrants)
	}
	vaddr, vtok := m.Getenv("VAULT_ADDR"), m.Getenv("VAULT_TOKEN")
	if vaddr == "" || vtok == "" {
		return usagef("bench: VAULT_ADDR and VAULT_TOKEN must name a real Vault (it is Lanyard's secret store and the baseline); start one with scripts/bench.sh")
	}
	dir := f.keep
	if dir == "" {
		d, err := os.MkdirTemp("", "lanyard-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	r := &benchRun{m: m, f: f, dir: dir, vaultAddr: vaddr, vaultToken: vtok}
	return r.run(ctx)
}

// want reports whether scenario name runs. An open-loop scenario X@rate
// runs with --rate when --only is empty or names X or X@rate.
func (f *benchFlags) want(name string) bool {
	only := strings.Split(f.only, ",")
	if closed, ok := strings.CutSuffix(name, "@rate"); ok {
		return (f.ratePerSecond > 0 || f.rateOfRedeem > 0) && (f.only == "" || slices.Contains(only, name) || slices.Contains(only, closed))
	}
	return f.only == "" || slices.Contains(only, name)
}

type benchRun struct {
	m                     *Main
	f                     benchFlags
	dir                   string
	vaultAddr, vaultToken string
	fx                    benchFixture
	heapRedeemed          uint64
	client                *http.Client
	results               []benchResult
	refresh               []string // refresh tokens from the code scenario
	errMu                 sync.Mutex
	// The redeem scenarios' request bodies (one per seeded grant), once
	// every grant has been redeemed (warm).
	redeemBodies [][]byte
	redeemRPS    float64 // of the closed-loop redeem scenario
	rate         float64 // of the open-loop scenarios, resolved
	grow         *benchGrow
}

// logf writes a progress line to stderr (also from the goroutines that
// relay the children's progress).
func (r *benchRun) logf(format string, args ...any) {
	r.errMu.Lock()
	defer r.errMu.Unlock()
	fmt.Fprintf(r.m.Stderr, format, args...)
}

// benchResult is one scenario's figures.
type benchResult struct {
	Name        string  `json:"name"`
	Target      string  `json:"target"` // lanyard, vault, ceiling
	Requests    int     `json:"requests"`
	Errors      int     `json:"errors"`
	FirstError  string  `json:"first_error,omitempty"`
	Seconds     float64 `json:"seconds"`
	RPS         float64 `json:"rps"`
	P50ms       float64 `json:"p50_ms"`
	P95ms       float64 `json:"p95_ms"`
	P99ms       float64 `json:"p99_ms"`
	Maxms       float64 `json:"max_ms"`
	ServerCPU   float64 `json:"server_cpu_seconds"` // -1: unknown
	ServerCores float64 `json:"server_cpu_cores"`   // CPU seconds per wall second
	CPUPerReqUS float64 `json:"server_cpu_us_per_request"`
	PeakRSSMiB  float64 `json:"server_peak_rss_mib"` // -1: unknown
	ClientCPU   float64 `json:"client_cpu_seconds"`
	// The server's bbolt group commit during the scenario: fsynced write
	// transactions, writes per transaction, and mean time per transaction.
	Commits      int64   `json:"store_commits,omitempty"`
	WritesPerTx  float64 `json:"store_writes_per_commit,omitempty"`
	CommitMeanMs float64 `json:"store_commit_mean_ms,omitempty"`
	// Open is set for the open-loop (@rate) scenarios: RPS is then the
	// achieved rate and the latencies are from each intended send time.
	Open *benchOpen `json:"open_loop,omitempty"`
	// The --grow-to rounds: the grants in the store, and the round, whose
	// own ceiling the ratios use.
	GrantsInStore int    `json:"grants_in_store,omitempty"`
	Round         string `json:"round,omitempty"`
	// Ratios to the references of the same run (for an open-loop result,
	// the references at the same rate; for a --grow-to round, the ceiling
	// of the same round).
	RPSvsBaseline float64 `json:"rps_vs_baseline"`
	RPSvsCeiling  float64 `json:"rps_vs_ceiling"`
	P99vsBaseline float64 `json:"p99_vs_baseline"`
	P99vsCeiling  float64 `json:"p99_vs_ceiling"`
}

// benchReport is the JSON output.
type benchReport struct {
	Started     time.Time    `json:"started"`
	Machine     benchMachine `json:"machine"`
	Users       int          `json:"users"`
	Grants      int          `json:"grants_in_store"`
	Concurrency int          `json:"concurrency"`
	Duration    string       `json:"duration"`
	SeedSeconds float64      `json:"seed_seconds"`
	StoreBytes  int64        `json:"store_bytes"`
	HeapSeeded  uint64       `json:"server_heap_after_seed_bytes"`
	// HeapRedeemed is the server's live heap after the redeem scenario
	// (every grant redeemed: token and credential caches full), and
	// HeapPerGrant the growth over HeapSeeded per redeemed grant.
	HeapRedeemed uint64  `json:"server_heap_after_redeem_bytes,omitempty"`
	HeapPerGrant float64 `json:"server_heap_per_active_grant_bytes,omitempty"`
	// SeedUsersPerSecond is the users seeded per second (each through
	// Vault, the link service and Decide), before any extra grants.
	SeedUsersPerSecond float64        `json:"seed_users_per_second,omitempty"`
	Rate               *benchRateInfo `json:"rate,omitempty"`
	Grow               *benchGrow     `json:"grow,omitempty"`
	Results            []benchResult  `json:"results"`
}

// benchOpen is an open-loop scenario's schedule and how well it was kept.
type benchOpen struct {
	Rate float64 `json:"rate"` // intended requests/s
	// Late: requests for which no connection was free at their intended
	// time (the server did not keep up, or --concurrency is too small);
	// LateMaxms the largest such delay. SendLagP99ms: the p99 of every
	// request's send after its intended time (late requests and the
	// generator's own timer and CPU delays, which count in the latency
	// too). Unsent: requests not sent at all because the phase had run
	// twice its duration.
	Late         int     `json:"late"`
	LateMaxms    float64 `json:"late_max_ms"`
	SendLagP99ms float64 `json:"send_lag_p99_ms"`
	Unsent       int     `json:"unsent"`
}

// benchRateInfo is the open loop's rate in the report.
type benchRateInfo struct {
	Requested   string  `json:"requested"`  // --rate
	PerSecond   float64 `json:"per_second"` // resolved
	OfRedeem    float64 `json:"of_closed_loop_redeem,omitempty"`
	Connections int     `json:"max_connections"`
}

type benchMachine struct {
	CPUs     int    `json:"cpus"`
	CPUModel string `json:"cpu_model"`
	MemMiB   int    `json:"mem_mib"`
	LoadAvg  string `json:"loadavg_at_start"`
	Go       string `json:"go"`
}

func (r *benchRun) run(ctx context.Context) error {
	started := time.Now()
	mach := benchMachineInfo()
	want := r.f.want
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	// The ceiling: a trivial JSON handler in its own process.
	ceil, ceilURL, err := r.child(ctx, exe, "ceiling.log", "bench", "ceiling")
	if err != nil {
		return fmt.Errorf("ceiling server: %w", err)
	}
	defer stopChild(ceil)
	// The Lanyard under test.
	fixture := filepath.Join(r.dir, "fixture.json")
	r.logf("bench: seeding %d users (and %d extra grants) in a fresh Lanyard on %s ...\n", r.f.users, r.f.extraGrants, r.vaultAddr)
	data, err := os.MkdirTemp(r.dir, "data-") // fresh, also in a kept --dir
	if err != nil {
		return err
	}
	srv, _, err := r.child(ctx, exe, "server.log", "bench", "server", "--data", data,
		"--fixture", fixture, "--users", strconv.Itoa(r.f.users), "--extra-grants", strconv.Itoa(r.f.extraGrants),
		"--log-level", r.f.logLevel, "--credential-cache-ttl", r.f.cacheTTL.String())
	if err != nil {
		return fmt.Errorf("lanyard server: %w (see its log in %s; --dir keeps it)", err, r.dir)
	}
	defer stopChild(srv)
	raw, err := os.ReadFile(fixture)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(raw, &r.fx); err != nil {
		return err
	}
	r.logf("bench: seeded in %.1fs (%d users in %.1fs: %.0f users/s); %d concurrent connections, %v per scenario\n",
		r.fx.SeedSeconds, r.f.users, r.fx.SeedUsersSeconds, float64(r.f.users)/r.fx.SeedUsersSeconds, r.f.concurrency, r.f.duration)
	r.client = &http.Client{Transport: benchTransport(r.f.concurrency), Timeout: 30 * time.Second}
	lanyardPid, ceilPid := srv.Process.Pid, ceil.Process.Pid

	ceilingBody := []byte(`{"token":"x","connector":"keys","tool":"read_mail"}`)
	ceiling := func(_ *rand.Rand, _ int) error {
		return r.post(ceilURL+"/json", "application/json", ceilingBody, nil, 200, nil)
	}
	auth := [2]string{r.fx.ResourceID, r.fx.ResourceSecret}
	redeem := func(rng *rand.Rand, _ int) error {
		return r.post(r.fx.URL+"/v1/redeem", "application/json", r.redeemBodies[rng.IntN(len(r.redeemBodies))], &auth, 200, []byte(`"credential"`))
	}
	var vault benchDo
	if want("vault") || want("vault@rate") {
		vc, err := benchVaultClient(r.vaultAddr, r.vaultToken, r.f.concurrency)
		if err != nil {
			return err
		}
		kv := vc.KVv2(r.fx.VaultMount)
		vault = func(rng *rand.Rand, _ int) error {
			g := r.fx.Grants[rng.IntN(len(r.fx.Grants))]
			s, err := kv.Get(ctx, g.VaultPath)
			if err == nil && s.Data["api_key"] == nil {
				err = errors.New("no api_key in the secret")
			}
			return err
		}
	}

	if want("ceiling") {
		r.timed("ceiling", "ceiling", ceilPid, ceiling)
	}
	if want("vault") {
		r.timed("vault-direct", "vault", r.f.vaultPid, vault)
	}
	if want("redeem") {
		// Warm first: with many users the warm pass takes minutes, and the
		// profile is of the measurement only.
		r.warmRedeem(&auth)
		var prof *bytes.Buffer
		var profDone chan struct{}
		if r.f.profile != "" {
			prof, profDone = &bytes.Buffer{}, make(chan struct{})
			go func() {
				defer close(profDone)
				time.Sleep(r.f.warmup)
				secs := max(int(r.f.duration/time.Second), 1)
				resp, err := http.Get(fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", r.fx.Control, secs))
				if err == nil {
					_, _ = io.Copy(prof, resp.Body)
					resp.Body.Close()
				}
			}()
		}
		r.redeemRPS = r.timed("redeem", "lanyard", lanyardPid, redeem).RPS
		// The live heap with every grant in the caches.
		r.heapRedeemed = r.heap()
		if prof != nil {
			<-profDone
			if err := os.WriteFile(r.f.profile, prof.Bytes(), 0o644); err != nil {
				return err
			}
		}
	}
	if want("ceiling@rate") || want("vault@rate") || want("redeem@rate") {
		if err := r.resolveRate(); err != nil {
			return err
		}
		if want("ceiling@rate") {
			r.openLoop(benchResult{Name: "ceiling@rate", Target: "ceiling"}, ceilPid, ceiling)
		}
		if want("vault@rate") {
			r.openLoop(benchResult{Name: "vault-direct@rate", Target: "vault"}, r.f.vaultPid, vault)
		}
		if want("redeem@rate") {
			r.warmRedeem(&auth)
			r.openLoop(benchResult{Name: "redeem@rate", Target: "lanyard"}, lanyardPid, redeem)
		}
	}
	if want("exchange") {
		bodies := make([][]byte, len(r.fx.Grants))
		for i, g := range r.fx.Grants {
			bodies[i] = []byte(url.Values{"grant_type": {"urn:ietf:params:oauth:grant-type:token-exchange"},
				"subject_token": {g.Token}, "subject_token_type": {"urn:ietf:params:oauth:token-type:access_token"},
				"resource": {benchIdP}, "tool": {benchTool}}.Encode())
		}
		r.each(len(bodies), func(i int) {
			_ = r.post(r.fx.URL+"/token", "application/x-www-form-urlencoded", bodies[i], &auth, 200, nil)
		})
		r.timed("exchange", "lanyard", lanyardPid, func(rng *rand.Rand, _ int) error {
			return r.post(r.fx.URL+"/token", "application/x-www-form-urlencoded", bodies[rng.IntN(len(bodies))], &auth, 200, []byte(`"access_token"`))
		})
	}
	if want("introspect") {
		bodies := make([][]byte, len(r.fx.Grants))
		for i, g := range r.fx.Grants {
			bodies[i] = []byte(url.Values{"token": {g.Token}}.Encode())
		}
		r.timed("introspect", "lanyard", lanyardPid, func(rng *rand.Rand, _ int) error {
			return r.post(r.fx.URL+"/introspect", "application/x-www-form-urlencoded", bodies[rng.IntN(len(bodies))], &auth, 200, []byte(`"active":true`))
		})
	}
	if want("code") || want("refresh") {
		if err := r.codeScenario(lanyardPid); err != nil {
			return err
		}
	}
	if want("refresh") {
		if len(r.refresh) < r.f.concurrency {
			return fmt.Errorf("bench: only %d refresh tokens for %d workers", len(r.refresh), r.f.concurrency)
		}
		chains := r.refresh[:r.f.concurrency]
		r.timed("refresh", "lanyard", lanyardPid, func(_ *rand.Rand, w int) error {
			body := []byte(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {chains[w]}, "client_id": {r.fx.ClientID}}.Encode())
			var tr struct {
				RefreshToken string `json:"refresh_token"`
			}
			err := r.postJSON(r.fx.URL+"/token", body, &tr)
			if err == nil {
				chains[w] = tr.RefreshToken
			}
			return err
		})
	}
	if r.f.growTo > 0 {
		r.warmRedeem(&auth)
		if err := r.growScenario(ctx, ceilPid, lanyardPid, ceiling, redeem); err != nil {
			return err
		}
	}
	r.ratios()
	rep := benchReport{Started: started, Machine: mach, Users: r.f.users, Grants: r.f.users + r.fx.ExtraGrants,
		Concurrency: r.f.concurrency, Duration: r.f.duration.String(), SeedSeconds: r.fx.SeedSeconds,
		StoreBytes: r.fx.StoreBytes, HeapSeeded: r.fx.HeapAfterSeed, HeapRedeemed: r.heapRedeemed, Results: r.results,
		Grow: r.grow}
	if r.fx.SeedUsersSeconds > 0 {
		rep.SeedUsersPerSecond = float64(r.f.users) / r.fx.SeedUsersSeconds
	}
	if r.rate > 0 {
		rep.Rate = &benchRateInfo{Requested: r.f.rate, PerSecond: r.rate, OfRedeem: r.f.rateOfRedeem, Connections: r.f.concurrency}
	}
	if r.heapRedeemed > 0 {
		rep.HeapPerGrant = (float64(r.heapRedeemed) - float64(r.fx.HeapAfterSeed)) / float64(len(r.fx.Grants))
	}
	r.print(rep)
	if r.f.jsonOut != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(r.f.jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	for _, res := range r.results {
		if res.Errors > 0 {
			return fmt.Errorf("bench: %s had %d errors (first: %s)", res.Name, res.Errors, res.FirstError)
		}
	}
	return nil
}

// warmRedeem builds the redeem scenarios' bodies, one per seeded grant, and
// redeems every grant once (token verified, credential read, LastUsedAt
// written), as on a server whose agents are at work; once per run.
func (r *benchRun) warmRedeem(auth *[2]string) {
	if r.redeemBodies == nil {
		r.rewarm(auth)
	}
}

// rewarm redeems every seeded grant once, building the bodies if needed.
func (r *benchRun) rewarm(auth *[2]string) {
	if r.redeemBodies == nil {
		r.redeemBodies = make([][]byte, len(r.fx.Grants))
		for i, g := range r.fx.Grants {
			r.redeemBodies[i], _ = json.Marshal(map[string]string{"token": g.Token, "connector": benchKeys, "tool": benchTool})
		}
	}
	r.each(len(r.redeemBodies), func(i int) {
		_ = r.post(r.fx.URL+"/v1/redeem", "application/json", r.redeemBodies[i], auth, 200, nil)
	})
}

// resolveRate sets the open loop's rate from --rate (a multiple of the
// closed-loop redeem throughput measured before, or requests/s).
func (r *benchRun) resolveRate() error {
	if r.rate > 0 {
		return nil
	}
	r.rate = r.f.ratePerSecond
	if r.f.rateOfRedeem > 0 {
		r.rate = r.f.rateOfRedeem * r.redeemRPS
	}
	if !(r.rate > 0) {
		return fmt.Errorf("bench: --rate %s: no rate (closed-loop redeem throughput %.0f/s)", r.f.rate, r.redeemRPS)
	}
	r.logf("bench: open loop at %.0f requests/s over at most %d connections\n", r.rate, r.f.concurrency)
	return nil
}

// heap is the server's live heap after a GC (0 if unknown).
func (r *benchRun) heap() uint64 {
	resp, err := http.Get(r.fx.Control + "/heap")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var h struct {
		HeapAlloc uint64 `json:"heap_alloc"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&h)
	return h.HeapAlloc
}

// codeScenario mints --codes codes through Decide (in the server, before
// the measurement) and exchanges each once at the token endpoint; the
// refresh tokens it gets start the refresh scenario's chains.
func (r *benchRun) codeScenario(pid int) error {
	resp, err := r.client.Post(fmt.Sprintf("%s/mint?n=%d", r.fx.Control, r.f.codes), "", nil)
	if err != nil {
		return err
	}
	var minted struct {
		Codes    []string `json:"codes"`
		Verifier string   `json:"verifier"`
	}
	err = json.NewDecoder(resp.Body).Decode(&minted)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		return fmt.Errorf("mint codes: %d %v", resp.StatusCode, err)
	}
	var mu sync.Mutex
	r.counted("code-exchange", "lanyard", pid, len(minted.Codes), func(i int) error {
		body := []byte(url.Values{"grant_type": {"authorization_code"}, "code": {minted.Codes[i]}, "redirect_uri": {r.fx.Redirect},
			"code_verifier": {minted.Verifier}, "client_id": {r.fx.ClientID}}.Encode())
		var tr struct {
			RefreshToken string `json:"refresh_token"`
		}
		err := r.postJSON(r.fx.URL+"/token", body, &tr)
		if err == nil && tr.RefreshToken != "" {
			mu.Lock()
			r.refresh = append(r.refresh, tr.RefreshToken)
			mu.Unlock()
		}
		return err
	})
	return nil
}

// post sends body and checks the status and that the answer contains
// want.
func (r *benchRun) post(u, ctype string, body []byte, basic *[2]string, status int, want []byte) error {
	req, err := http.NewRequest(http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", ctype)
	if basic != nil {
		req.SetBasicAuth(url.QueryEscape(basic[0]), url.QueryEscape(basic[1]))
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != status || (want != nil && !bytes.Contains(got, want)) {
		return fmt.Errorf("%s: %d %.200s", u, resp.StatusCode, got)
	}
	return nil
}

func (r *benchRun) postJSON(u string, body []byte, v any) error {
	resp, err := r.client.Post(u, "application/x-www-form-urlencoded", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s: %d %.200s", u, resp.StatusCode, got)
	}
	return json.Unmarshal(got, v)
}

// each runs do(i) for i in [0, n) from --concurrency workers, unmeasured.
func (r *benchRun) each(n int, do func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range r.f.concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				do(i)
			}
		}()
	}
	wg.Wait()
}

// timed runs do from --concurrency workers in a closed loop for --warmup
// (discarded), then for --duration (measured).
func (r *benchRun) timed(name, target string, pid int, do benchDo) benchResult {
	return r.closedLoop(benchResult{Name: name, Target: target}, pid, do)
}

// closedLoop is timed for a result with more fields set (the --grow-to
// rounds).
func (r *benchRun) closedLoop(res benchResult, pid int, do benchDo) benchResult {
	return r.measure(res, pid, func(d time.Duration) benchPhase {
		return benchClosedLoop(d, r.f.concurrency, do)
	}, true)
}

// openLoop sends do at the resolved --rate over at most --concurrency
// connections for --warmup (discarded), then for --duration (measured);
// see benchOpenLoop.
func (r *benchRun) openLoop(res benchResult, pid int, do benchDo) benchResult {
	res.Open = &benchOpen{Rate: r.rate}
	return r.measure(res, pid, func(d time.Duration) benchPhase {
		return benchOpenLoop(r.rate, d, 2*d, r.f.concurrency, do)
	}, true)
}

// counted runs do(i) for i in [0, n) from --concurrency workers, measured.
func (r *benchRun) counted(name, target string, pid, n int, do func(i int) error) {
	r.measure(benchResult{Name: name, Target: target}, pid, func(time.Duration) benchPhase {
		var next atomic.Int64
		return benchWorkers(r.f.concurrency, func(_ int, _ *rand.Rand, rec func(time.Duration, error)) {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				t := time.Now()
				err := do(i)
				rec(time.Since(t), err)
			}
		})
	}, false)
}

// measure runs phase for --warmup (discarded, if warm) and then for
// --duration, and records res with the figures of the second run: the
// latencies, the server's CPU time, peak RSS and group commits.
func (r *benchRun) measure(res benchResult, pid int, phase func(d time.Duration) benchPhase, warm bool) benchResult {
	if warm && r.f.warmup > 0 {
		phase(r.f.warmup)
	}
	var st0 benchCommits
	if res.Target == "lanyard" {
		st0 = r.commits()
	}
	cpu0, rss0 := procCPU(pid), resetPeakRSS(pid)
	ccpu0 := selfCPU()
	ph := phase(r.f.duration)
	cpu1, peak := procCPU(pid), procPeakRSS(pid)
	var st1 benchCommits
	if res.Target == "lanyard" {
		st1 = r.commits()
	}
	ccpu1 := selfCPU()
	all, wall := ph.lats, ph.wall
	res.Requests, res.Errors, res.FirstError = len(all)+ph.errs, ph.errs, ph.firstErr
	res.Seconds, res.RPS, res.ServerCPU, res.PeakRSSMiB = wall.Seconds(), float64(len(all))/wall.Seconds(), -1, -1
	res.ClientCPU = ccpu1 - ccpu0
	if len(all) > 0 {
		q := func(p float64) float64 { return ms(benchQuantile(all, p)) }
		res.P50ms, res.P95ms, res.P99ms, res.Maxms = q(0.50), q(0.95), q(0.99), ms(all[len(all)-1])
	}
	if res.Open != nil {
		res.Open.Late, res.Open.LateMaxms, res.Open.Unsent = ph.late, ms(ph.lateMax), ph.unsent
		res.Open.SendLagP99ms = ms(ph.sendLagP99)
	}
	if cpu0 >= 0 && cpu1 >= 0 {
		res.ServerCPU = cpu1 - cpu0
		res.ServerCores = res.ServerCPU / wall.Seconds()
		if len(all) > 0 {
			res.CPUPerReqUS = res.ServerCPU / float64(len(all)) * 1e6
		}
	}
	if rss0 && peak >= 0 {
		res.PeakRSSMiB = peak
	}
	if n := st1.Commits - st0.Commits; n > 0 {
		res.Commits = n
		res.WritesPerTx = float64(st1.Calls-st0.Calls) / float64(n)
		res.CommitMeanMs = float64(st1.Nanos-st0.Nanos) / float64(n) / 1e6
	}
	r.results = append(r.results, res)
	late := ""
	if o := res.Open; o != nil {
		late = fmt.Sprintf(" late %d unsent %d send lag p99 %.2f ms (at %.0f/s)", o.Late, o.Unsent, o.SendLagP99ms, o.Rate)
	}
	r.logf("bench: %-13s %8.0f/s p99 %6.2f ms errors %d%s\n", res.Name, res.RPS, res.P99ms, res.Errors, late)
	return res
}

type benchCommits struct {
	Commits int64 `json:"commits"`
	Calls   int64 `json:"calls"`
	Nanos   int64 `json:"nanos"`
}

// commits reads the server's group-commit counters.
func (r *benchRun) commits() benchCommits {
	var c benchCommits
	resp, err := http.Get(r.fx.Control + "/commits")
	if err != nil {
		return c
	}
	defer resp.Body.Close()
	_ = json.NewDecoder(resp.Body).Decode(&c)
	return c
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// ratios fills every result's ratios to the baseline and the ceiling: those
// of the same loop (closed, or open at the same rate) and the same --grow-to
// round, else the main run's of the same loop.
func (r *benchRun) ratios() {
	type key struct {
		round string
		open  bool
	}
	base, ceil := map[key]*benchResult{}, map[key]*benchResult{}
	for i := range r.results {
		x := &r.results[i]
		switch k := (key{x.Round, x.Open != nil}); x.Target {
		case "vault":
			base[k] = x
		case "ceiling":
			ceil[k] = x
		}
	}
	ref := func(m map[key]*benchResult, k key) *benchResult {
		if x := m[k]; x != nil {
			return x
		}
		return m[key{"", k.open}]
	}
	for i := range r.results {
		x := &r.results[i]
		k := key{x.Round, x.Open != nil}
		if b := ref(base, k); b != nil {
			x.RPSvsBaseline, x.P99vsBaseline = benchDiv(x.RPS, b.RPS), benchDiv(x.P99ms, b.P99ms)
		}
		if c := ref(ceil, k); c != nil {
			x.RPSvsCeiling, x.P99vsCeiling = benchDiv(x.RPS, c.RPS), benchDiv(x.P99ms, c.P99ms)
		}
	}
}

// benchDiv is a/b, or 0 when b is 0.
func benchDiv(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

func commitCol(n int64, v float64, f string) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprintf(f, v)
}

func (r *benchRun) print(rep benchReport) {
	w := tabwriter.NewWriter(r.m.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(r.m.Stdout, "lanyard bench: %d CPUs (%s), %d MiB, load %s; %d users, %d grants, %d connections, %s per scenario\n",
		rep.Machine.CPUs, rep.Machine.CPUModel, rep.Machine.MemMiB, rep.Machine.LoadAvg, rep.Users, rep.Grants, rep.Concurrency, rep.Duration)
	fmt.Fprintln(w, "scenario\treq/s\tx base\tx ceil\tp50 ms\tp95 ms\tp99 ms\tmax ms\tp99 x base\tp99 x ceil\terrors\tsrv CPU s\tsrv cores\tCPU µs/req\tpeak RSS MiB\twrites/commit\tcommit ms\tlate\t")
	na := func(known, v float64, f string) string {
		if known < 0 {
			return "n/a"
		}
		return fmt.Sprintf(f, v)
	}
	for _, x := range rep.Results {
		late := "-"
		if o := x.Open; o != nil {
			late = strconv.Itoa(o.Late)
			if o.Unsent > 0 {
				late += fmt.Sprintf(" +%d unsent", o.Unsent)
			}
		}
		fmt.Fprintf(w, "%s\t%.0f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", x.Name, x.RPS, x.RPSvsBaseline, x.RPSvsCeiling,
			x.P50ms, x.P95ms, x.P99ms, x.Maxms, x.P99vsBaseline, x.P99vsCeiling, x.Errors,
			na(x.ServerCPU, x.ServerCPU, "%.2f"), na(x.ServerCPU, x.ServerCores, "%.2f"), na(x.ServerCPU, x.CPUPerReqUS, "%.0f"),
			na(x.PeakRSSMiB, x.PeakRSSMiB, "%.0f"), commitCol(x.Commits, x.WritesPerTx, "%.1f"), commitCol(x.Commits, x.CommitMeanMs, "%.1f"), late)
	}
	_ = w.Flush()
	if rep.SeedUsersPerSecond > 0 {
		fmt.Fprintf(r.m.Stdout, "seeding: %d users at %.0f users/s (%.1f s in all, with %d extra grants)\n",
			rep.Users, rep.SeedUsersPerSecond, rep.SeedSeconds, rep.Grants-rep.Users)
	}
	if rep.HeapRedeemed > 0 {
		fmt.Fprintf(r.m.Stdout, "server live heap: %.1f MiB after seeding, %.1f MiB after redeeming every grant (%.0f B per active grant); store file %.1f MiB\n",
			float64(rep.HeapSeeded)/(1<<20), float64(rep.HeapRedeemed)/(1<<20), rep.HeapPerGrant, float64(rep.StoreBytes)/(1<<20))
	}
	if ri := rep.Rate; ri != nil {
		of := ""
		if ri.OfRedeem > 0 {
			of = fmt.Sprintf(" (%gx the closed-loop redeem throughput)", ri.OfRedeem)
		}
		fmt.Fprintf(r.m.Stdout, "open loop (@rate rows): %.0f requests/s intended%s over at most %d connections; latency from each request's intended send time; late: no connection free at that time\n",
			ri.PerSecond, of, ri.Connections)
	}
	if rep.Grow != nil {
		rep.Grow.print(r.m.Stdout)
	}
}

// benchChildSilence is how long a starting child may print nothing before
// it counts as stuck (the bench server prints its seeding progress every
// few seconds).
const benchChildSilence = 10 * time.Minute

// child starts exe args with stderr to logName in the run directory and
// waits for its "ready URL" line on stdout. Its progress lines there
// ("bench ...") are copied to stderr, before and after that line.
func (r *benchRun) child(ctx context.Context, exe, logName string, args ...string) (*exec.Cmd, string, error) {
	logf, err := os.Create(filepath.Join(r.dir, logName))
	if err != nil {
		return nil, "", err
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), "VAULT_ADDR="+r.vaultAddr, "VAULT_TOKEN="+r.vaultToken)
	cmd.Stderr = logf
	// The children die with the load generator, however it ends (Linux).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	ready := make(chan string, 1)
	alive := make(chan struct{}, 1)
	go func() {
		sc := bufio.NewScanner(out)
		started := false
		for sc.Scan() {
			if u, ok := strings.CutPrefix(sc.Text(), "ready "); ok && !started {
				started = true
				ready <- u
				continue
			}
			if strings.HasPrefix(sc.Text(), "bench") { // progress, not e.g. the dev login
				r.logf("%s\n", sc.Text())
			}
			select {
			case alive <- struct{}{}:
			default:
			}
		}
		close(ready)
		_, _ = io.Copy(io.Discard, out)
	}()
	silence := time.NewTimer(benchChildSilence)
	defer silence.Stop()
wait:
	for {
		select {
		case u, ok := <-ready:
			if ok {
				return cmd, u, nil
			}
			break wait
		case <-alive:
			silence.Reset(benchChildSilence)
		case <-ctx.Done():
			break wait
		case <-silence.C:
			break wait
		}
	}
	stopChild(cmd)
	tail, _ := os.ReadFile(logf.Name())
	if len(tail) > 2000 {
		tail = tail[len(tail)-2000:]
	}
	return nil, "", fmt.Errorf("%s did not start: %s", args[1], strings.TrimSpace(string(tail)))
}

func stopChild(cmd *exec.Cmd) {
	if cmd == nil || cmd.Process == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// benchTransport keeps every connection of the load alive.
func benchTransport(conns int) *http.Transport {
	return &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        conns * 4,
		MaxIdleConnsPerHost: conns * 2,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
}

// benchVaultClient is a Vault API client on the same kind of transport as
// the load's other requests.
func benchVaultClient(addr, tok string, conns int) (*vaultapi.Client, error) {
	cfg := vaultapi.DefaultConfig()
	cfg.Address = addr
	cfg.HttpClient = &http.Client{Transport: benchTransport(conns), Timeout: 30 * time.Second}
	cfg.MaxRetries = 0
	c, err := vaultapi.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	c.SetToken(tok)
	return c, nil
}

// benchCeiling is the ceiling: a Go JSON handler that decodes a small JSON
// body and answers a small JSON object, on loopback, in its own process.
func (m *Main) benchCeiling(ctx context.Context, args []string) error {
	fs := m.flagSet("bench ceiling", "", "Internal: the ceiling server of 'lanyard bench' (a trivial JSON handler).")
	if err := parse(fs, args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /json", func(w http.ResponseWriter, r *http.Request) {
		var in map[string]string
		if err := json.NewDecoder(io.LimitReader(r.Body, 16<<10)).Decode(&in); err != nil {
			http.Error(w, "bad json", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_ = json.NewEncoder(w).Encode(map[string]any{"connection_id": "c", "connector": in["connector"], "type": "apikey",
			"credential": map[string]string{"api_key": "k"}})
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { <-ctx.Done(); _ = srv.Close() }()
	fmt.Fprintf(m.Stdout, "ready http://%s\n", ln.Addr())
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// procCPU returns the user+system CPU seconds of pid (-1 if unknown).
func procCPU(pid int) float64 {
	if pid <= 0 {
		return -1
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	// Fields after the parenthesised command name; utime and stime are
	// fields 14 and 15, in clock ticks (USER_HZ, 100 on Linux).
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(fields) < 13 {
		return -1
	}
	ut, err1 := strconv.ParseFloat(fields[11], 64)
	st, err2 := strconv.ParseFloat(fields[12], 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	return (ut + st) / 100
}

// resetPeakRSS resets pid's VmHWM to its current RSS (clear_refs 5).
func resetPeakRSS(pid int) bool {
	return pid > 0 && os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0) == nil
}

// procPeakRSS returns pid's VmHWM in MiB (-1 if unknown).
func procPeakRSS(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			if err == nil {
				return kb / 1024
			}
		}
	}
	return -1
}

func selfCPU() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

func benchMachineInfo() benchMachine {
	mi := benchMachine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				mi.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
				mi.MemMiB = kb / 1024
			}
		}
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		if len(f) >= 3 {
			mi.LoadAvg = strings.Join(f[:3], " ")
		}
	}
	return mi
}
