// Command mail-mcp is an example MCP server that reads the user's mailbox
// over IMAP, protected by Lanyard.
//
// It is built on the official Go MCP SDK (streamable HTTP) and
// github.com/lanyardhq/lanyard/mcpauth:
//
//   - it serves its RFC 9728 protected-resource metadata, naming Lanyard as
//     its authorization server, and answers requests without a valid
//     Lanyard access token for it with 401 and a WWW-Authenticate challenge
//     pointing there, so a spec-following MCP client finds Lanyard, signs
//     the user in and comes back with a token;
//   - for each tool call it redeems the agent's token at Lanyard for the
//     user's linked IMAP account (connector --connector, by default "mail"),
//     for that tool: Lanyard checks the grant, the account the user chose
//     for this agent, and its tool policy, and audits the redemption;
//   - it logs in to the mail server with what it got (host, port and TLS as
//     the credential says) and answers list_mailboxes, search_messages and
//     read_message. The host may have been typed in by the user, so only
//     public addresses are dialled (loopback too with
//     --allow-loopback-imap, for development), and the agent learns no more
//     of a failure than "mail server unreachable".
//
// By default it redeems at every tool call, so Lanyard decides and audits
// each one and sees a revocation at once; --max-credential-ttl lets mcpauth
// reuse a credential for a while (never past its expiry). It never logs a
// credential. When Lanyard says the grant was revoked, the request and
// every later one with that grant's tokens get 401.
//
// Usage:
//
//	MAIL_MCP_SECRET=... mail-mcp --issuer http://127.0.0.1:8080 \
//	    --resource http://127.0.0.1:8090/mcp --client-id mail-mcp
//
// See README.md for running it against `lanyard dev`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/lanyardhq/lanyard/mcpauth"
	"github.com/lanyardhq/lanyard/mcpauth/gosdk"
)

const version = "0.1.0"

// secretEnv is the environment variable with this server's client secret at
// Lanyard (never a flag: flags show up in process listings).
const secretEnv = "MAIL_MCP_SECRET"

type options struct {
	addr, issuer, resource, resourceName string
	clientID, connector                  string
	scopes                               []string
	imapCA                               string
	allowLoopbackIMAP                    bool
	imapTimeout, maxCredentialTTL        time.Duration
	secret                               string
}

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	opts, err := parseFlags(os.Args[1:], os.Getenv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mail-mcp:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, opts, log); err != nil {
		fmt.Fprintln(os.Stderr, "mail-mcp:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string, getenv func(string) string, out io.Writer) (options, error) {
	fs := flag.NewFlagSet("mail-mcp", flag.ContinueOnError)
	fs.SetOutput(out)
	var o options
	var scopes string
	fs.StringVar(&o.addr, "addr", "127.0.0.1:8090", "address to listen on")
	fs.StringVar(&o.issuer, "issuer", getenv("LANYARD_ISSUER"), "Lanyard's issuer URL (default $LANYARD_ISSUER)")
	fs.StringVar(&o.resource, "resource", "", "this server's canonical MCP URL, as registered at Lanyard (default http://ADDR/mcp)")
	fs.StringVar(&o.resourceName, "resource-name", "Mail", "name shown in the protected-resource metadata")
	fs.StringVar(&o.clientID, "client-id", "mail-mcp", "this server's id at Lanyard (resources[].id)")
	fs.StringVar(&o.connector, "connector", "mail", "the Lanyard connector to redeem (a basic IMAP connector)")
	fs.StringVar(&scopes, "scopes", "mail.read", "comma-separated scopes every request's token must carry")
	fs.StringVar(&o.imapCA, "imap-ca", "", "PEM file of CA certificates for the mail server's TLS (default: the system's)")
	fs.BoolVar(&o.allowLoopbackIMAP, "allow-loopback-imap", false, "let credentials name a mail server on a loopback address (development and tests only); private, link-local and other non-public addresses are always refused")
	fs.DurationVar(&o.imapTimeout, "imap-timeout", 20*time.Second, "bound on one IMAP session (connect, login, work, logout)")
	fs.DurationVar(&o.maxCredentialTTL, "max-credential-ttl", 0, "reuse a redeemed credential for up to this long (never past its expiry); 0: redeem at every tool call, so that Lanyard decides and audits each one and a revocation is seen at once")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: %s=SECRET mail-mcp --issuer URL [flags]\n\nAn MCP server that reads the user's mail over IMAP, protected by Lanyard.\n\nFlags:\n", secretEnv)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	for _, s := range strings.Split(scopes, ",") {
		if s = strings.TrimSpace(s); s != "" {
			o.scopes = append(o.scopes, s)
		}
	}
	o.secret = getenv(secretEnv)
	var probs []string
	if o.issuer == "" {
		probs = append(probs, "--issuer (or LANYARD_ISSUER) is required")
	}
	if o.resource == "" {
		o.resource = "http://" + o.addr + "/mcp"
	}
	if u, err := url.Parse(o.resource); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		probs = append(probs, "--resource must be an absolute http(s) URL without query or fragment")
	}
	if o.secret == "" {
		probs = append(probs, secretEnv+" is not set (this server's client secret at Lanyard)")
	}
	if o.clientID == "" || o.connector == "" {
		probs = append(probs, "--client-id and --connector must not be empty")
	}
	if o.imapTimeout <= 0 || o.maxCredentialTTL < 0 {
		probs = append(probs, "--imap-timeout must be positive and --max-credential-ttl not negative")
	}
	if len(probs) > 0 {
		return options{}, errors.New(strings.Join(probs, "; "))
	}
	return o, nil
}

