// A small MCP server protected by Lanyard, built only from the official MCP
// TypeScript SDK: the end-to-end test (e2e_test.go) starts it next to a real
// Lanyard and points real clients at it.
//
// It serves RFC 9728 protected-resource metadata naming Lanyard as its
// authorization server, answers 401 with a WWW-Authenticate resource_metadata
// hint when a request has no valid token, and checks bearer tokens with
// Lanyard's RFC 7662 introspection endpoint (found through RFC 8414
// discovery), authenticating as the MCP server registered in Lanyard's config.
// A token is accepted only when it is active and its audience is this
// server's own URI. One tool, `whoami`, returns what the token says.
//
// Environment:
//   LANYARD_ISSUER     Lanyard's issuer, e.g. http://127.0.0.1:8080
//   MCP_PORT           port to listen on (127.0.0.1)
//   E2E_MCP_CLIENT_ID  this server's id in Lanyard's `resources:` (introspection client id)
//   E2E_MCP_SECRET     its client secret
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { createMcpExpressApp } from '@modelcontextprotocol/sdk/server/express.js';
import { mcpAuthMetadataRouter, getOAuthProtectedResourceMetadataUrl } from '@modelcontextprotocol/sdk/server/auth/router.js';
import { requireBearerAuth } from '@modelcontextprotocol/sdk/server/auth/middleware/bearerAuth.js';
import { InvalidTokenError, ServerError } from '@modelcontextprotocol/sdk/server/auth/errors.js';

const SCOPES = ['mcp:tools'];
const FETCH_TIMEOUT_MS = 10_000;

function need(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`mcp-server: ${name} is not set`);
    process.exit(2);
  }
  return v;
}

const issuer = need('LANYARD_ISSUER').replace(/\/$/, '');
const port = Number(need('MCP_PORT'));
const clientId = need('E2E_MCP_CLIENT_ID');
const clientSecret = need('E2E_MCP_SECRET');
const mcpUrl = new URL(`http://127.0.0.1:${port}/mcp`);

// RFC 6749 §2.3.1: client_id and secret are form-urlencoded before Basic.
const formEncode = s => new URLSearchParams({ v: s }).toString().slice(2);
const basicAuth = 'Basic ' + Buffer.from(`${formEncode(clientId)}:${formEncode(clientSecret)}`).toString('base64');

// RFC 8414 discovery, retried for a bounded time while Lanyard starts.
async function discover() {
  const url = `${issuer}/.well-known/oauth-authorization-server`;
  const deadline = Date.now() + 20_000;
  let last;
  while (Date.now() < deadline) {
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) });
      if (res.ok) {
        const md = await res.json();
        if (md.issuer !== issuer) throw new Error(`metadata issuer is ${md.issuer}, want ${issuer}`);
        if (!md.introspection_endpoint) throw new Error('metadata has no introspection_endpoint');
        return md;
      }
      last = new Error(`GET ${url}: HTTP ${res.status} ${(await res.text()).slice(0, 300)}`);
      if (res.status === 404) break; // the server is up but has no metadata: no point retrying
    } catch (e) {
      last = e;
    }
    await new Promise(r => setTimeout(r, 200));
  }
  throw last;
}

function audiences(aud) {
  if (aud === undefined || aud === null) return [];
  return Array.isArray(aud) ? aud : [aud];
}

// The JWT's own exp, used only when introspection omits exp (RFC 7662 makes
// it optional); introspection has already vouched for the token.
function jwtExp(token) {
  try {
    const payload = JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString());
    return typeof payload.exp === 'number' ? payload.exp : undefined;
  } catch {
    return undefined;
  }
}

