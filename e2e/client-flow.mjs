// One complete MCP authorization flow against Lanyard with the official MCP
// TypeScript SDK client, the way a real agent does it:
//
//   1. the SDK client calls the MCP server and gets 401;
//   2. the SDK discovers the protected-resource metadata (RFC 9728) and
//      Lanyard's metadata (RFC 8414), then identifies itself either with a
//      Client ID Metadata Document (mode `cimd`: the client_id is the https
//      URL of a document this script serves) or by RFC 7591 dynamic
//      registration (mode `dcr`);
//   3. it starts authorization code + PKCE; the authorization URL is opened
//      in headless Chromium (playwright-core driving Debian's chromium), which
//      signs in on Lanyard's login page, approves on the consent page and is
//      redirected to this script's loopback callback;
//   4. the script checks state and the RFC 9207 `iss`, hands the code to
//      transport.finishAuth, reconnects and calls the `whoami` tool.
//
// On success it prints one JSON line starting with `RESULT ` and exits 0; on
// any failure it prints `FAIL <reason>` and exits 1. Tokens are never printed
// (only the decoded access-token header and claims).
//
// Usage: node client-flow.mjs cimd|dcr [deny]
//   With `deny` the browser clicks Deny instead, and the flow succeeds when
//   the client receives error=access_denied with its state and iss.
// Environment:
//   MCP_URL             the MCP server's URL (http://127.0.0.1:PORT/mcp)
//   LANYARD_ISSUER      Lanyard's issuer (expected `iss` in the authorization response)
//   E2E_USERNAME, E2E_PASSWORD  the Lanyard user to sign in as
//   E2E_TLS_CERT, E2E_TLS_KEY   PEM files for the https server of the CIMD document (cimd mode)
//   E2E_SCREENSHOT_DIR  where to save screenshots of the login and consent pages (optional)
//   CHROMIUM_PATH       default /usr/bin/chromium
//   E2E_TIMEOUT_MS      bound on the whole flow, default 120000
import https from 'node:https';
import fs from 'node:fs';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';
import {
  MemoryProvider, STEP_TIMEOUT_MS, camera, listen, logResponses, need, openBrowser, pageText, script,
  signIn, startCallbackServer, withTimeout,
} from './lib.mjs';

const { log, cleanups, run } = script('client-flow');

// Serves the Client ID Metadata Document over https on loopback. Lanyard in
// dev mode may fetch from loopback; it trusts the test's CA (SSL_CERT_FILE).
async function startCimdServer(metadataFor) {
  const fetches = [];
  const server = https.createServer(
    { cert: fs.readFileSync(need('E2E_TLS_CERT')), key: fs.readFileSync(need('E2E_TLS_KEY')) },
    (req, res) => {
      fetches.push(`${req.method} ${req.url} accept=${req.headers.accept ?? ''}`);
      if (req.method !== 'GET' || req.url !== '/oauth/client-metadata.json') {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'max-age=60' });
      res.end(JSON.stringify(metadataFor(`https://127.0.0.1:${port}/oauth/client-metadata.json`)));
    },
  );
  const port = await listen(server);
  cleanups.push(() => new Promise(r => server.close(r)));
  return { url: `https://127.0.0.1:${port}/oauth/client-metadata.json`, fetches };
}

// fetch that logs every request the SDK makes (method, URL without query, status).
const loggingFetch = async (input, init) => {
  const url = new URL(input instanceof Request ? input.url : String(input));
  const method = init?.method ?? (input instanceof Request ? input.method : 'GET');
  const res = await fetch(input, { ...init, signal: init?.signal ?? AbortSignal.timeout(STEP_TIMEOUT_MS) });
  log(`${method} ${url.origin}${url.pathname} -> ${res.status}`);
  return res;
};

function decodeJwt(token) {
  const parts = String(token).split('.');
  if (parts.length !== 3) return { opaque: true };
  const dec = p => JSON.parse(Buffer.from(p, 'base64url').toString());
  return { header: dec(parts[0]), claims: dec(parts[1]) };
}

// Drives Lanyard's login and consent pages; returns the callback parameters.
async function authorizeInBrowser({ authorizationUrl, callback, username, password, mode, expect, deny }) {
  const context = await openBrowser(cleanups);
  logResponses(context, log);
  const page = await context.newPage();
  const { shot, screenshots, failure } = camera(page, process.env.E2E_SCREENSHOT_DIR, `client-flow-${mode}`, log);
  let step = 'opening the authorization URL';
  try {
    await page.goto(authorizationUrl.href);
    step = 'waiting for the login form';
    await page.waitForSelector('input[name=username]');
    await shot('login');
    step = 'submitting the login form';
    await signIn(page, new URL(authorizationUrl).origin, username, password);
    step = 'waiting for the consent page';
    await page.waitForSelector('button#approve');
    await shot('consent');
    const consentText = await page.innerText('body');
    for (const want of expect.consentShows) {
      if (!consentText.includes(want)) {
        throw new Error(`consent page does not show ${JSON.stringify(want)}`);
      }
    }
    step = `${deny ? 'denying' : 'approving'} and waiting for the redirect to the loopback callback`;
    await page.click(deny ? 'button#deny' : 'button#approve');
    const params = await withTimeout(callback.received, STEP_TIMEOUT_MS, 'redirect to the loopback callback');
    await page.waitForSelector('#done').catch(() => {});
    return { params, screenshots };
  } catch (e) {
    const summary = await pageText(page, 600);
    await failure();
    throw new Error(`browser: ${step}: ${e.message.split('\n')[0]} (page ${page.url()} says: ${summary})`);
  }
}