// newHandler builds the whole HTTP handler: metadata, the bearer check,
// the revocation gate and the MCP server.
func newHandler(ctx context.Context, o options, log *slog.Logger, httpClient *http.Client) (http.Handler, error) {
	res, err := url.Parse(o.resource)
	if err != nil {
		return nil, err
	}
	ttl := o.maxCredentialTTL
	if ttl == 0 {
		ttl = mcpauth.NoCredentialCache
	}
	c, err := mcpauth.New(ctx, mcpauth.Config{
		Issuer:           o.issuer,
		Resource:         o.resource,
		ResourceName:     o.resourceName,
		Scopes:           o.scopes,
		ClientID:         o.clientID,
		ClientSecret:     o.secret,
		HTTPClient:       httpClient,
		MaxCredentialTTL: ttl,
	})
	if err != nil {
		return nil, fmt.Errorf("lanyard client: %w", err)
	}
	dialer := imapDialer{Timeout: o.imapTimeout, AllowLoopback: o.allowLoopbackIMAP}
	if o.imapCA != "" {
		if dialer.Roots, err = loadRoots(o.imapCA); err != nil {
			return nil, fmt.Errorf("--imap-ca: %w", err)
		}
	}
	metadataURL := (&url.URL{Scheme: res.Scheme, Host: res.Host, Path: c.MetadataPath()}).String()
	gate := newAuthGate(metadataURL)
	srv := newMCPServer(&mailServer{auth: c, connector: o.connector, imap: dialer, gate: gate, log: log}, version)
	mcpHandler := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, &mcp.StreamableHTTPOptions{
		SessionTimeout: 30 * time.Minute,
	})

	mux := http.NewServeMux()
	mux.Handle("GET "+c.MetadataPath(), c.MetadataHandler())
	path := res.Path
	if path == "" {
		path = "/"
	}
	mux.Handle(path, gosdk.RequireBearer(c, o.scopes...)(gate.Wrap(mcpHandler)))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	return mux, nil
}

func run(ctx context.Context, o options, log *slog.Logger) error {
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	h, err := newHandler(startCtx, o, log, &http.Client{Timeout: 15 * time.Second})
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", o.addr)
	if err != nil {
		return err
	}
	hs := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	log.Info("mail-mcp listening", "addr", l.Addr().String(), "resource", o.resource, "issuer", o.issuer, "connector", o.connector)
	fmt.Printf("mail-mcp: serving %s\n", o.resource)
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	return hs.Shutdown(shutdown)
}