function makeVerifier(introspectionEndpoint) {
  return {
    async verifyAccessToken(token) {
      let res;
      try {
        res = await fetch(introspectionEndpoint, {
          method: 'POST',
          headers: { 'Content-Type': 'application/x-www-form-urlencoded', Authorization: basicAuth, Accept: 'application/json' },
          body: new URLSearchParams({ token }).toString(),
          signal: AbortSignal.timeout(FETCH_TIMEOUT_MS),
        });
      } catch (e) {
        console.error(`mcp-server: introspection request failed: ${e}`);
        throw new ServerError('introspection unavailable');
      }
      const text = await res.text();
      if (!res.ok) {
        console.error(`mcp-server: introspection HTTP ${res.status}: ${text.slice(0, 500)}`);
        throw new ServerError('introspection failed');
      }
      let data;
      try {
        data = JSON.parse(text);
      } catch {
        console.error(`mcp-server: introspection returned non-JSON: ${text.slice(0, 500)}`);
        throw new ServerError('introspection failed');
      }
      console.error(`mcp-server: introspection: ${JSON.stringify(data)}`);
      if (data.active !== true) throw new InvalidTokenError('token is not active');
      if (!audiences(data.aud).includes(mcpUrl.href)) {
        throw new InvalidTokenError('token was not issued for this MCP server');
      }
      let expiresAt = data.exp;
      if (typeof expiresAt !== 'number') {
        console.error('mcp-server: introspection response has no exp; using the JWT exp claim');
        expiresAt = jwtExp(token);
      }
      return {
        token,
        clientId: data.client_id,
        scopes: typeof data.scope === 'string' ? data.scope.split(' ').filter(Boolean) : [],
        expiresAt,
        resource: mcpUrl,
        extra: { sub: data.sub, username: data.username, aud: data.aud, iss: data.iss },
      };
    },
  };
}

function buildServer() {
  const server = new McpServer({ name: 'lanyard-e2e-mcp', version: '1.0.0' });
  server.registerTool(
    'whoami',
    { description: 'Returns the identity carried by the access token this call was made with.' },
    async extra => {
      const auth = extra.authInfo ?? {};
      const who = {
        sub: auth.extra?.sub,
        username: auth.extra?.username,
        client_id: auth.clientId,
        scopes: auth.scopes,
        aud: auth.extra?.aud,
        iss: auth.extra?.iss,
      };
      return { content: [{ type: 'text', text: JSON.stringify(who) }], structuredContent: who };
    },
  );
  return server;
}

const metadata = await discover().catch(e => {
  console.error(`mcp-server: Lanyard discovery failed: ${e?.message ?? e}`);
  process.exit(1);
});

const app = createMcpExpressApp({ host: '127.0.0.1' });
// RFC 9728 metadata at /.well-known/oauth-protected-resource/mcp (and a copy
// of Lanyard's RFC 8414 metadata, which this SDK helper always adds).
app.use(
  mcpAuthMetadataRouter({
    oauthMetadata: metadata,
    resourceServerUrl: mcpUrl,
    scopesSupported: SCOPES,
    resourceName: 'E2E MCP server',
  }),
);
const auth = requireBearerAuth({
  verifier: makeVerifier(metadata.introspection_endpoint),
  requiredScopes: SCOPES,
  resourceMetadataUrl: getOAuthProtectedResourceMetadataUrl(mcpUrl),
  expectedResource: mcpUrl,
});

// Stateless Streamable HTTP: one server and transport per request.
app.post('/mcp', auth, async (req, res) => {
  const server = buildServer();
  const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
  res.on('close', () => {
    transport.close();
    server.close();
  });
  try {
    await server.connect(transport);
    await transport.handleRequest(req, res, req.body);
  } catch (e) {
    console.error('mcp-server: handling request:', e);
    if (!res.headersSent) {
      res.status(500).json({ jsonrpc: '2.0', error: { code: -32603, message: 'Internal server error' }, id: null });
    }
  }
});
const notAllowed = (req, res) =>
  res.status(405).set('Allow', 'POST').json({ jsonrpc: '2.0', error: { code: -32000, message: 'Method not allowed.' }, id: null });
app.get('/mcp', auth, notAllowed);
app.delete('/mcp', auth, notAllowed);

const httpServer = app.listen(port, '127.0.0.1', err => {
  if (err) {
    console.error(`mcp-server: listen: ${err}`);
    process.exit(1);
  }
  console.error(`mcp-server: listening on ${mcpUrl.href} (authorization server ${issuer})`);
});
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    httpServer.close();
    process.exit(0);
  });
}
