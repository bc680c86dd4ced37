package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"sync"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/lanyardhq/lanyard/mcpauth"
)

// authGate turns Lanyard's refusals of a redemption into the HTTP answers
// an MCP client acts on.
//
// The bearer middleware checks the agent's token locally (signature,
// issuer, audience, expiry against Lanyard's JWKS): it cannot know that the
// user revoked the grant. Lanyard knows, and says so when the server redeems
// the token for a tool call. mcpauth then remembers the grant as revoked,
// so the middleware refuses its tokens on later requests; the gate makes
// the very request that learned it answer the same way. So:
//
//   - invalid_token (revoked grant, expired or unknown token): that request
//     gets 401 with an RFC 6750 challenge (error="invalid_token",
//     resource_metadata=this server's RFC 9728 metadata) instead of the tool
//     result, and so does every later one with a token of that grant — a
//     spec-following MCP client then tries to refresh, is refused by
//     Lanyard, and asks the user to sign in again;
//   - insufficient_scope: 403 with a challenge naming the scope the tool
//     needs (the MCP step-up flow);
//   - every other refusal (an account not in the grant, a tool that policy
//     denies, an account that needs re-linking, Lanyard unavailable) stays
//     an MCP tool error: signing in again would not help.
//
// A tool handler runs before the response of its request is written (the
// streamable transport writes the JSON or SSE response once the result
// exists), so the gate can still choose the status: it marks each request
// with a random id in a header that only the gate sets, the handler files
// its verdict under that id, and the wrapped ResponseWriter consults it
// when the response starts.
type authGate struct {
	metadataURL string

	mu      sync.Mutex
	pending map[string]verdict // request id → answer to send instead
}

type verdict struct {
	status    int
	challenge string
}

// gateHeader carries the gate's request id to the tool handlers (the SDK
// hands them the request's headers). The gate overwrites whatever a client
// sends in it.
const gateHeader = "X-Mail-Mcp-Gate"

func newAuthGate(metadataURL string) *authGate {
	return &authGate{metadataURL: metadataURL, pending: map[string]verdict{}}
}

// refused records Lanyard's refusal for the request and returns the tool
// error the MCP layer sends (used only when the HTTP answer stays 200).
func (g *authGate) refused(req *mcp.CallToolRequest, re *mcpauth.RedeemError) error {
	var v verdict
	if ch := re.Challenge(g.metadataURL); ch != "" {
		v = verdict{status: re.ResourceStatus(), challenge: ch}
	}
	if v.status != 0 && req != nil && req.Extra != nil && req.Extra.Header != nil {
		if id := req.Extra.Header.Get(gateHeader); id != "" {
			g.mu.Lock()
			if _, ok := g.pending[id]; ok {
				g.pending[id] = v
			}
			g.mu.Unlock()
		}
	}
	return errors.New(refusal(re))
}

// Wrap is the gate around the MCP handler, inside the bearer middleware.
func (g *authGate) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b [16]byte
		_, _ = rand.Read(b[:])
		id := hex.EncodeToString(b[:])
		r.Header.Set(gateHeader, id)
		g.mu.Lock()
		g.pending[id] = verdict{}
		g.mu.Unlock()
		defer func() {
			g.mu.Lock()
			delete(g.pending, id)
			g.mu.Unlock()
		}()
		next.ServeHTTP(&gateWriter{ResponseWriter: w, gate: g, id: id}, r)
	})
}

func (g *authGate) take(id string) verdict {
	g.mu.Lock()
	defer g.mu.Unlock()
	v := g.pending[id]
	g.pending[id] = verdict{}
	return v
}

func writeChallenge(w http.ResponseWriter, status int, challenge string) {
	h := w.Header()
	for k := range h {
		delete(h, k)
	}
	if challenge != "" {
		h.Set("WWW-Authenticate", challenge)
	}
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Type", "application/json")
	w.WriteHeader(status)
	code := "invalid_token"
	if status == http.StatusForbidden {
		code = "insufficient_scope"
	}
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code})
}

// gateWriter decides the status when the response starts: the handler's,
// or the gate's verdict for this request.
type gateWriter struct {
	http.ResponseWriter
	gate     *authGate
	id       string
	started  bool
	suppress bool
}

func (w *gateWriter) start(status int) {
	if w.started {
		return
	}
	w.started = true
	if v := w.gate.take(w.id); v.status != 0 && status < 300 {
		w.suppress = true
		writeChallenge(w.ResponseWriter, v.status, v.challenge)
		return
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *gateWriter) WriteHeader(status int) {
	if status >= 100 && status < 200 {
		w.ResponseWriter.WriteHeader(status) // informational: not the response
		return
	}
	w.start(status)
}

func (w *gateWriter) Write(b []byte) (int, error) {
	w.start(http.StatusOK)
	if w.suppress {
		return len(b), nil
	}
	return w.ResponseWriter.Write(b)
}

func (w *gateWriter) Flush() {
	w.start(http.StatusOK)
	if w.suppress {
		return
	}
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the real writer.
func (w *gateWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
