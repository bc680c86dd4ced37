package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/authserver"
	"github.com/lanyardhq/lanyard/broker/oauth"
	"github.com/lanyardhq/lanyard/broker/token"
	"github.com/lanyardhq/lanyard/internal/audit"
	"github.com/lanyardhq/lanyard/internal/safehttp"
)

// subcommand is one admin subcommand working on the metadata store.
type subcommand struct {
	args, summary string
	nargs         int
	flags         func(fs *flag.FlagSet) // extra flags
	run           func(ctx context.Context, db broker.Store, fs *flag.FlagSet) error
}

// runSubcommand dispatches args[0] among subs (listed in order), with
// --config/--data and --help like `lanyard users`.
func (m *Main) runSubcommand(ctx context.Context, group string, order []string, subs map[string]subcommand, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintf(m.Stdout, "Usage: lanyard %s SUBCOMMAND [--config FILE | --data DIR] [args]\n\nSubcommands:\n", group)
		for _, n := range order {
			fmt.Fprintf(m.Stdout, "  %-14s %-28s %s\n", n, subs[n].args, subs[n].summary)
		}
		if len(args) == 0 {
			return usagef("%s: a subcommand is required", group)
		}
		return nil
	}
	sub, ok := subs[args[0]]
	if !ok {
		return usagef("%s: unknown subcommand %q (%s)", group, args[0], strings.Join(order, ", "))
	}
	fs := m.flagSet(group+" "+args[0], sub.args, strings.ToUpper(sub.summary[:1])+sub.summary[1:]+".")
	var af adminFlags
	af.register(fs)
	if sub.flags != nil {
		sub.flags(fs)
	}
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	if fs.NArg() != sub.nargs {
		return usagef("%s %s: want %d argument(s), got %d", group, args[0], sub.nargs, fs.NArg())
	}
	return m.withStore(&af, func(db broker.Store) error { return sub.run(ctx, db, fs) })
}

// resources manages registered MCP servers. Those defined in the config
// file (FromConfig) are managed there: the CLI lists them but refuses to
// delete them or rotate their secret, because the next start would undo it.
func (m *Main) resources(ctx context.Context, args []string) error {
	var (
		id, uri, name, scopes, defScopes, conns, jwksURL, jwksFile string
		defaultAllow                                               bool
		tools                                                      toolFlags
	)
	subs := map[string]subcommand{
		"list": {"", "lists registered MCP servers (never their secrets)", 0, nil, m.resourceList},
		"add": {"--id ID --uri URI [flags]", "registers an MCP server; prints its generated secret once", 0,
			func(fs *flag.FlagSet) {
				fs.StringVar(&id, "id", "", "the MCP server's id (its client id towards Lanyard)")
				fs.StringVar(&uri, "uri", "", "its canonical resource URI (the audience of its tokens)")
				fs.StringVar(&name, "name", "", "display name shown on the consent screen")
				fs.StringVar(&scopes, "scopes", "", "comma-separated scopes it accepts")
				fs.StringVar(&defScopes, "default-scopes", "", "comma-separated scopes granted when a client asks for none")
				fs.StringVar(&conns, "connectors", "", "comma-separated connectors it may redeem")
				fs.BoolVar(&defaultAllow, "default-allow", false, "allow tools without a rule (default: deny)")
				fs.Var(&tools, "tool", "a tool rule NAME[:SCOPE,...[:CONNECTOR,...]] (repeatable)")
				fs.StringVar(&jwksURL, "jwks-url", "", "authenticate with private_key_jwt against this JWKS URL (no secret)")
				fs.StringVar(&jwksFile, "jwks-file", "", "authenticate with private_key_jwt against this JWKS file (no secret)")
			},
			func(ctx context.Context, db broker.Store, fs *flag.FlagSet) error {
				dev, err := m.adminDev(fs)
				if err != nil {
					return err
				}
				return m.resourceAdd(ctx, db, broker.Resource{ID: id, URI: uri, Name: name, Scopes: list(scopes),
					DefaultScopes: list(defScopes), Connectors: list(conns), JWKSURL: jwksURL,
					Policy: broker.ToolPolicy{DefaultAllow: defaultAllow, Tools: tools}}, jwksFile, dev)
			}},
		"rotate-secret": {"ID", "replaces an MCP server's secret; prints the new one once", 1, nil, m.resourceRotate},
		"delete":        {"ID", "deletes an MCP server registered with this command", 1, nil, m.resourceDelete},
	}
	return m.runSubcommand(ctx, "resources", []string{"list", "add", "rotate-secret", "delete"}, subs, args)
}

