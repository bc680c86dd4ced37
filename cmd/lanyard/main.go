// Command lanyard is the Lanyard credential broker: `lanyard dev` runs an
// all-in-one instance with embedded defaults, `lanyard serve` runs from a
// configuration file, and admin subcommands manage the same data.
//
// This is the only package that imports concrete backends (bbolt, Vault, the
// sealed store) and wires them together; see app.go.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/lanyardhq/lanyard/internal/config"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	m := &Main{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv}
	os.Exit(m.Run(ctx, os.Args[1:]))
}

// Exit codes.
const (
	exitOK    = 0
	exitFail  = 1 // a runtime failure
	exitUsage = 2 // bad flags, arguments or configuration
)

// Main is the program with its environment injected, so that tests run the
// real command in-process.
type Main struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Getenv         func(string) string
	// OnReady, if set, is called with the URL of the listening address once
	// the server accepts connections.
	OnReady func(url string)
	// PasswordCost is the bcrypt cost of new password hashes; 0 means
	// password.DefaultCost. Tests lower it.
	PasswordCost int
	// credCacheTTL, if not 0, overrides secrets.cache_ttl (negative: no
	// cache); `lanyard bench server --credential-cache-ttl` sets it.
	credCacheTTL time.Duration
}

// usageError is bad input: reported in one line with exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

type command struct {
	name, args, summary string
	run                 func(m *Main, ctx context.Context, args []string) error
}

func commands() []command {
	return []command{
		{"dev", "[flags]", "run an all-in-one Lanyard on 127.0.0.1:8080 with embedded defaults", (*Main).dev},
		{"serve", "--config FILE", "run Lanyard from a configuration file", (*Main).serve},
		{"users", "SUBCOMMAND [flags]", "manage local users (add, list, set-password, delete)", (*Main).users},
		{"config", "check --config FILE", "validate a configuration file and list every problem", (*Main).configCmd},
		{"keys", "list|rotate [flags]", "list or rotate the access-token signing keys", (*Main).keysCmd},
		{"resources", "SUBCOMMAND [flags]", "manage MCP servers (list, add, rotate-secret, delete)", (*Main).resources},
		{"grants", "list|revoke [flags]", "list users' grants to agents, or revoke one", (*Main).grants},
		{"audit", "verify|export [flags]", "verify the audit chain or export it as JSON lines", (*Main).auditCmd},
		{"bench", "[flags]", "measure the redeem hot path under load against Vault (see BENCHMARKS.md)", (*Main).bench},
		{"version", "", "print the version and build information", (*Main).version},
	}
}

// Run runs the command line args and returns the exit status.
func (m *Main) Run(ctx context.Context, args []string) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" || args[0] == "-help" {
		m.usage(m.Stdout)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return m.exit(c.run(m, ctx, args[1:]))
		}
	}
	fmt.Fprintf(m.Stderr, "lanyard: unknown command %q (run 'lanyard --help')\n", args[0])
	return exitUsage
}

func (m *Main) usage(w io.Writer) {
	fmt.Fprintln(w, "Lanyard is a credential broker for MCP servers.\n\nUsage:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  lanyard %-8s %-22s %s\n", c.name, c.args, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'lanyard COMMAND --help' for a command's flags.")
}

func (m *Main) exit(err error) int {
	var ue usageError
	var probs config.Problems
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(m.Stderr, "lanyard: %s\n", oneLine(ue.msg))
		return exitUsage
	case errors.As(err, &probs):
		fmt.Fprintf(m.Stderr, "lanyard: %v\n", err)
		return exitUsage
	default:
		fmt.Fprintf(m.Stderr, "lanyard: %s\n", oneLine(err.Error()))
		return exitFail
	}
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// flagSet returns a FlagSet that prints its usage to Stdout on --help and
// reports parse errors as usage errors in one line.
func (m *Main) flagSet(name, args, summary string) *flag.FlagSet {
	fs := flag.NewFlagSet("lanyard "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fmt.Fprintf(m.Stdout, "Usage: lanyard %s %s\n\n%s\n\nFlags:\n", name, args, summary)
		fs.SetOutput(m.Stdout)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	return fs
}

// parse parses args; -h/--help prints usage and returns flag.ErrHelp.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.Usage()
			return err
		}
		return usagef("%s: %v", fs.Name(), err)
	}
	return nil
}

func (m *Main) version(_ context.Context, args []string) error {
	fs := m.flagSet("version", "", "Prints the version of this binary and of its module.")
	if err := parse(fs, args); err != nil {
		return err
	}
	v, goVersion := "(devel)", runtime.Version()
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				v += " " + s.Value
			}
		}
	}
	fmt.Fprintf(m.Stdout, "lanyard %s %s\n", v, goVersion)
	return nil
}
