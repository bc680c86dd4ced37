package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/internal/config"
	"github.com/lanyardhq/lanyard/internal/password"
)

func randomPassword() string { return rand.Text() }

// adminFlags adds --config and --data, the two ways admin subcommands find
// the data a server uses.
type adminFlags struct{ config, data string }

func (f *adminFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.config, "config", "", "configuration file of the server whose data to manage")
	fs.StringVar(&f.data, "data", config.Default().DataDir, "data directory of a 'lanyard dev' instance (ignored with --config)")
}

func (f *adminFlags) load(m *Main) (config.Config, error) {
	if f.config != "" {
		return config.Load(f.config, m.Getenv)
	}
	cfg := config.Default()
	cfg.DataDir, cfg.Dev = f.data, true
	return finish(cfg)
}

// withStore opens the metadata store for one admin command.
func (m *Main) withStore(f *adminFlags, fn func(broker.Store) error) error {
	cfg, err := f.load(m)
	if err != nil {
		return err
	}
	db, err := openStore(context.Background(), cfg, nil)
	if err != nil {
		return err
	}
	defer db.Close()
	return fn(db)
}

func (m *Main) users(ctx context.Context, args []string) error {
	subs := map[string]struct {
		args, summary string
		run           func(ctx context.Context, db broker.Store, fs *flag.FlagSet, admin bool) error
	}{
		"add":          {"[--admin] NAME", "adds a user; the password is read from the first line of standard input", m.userAdd},
		"list":         {"", "lists users", m.userList},
		"set-password": {"NAME", "sets a user's password from the first line of standard input", m.userSetPassword},
		"delete":       {"NAME", "deletes a user", m.userDelete},
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(m.Stdout, "Usage: lanyard users SUBCOMMAND [--config FILE | --data DIR] [args]\n\nSubcommands:")
		for _, n := range []string{"add", "list", "set-password", "delete"} {
			fmt.Fprintf(m.Stdout, "  %-13s %-15s %s\n", n, subs[n].args, subs[n].summary)
		}
		if len(args) == 0 {
			return usagef("users: a subcommand is required")
		}
		return nil
	}
	sub, ok := subs[args[0]]
	if !ok {
		return usagef("users: unknown subcommand %q (add, list, set-password, delete)", args[0])
	}
	fs := m.flagSet("users "+args[0], sub.args, strings.ToUpper(sub.summary[:1])+sub.summary[1:]+".")
	var af adminFlags
	af.register(fs)
	admin := false
	if args[0] == "add" {
		fs.BoolVar(&admin, "admin", false, "make the user an administrator")
	}
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	want := 1
	if args[0] == "list" {
		want = 0
	}
	if fs.NArg() != want {
		return usagef("users %s: want %d argument(s), got %d", args[0], want, fs.NArg())
	}
	if want == 1 {
		if err := broker.ValidateUsername(fs.Arg(0)); err != nil {
			return usagef("%v", err)
		}
	}
	return m.withStore(&af, func(db broker.Store) error { return sub.run(ctx, db, fs, admin) })
}

// readPassword reads and hashes the first line of standard input.
func (m *Main) readPassword() (string, error) {
	line, err := bufio.NewReader(m.Stdin).ReadString('\n')
	if err != nil && line == "" {
		return "", usagef("no password on standard input")
	}
	hash, err := password.Hash(broker.SecretString(strings.TrimRight(line, "\r\n")), m.PasswordCost)
	if errors.Is(err, broker.ErrInvalid) {
		return "", usagef("%v", err)
	}
	return hash, err
}

func (m *Main) userAdd(ctx context.Context, db broker.Store, fs *flag.FlagSet, admin bool) error {
	hash, err := m.readPassword()
	if err != nil {
		return err
	}
	now := time.Now()
	u := broker.User{ID: broker.NewID(), Username: fs.Arg(0), PasswordHash: hash, Admin: admin, CreatedAt: now, UpdatedAt: now}
	if err := db.Users().Create(ctx, u); err != nil {
		if errors.Is(err, broker.ErrAlreadyExists) {
			return usagef("users add: user %q already exists", u.Username)
		}
		return err
	}
	fmt.Fprintf(m.Stdout, "added user %s (%s)\n", u.Username, u.ID)
	return nil
}

func (m *Main) userList(ctx context.Context, db broker.Store, _ *flag.FlagSet, _ bool) error {
	tw := tabwriter.NewWriter(m.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "USERNAME\tID\tADMIN\tDISABLED\tCREATED")
	q := broker.Query{}
	for {
		page, err := db.Users().List(ctx, q)
		if err != nil {
			return err
		}
		for _, u := range page.Items {
			fmt.Fprintf(tw, "%s\t%s\t%v\t%v\t%s\n", u.Username, u.ID, u.Admin, u.Disabled, u.CreatedAt.UTC().Format(time.RFC3339))
		}
		if page.Next == "" {
			return tw.Flush()
		}
		q.After = page.Next
	}
}

func (m *Main) lookupUser(ctx context.Context, db broker.Store, name string) (broker.User, error) {
	u, err := db.Users().GetBy(ctx, broker.IndexUsername, name)
	if errors.Is(err, broker.ErrNotFound) {
		return u, usagef("no user %q", name)
	}
	return u, err
}

func (m *Main) userSetPassword(ctx context.Context, db broker.Store, fs *flag.FlagSet, _ bool) error {
	u, err := m.lookupUser(ctx, db, fs.Arg(0))
	if err != nil {
		return err
	}
	hash, err := m.readPassword()
	if err != nil {
		return err
	}
	if _, err := db.Users().Update(ctx, u.ID, func(u broker.User) (broker.User, error) {
		u.PasswordHash, u.FailedLogins, u.UpdatedAt = hash, 0, time.Now()
		return u, nil
	}); err != nil {
		return err
	}
	fmt.Fprintf(m.Stdout, "password of %s changed\n", u.Username)
	return nil
}

func (m *Main) userDelete(ctx context.Context, db broker.Store, fs *flag.FlagSet, _ bool) error {
	u, err := m.lookupUser(ctx, db, fs.Arg(0))
	if err != nil {
		return err
	}
	if err := db.Users().Delete(ctx, u.ID); err != nil {
		return err
	}
	fmt.Fprintf(m.Stdout, "deleted user %s\n", u.Username)
	return nil
}