async function main() {
  const mode = process.argv[2];
  const deny = process.argv[3] === 'deny';
  if ((mode !== 'cimd' && mode !== 'dcr') || (process.argv[3] && !deny)) {
    throw new Error('usage: node client-flow.mjs cimd|dcr [deny]');
  }
  const mcpUrl = new URL(need('MCP_URL'));
  const issuer = need('LANYARD_ISSUER').replace(/\/$/, '');
  const username = need('E2E_USERNAME');
  const password = need('E2E_PASSWORD');

  const callback = await startCallbackServer(cleanups);
  const clientName = `Lanyard E2E client (${mode}${deny ? ', denied' : ''})`;
  const clientMetadata = {
    client_name: clientName,
    redirect_uris: [callback.url],
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'none',
  };
  let cimd;
  if (mode === 'cimd') {
    cimd = await startCimdServer(url => ({ client_id: url, ...clientMetadata }));
  }
  const provider = new MemoryProvider({ redirectUrl: callback.url, clientMetadata, clientMetadataUrl: cimd?.url, log });

  // 1. First contact: 401 → discovery → registration or CIMD → authorization URL.
  const first = new StreamableHTTPClientTransport(mcpUrl, { authProvider: provider, fetch: loggingFetch });
  const client1 = new Client({ name: 'lanyard-e2e', version: '1.0.0' });
  try {
    await withTimeout(client1.connect(first), STEP_TIMEOUT_MS, 'first connect');
    throw new Error('the MCP server accepted a connection without a token');
  } catch (e) {
    if (!(e instanceof UnauthorizedError)) throw new Error(`first connect: expected UnauthorizedError, got ${e?.stack ?? e}`);
  }
  const authUrl = provider.authorizationUrl;
  if (!authUrl) throw new Error('the SDK did not start authorization');
  const q = authUrl.searchParams;
  const clientId = q.get('client_id');
  if (mode === 'cimd' && clientId !== cimd.url) {
    throw new Error(`cimd: authorization request has client_id ${clientId}, want the metadata document URL ${cimd.url} (did discovery advertise client_id_metadata_document_supported?)`);
  }
  if (mode === 'dcr' && (!clientId || clientId.startsWith('http'))) {
    throw new Error(`dcr: authorization request has client_id ${clientId}, want one assigned by registration`);
  }
  for (const [k, want] of [['response_type', 'code'], ['code_challenge_method', 'S256'], ['resource', mcpUrl.href], ['state', provider.state()]]) {
    if (q.get(k) !== want) throw new Error(`authorization request ${k}=${q.get(k)}, want ${want}`);
  }

  // 2. The user signs in and approves in the browser.
  const { params, screenshots } = await authorizeInBrowser({
    authorizationUrl: authUrl,
    callback,
    username,
    password,
    mode: deny ? `${mode}-deny` : mode,
    expect: { consentShows: [clientName, 'E2E MCP server', new URL(callback.url).host] },
    deny,
  });
  if (!deny && params.error) {
    throw new Error(`authorization response error=${params.error} error_description=${params.error_description ?? ''}`);
  }
  if (params.state !== provider.state()) throw new Error(`authorization response state=${params.state}, want ${provider.state()}`);
  if (params.iss !== issuer) throw new Error(`authorization response iss=${params.iss}, want ${issuer} (RFC 9207)`);
  if (deny) {
    if (params.error !== 'access_denied' || params.code) {
      throw new Error(`after Deny: error=${params.error} code present=${!!params.code}, want error=access_denied and no code`);
    }
    return { ok: true, mode, denied: true, issuer, client_id: clientId, error: params.error, screenshots };
  }
  if (!params.code) throw new Error(`authorization response has no code: ${JSON.stringify(Object.keys(params))}`);

  // 3. Code → tokens (PKCE verifier, resource), then the tool call.
  await withTimeout(first.finishAuth(params.code), STEP_TIMEOUT_MS, 'finishAuth (token request)');
  await client1.close().catch(() => {});
  const transport = new StreamableHTTPClientTransport(mcpUrl, { authProvider: provider, fetch: loggingFetch });
  const client = new Client({ name: 'lanyard-e2e', version: '1.0.0' });
  cleanups.push(() => client.close());
  await withTimeout(client.connect(transport), STEP_TIMEOUT_MS, 'connect with the access token');
  const result = await withTimeout(client.callTool({ name: 'whoami', arguments: {} }), STEP_TIMEOUT_MS, 'callTool whoami');
  if (result.isError) throw new Error(`whoami returned an error: ${JSON.stringify(result.content)}`);
  const who = result.structuredContent ?? JSON.parse(result.content?.[0]?.text ?? 'null');

  const token = decodeJwt(provider.savedTokens.access_token);
  return {
    ok: true,
    mode,
    issuer,
    client_id: clientId,
    registered_client_id: provider.savedClient?.client_id,
    cimd_fetches: cimd?.fetches,
    token_scope: provider.savedTokens.scope,
    refresh_token_issued: !!provider.savedTokens.refresh_token,
    access_token: token,
    whoami: who,
    screenshots,
  };
}

run(main, 120_000, 'flow');