// toolFlags collects --tool rules.
type toolFlags []broker.ToolRule

func (t *toolFlags) String() string { return fmt.Sprint(len(*t), " rules") }
func (t *toolFlags) Set(v string) error {
	parts := strings.Split(v, ":")
	if parts[0] == "" || len(parts) > 3 {
		return errors.New("want NAME[:SCOPE,...[:CONNECTOR,...]]")
	}
	r := broker.ToolRule{Name: parts[0]}
	if len(parts) > 1 {
		r.Scopes = list(parts[1])
	}
	if len(parts) > 2 {
		r.Connectors = list(parts[2])
	}
	*t = append(*t, r)
	return nil
}

func list(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" && !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out
}

// newResourceSecret is 256 random bits with a prefix secret scanners know.
func newResourceSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return "lys_" + base64.RawURLEncoding.EncodeToString(b)
}

func policySummary(p broker.ToolPolicy) string {
	def := "deny"
	if p.DefaultAllow {
		def = "allow"
	}
	var names []string
	for _, t := range p.Tools {
		names = append(names, t.Name)
	}
	if len(names) == 0 {
		return "default " + def
	}
	return fmt.Sprintf("default %s; rules: %s", def, strings.Join(names, ","))
}

func (m *Main) resourceList(ctx context.Context, db broker.Store, _ *flag.FlagSet) error {
	all, err := broker.ListAll(ctx, db.Resources(), broker.Query{})
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(m.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tURI\tNAME\tAUTH\tCONNECTORS\tPOLICY\tSOURCE")
	for _, r := range all {
		auth, src := r.TokenEndpointAuthMethod, "cli"
		if auth == "" {
			auth = authserver.AuthSecretBasic
		}
		if r.FromConfig {
			src = "config"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.URI, r.Name, auth, strings.Join(r.Connectors, ","), policySummary(r.Policy), src)
	}
	return tw.Flush()
}

// adminDev reports whether an admin command manages a development
// instance, where plain-http loopback URIs are allowed: with --data (the
// data directory of `lanyard dev`) it does; with --config, the loaded
// configuration's Dev flag says.
func (m *Main) adminDev(fs *flag.FlagSet) (bool, error) {
	af := adminFlags{config: fs.Lookup("config").Value.String(), data: fs.Lookup("data").Value.String()}
	if af.config == "" {
		return true, nil
	}
	cfg, err := af.load(m)
	if err != nil {
		return false, err
	}
	return cfg.Dev, nil
}

// resourceAdd registers r after the checks the configuration file's
// resources get: URIs https (plain http to loopback hosts only in dev),
// unique tool rules whose connectors are the server's; a --jwks-file is
// stored as the public keys it holds, never a private or symmetric key.
func (m *Main) resourceAdd(ctx context.Context, db broker.Store, r broker.Resource, jwksFile string, dev bool) error {
	var problems []string
	if r.ID == "" {
		problems = append(problems, "--id is required")
	}
	canon, err := oauth.CanonicalResource(r.URI, dev)
	if err != nil {
		if dev {
			problems = append(problems, "--uri must be an absolute https URI without fragment (http only to loopback)")
		} else {
			problems = append(problems, "--uri must be an absolute https URI without fragment")
		}
	}
	r.URI = canon
	if r.JWKSURL != "" && jwksFile != "" {
		problems = append(problems, "use --jwks-url or --jwks-file, not both")
	}
	if r.JWKSURL != "" {
		u, err := url.Parse(r.JWKSURL)
		if err != nil || safehttp.CheckURL(u, dev) != nil || u.Fragment != "" {
			if dev {
				problems = append(problems, "--jwks-url must be an absolute https URL without user info or fragment (http only to loopback)")
			} else {
				problems = append(problems, "--jwks-url must be an absolute https URL without user info or fragment")
			}
		}
	}
	for _, d := range r.DefaultScopes {
		if !slices.Contains(r.Scopes, d) {
			problems = append(problems, fmt.Sprintf("default scope %q is not in --scopes", d))
		}
	}
	seen := map[string]bool{}
	for _, t := range r.Policy.Tools {
		if seen[t.Name] {
			problems = append(problems, fmt.Sprintf("--tool %q is given twice", t.Name))
		}
		seen[t.Name] = true
		for _, c := range t.Connectors {
			if !slices.Contains(r.Connectors, c) {
				problems = append(problems, fmt.Sprintf("--tool %q: connector %q is not in --connectors", t.Name, c))
			}
		}
	}
	if jwksFile != "" {
		b, err := os.ReadFile(jwksFile)
		if err == nil {
			b, err = token.PublicJWKSet(b)
		}
		if err != nil {
			problems = append(problems, fmt.Sprintf("--jwks-file: %v", err))
		}
		r.JWKS = string(b)
	}
	if len(problems) > 0 {
		return usagef("resources add: %s", strings.Join(problems, "; "))
	}
	r.CreatedAt = time.Now()
	secret := ""
	if r.JWKS != "" || r.JWKSURL != "" {
		r.TokenEndpointAuthMethod = authserver.AuthPrivateKeyJWT
	} else {
		secret = newResourceSecret()
		r.TokenEndpointAuthMethod, r.SecretHash = authserver.AuthSecretBasic, broker.HashSecret(secret)
	}
	if err := db.Resources().Create(ctx, r); err != nil {
		if errors.Is(err, broker.ErrAlreadyExists) {
			return usagef("resources add: an MCP server with id %q or URI %q exists", r.ID, r.URI)
		}
		if errors.Is(err, broker.ErrInvalid) {
			return usagef("resources add: %v", err)
		}
		return err
	}
	fmt.Fprintf(m.Stdout, "registered MCP server %s (%s)\n", r.ID, r.URI)
	if secret != "" {
		fmt.Fprintf(m.Stdout, "secret: %s\n(shown once; Lanyard keeps only its hash; the server authenticates with HTTP Basic %s:SECRET)\n", secret, r.ID)
	}
	return nil
}

// cliResource loads a resource the CLI may change.
func cliResource(ctx context.Context, db broker.Store, verb, id string) (broker.Resource, error) {
	r, err := db.Resources().Get(ctx, id)
	if errors.Is(err, broker.ErrNotFound) {
		return r, usagef("resources %s: no MCP server %q", verb, id)
	}
	if err == nil && r.FromConfig {
		return r, usagef("resources %s: %q is defined in the config file; change it there", verb, id)
	}
	return r, err
}

func (m *Main) resourceRotate(ctx context.Context, db broker.Store, fs *flag.FlagSet) error {
	r, err := cliResource(ctx, db, "rotate-secret", fs.Arg(0))
	if err != nil {
		return err
	}
	if r.TokenEndpointAuthMethod == authserver.AuthPrivateKeyJWT {
		return usagef("resources rotate-secret: %q authenticates with private_key_jwt and has no secret", r.ID)
	}
	secret := newResourceSecret()
	if _, err := db.Resources().Update(ctx, r.ID, func(x broker.Resource) (broker.Resource, error) {
		x.SecretHash = broker.HashSecret(secret)
		return x, nil
	}); err != nil {
		return err
	}
	fmt.Fprintf(m.Stdout, "new secret of %s: %s\n(shown once; the old secret no longer works)\n", r.ID, secret)
	return nil
}

func (m *Main) resourceDelete(ctx context.Context, db broker.Store, fs *flag.FlagSet) error {
	r, err := cliResource(ctx, db, "delete", fs.Arg(0))
	if err != nil {
		return err
	}
	if err := db.Resources().Delete(ctx, r.ID); err != nil {
		return err
	}
	fmt.Fprintf(m.Stdout, "deleted MCP server %s; it can no longer authenticate, so tokens for it cannot be redeemed\n", r.ID)
	return nil
}

// grants lists and revokes users' grants to agents.
func (m *Main) grants(ctx context.Context, args []string) error {
	var user string
	subs := map[string]subcommand{
		"list": {"[--user NAME]", "lists grants (agent, MCP server, scopes, linked accounts, status)", 0,
			func(fs *flag.FlagSet) { fs.StringVar(&user, "user", "", "only this user's grants") },
			func(ctx context.Context, db broker.Store, _ *flag.FlagSet) error { return m.grantList(ctx, db, user) }},
		"revoke": {"ID", "revokes a grant: every token issued under it stops working", 1, nil, m.grantRevoke},
	}
	return m.runSubcommand(ctx, "grants", []string{"list", "revoke"}, subs, args)
}

func (m *Main) grantList(ctx context.Context, db broker.Store, user string) error {
	q := broker.Query{}
	names := map[string]string{}
	if user != "" {
		u, err := m.lookupUser(ctx, db, user)
		if err != nil {
			return err
		}
		q = broker.Query{Index: broker.IndexUser, Value: u.ID}
	}
	all, err := broker.ListAll(ctx, db.Grants(), q)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(m.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tUSER\tCLIENT\tMCP SERVER\tSCOPES\tCONNECTIONS\tCREATED\tLAST USED\tSTATUS")
	for _, g := range all {
		name, ok := names[g.UserID]
		if !ok {
			name = g.UserID
			if u, err := db.Users().Get(ctx, g.UserID); err == nil {
				name = u.Username
			}
			names[g.UserID] = name
		}
		status, last := "active", "-"
		if g.Revoked() {
			status = "revoked " + g.RevokedAt.UTC().Format(time.RFC3339)
		}
		if !g.LastUsedAt.IsZero() {
			last = g.LastUsedAt.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", g.ID, name, g.ClientID, g.Resource, strings.Join(g.Scopes, " "),
			strings.Join(g.ConnectionIDs, ","), g.CreatedAt.UTC().Format(time.RFC3339), last, status)
	}
	return tw.Flush()
}

// grantRevoke revokes a grant and records it in the audit chain (like a
// revocation on the Agents page).
func (m *Main) grantRevoke(ctx context.Context, db broker.Store, fs *flag.FlagSet) error {
	const reason = "revoked by an administrator (lanyard grants revoke)"
	now, was := time.Now(), false
	g, err := db.Grants().Update(ctx, fs.Arg(0), func(g broker.Grant) (broker.Grant, error) {
		if was = g.Revoked(); !was {
			g.RevokedAt, g.RevokeReason = now, reason
		}
		return g, nil
	})
	if errors.Is(err, broker.ErrNotFound) {
		return usagef("grants revoke: no grant %q", fs.Arg(0))
	}
	if err != nil {
		return err
	}
	if was {
		fmt.Fprintf(m.Stdout, "grant %s was already revoked at %s\n", g.ID, g.RevokedAt.UTC().Format(time.RFC3339))
		return nil
	}
	if _, err := db.Audit().Append(ctx, broker.AuditEvent{Action: broker.AuditRevoke, Outcome: broker.OutcomeOK, Reason: reason,
		UserID: g.UserID, ClientID: g.ClientID, Resource: g.Resource, GrantID: g.ID}); err != nil {
		return fmt.Errorf("grant %s is revoked, but its audit record could not be written: %w", g.ID, err)
	}
	fmt.Fprintf(m.Stdout, "revoked grant %s (%s for %s)\n", g.ID, g.ClientID, g.Resource)
	return nil
}

// auditCmd verifies and exports the audit chain.
func (m *Main) auditCmd(ctx context.Context, args []string) error {
	var after uint64
	subs := map[string]subcommand{
		"verify": {"", "checks the hash chain; exits 1 at the first changed, removed or reordered record", 0, nil,
			func(ctx context.Context, db broker.Store, _ *flag.FlagSet) error {
				n, head, err := audit.Verify(ctx, db.Audit())
				if err != nil {
					return err
				}
				fmt.Fprintf(m.Stdout, "audit chain intact: %d records, head %s\n", n, head)
				return nil
			}},
		"export": {"[--after SEQ]", "writes the records as JSON lines to standard output (for a SIEM)", 0,
			func(fs *flag.FlagSet) {
				fs.Uint64Var(&after, "after", 0, "only records with a sequence number above this")
			},
			func(ctx context.Context, db broker.Store, _ *flag.FlagSet) error {
				_, err := audit.Export(ctx, db.Audit(), after, m.Stdout)
				return err
			}},
	}
	return m.runSubcommand(ctx, "audit", []string{"verify", "export"}, subs, args)
}
