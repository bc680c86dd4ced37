// The whole chain in a real browser and a real MCP client, run by
// chain_test.go (TestWholeChain) against a real Lanyard (with the real
// Vault), a real dovecot and examples/mail-mcp:
//
//   1. the user signs in to Lanyard in headless Chromium (npm playwright-core
//      driving /usr/bin/chromium) and links the IMAP account on the Linked
//      accounts page;
//   2. the official MCP TypeScript SDK client calls the mail MCP server,
//      meets 401, discovers Lanyard (RFC 9728, RFC 8414), registers (RFC
//      7591) and starts authorization code + PKCE; the authorization URL
//      opens in the same browser, where the user (already signed in, or
//      signing in now) ticks the IMAP account on the consent page and
//      approves; the script checks state and iss on its loopback callback
//      and finishes the token request;
//   3. the client calls search_messages (and read_message on the hit): the
//      server redeems the token at Lanyard, logs in to dovecot and answers;
//      the script checks the seeded message's subject and body;
//   4. the user opens the Agents page (/) and clicks Revoke for this agent;
//   5. the client calls search_messages again: the call must fail because
//      the server answered 401 with error="invalid_token" — the SDK then
//      tries to refresh (Lanyard refuses), drops its tokens and starts a new
//      authorization (UnauthorizedError).
//
// The run fails on any console error, uncaught page error, failed request or
// HTTP answer >= 400 in the browser. Every page is screenshotted into
// E2E_SCREENSHOT_DIR.
//
// On success it prints `RESULT {json}` and exits 0; on failure `FAIL
// <reason>` and exits 1. No password, key or token is ever printed.
//
// Environment:
//   LANYARD_URL                 Lanyard's base URL = issuer (http://127.0.0.1:PORT)
//   MCP_URL                     the mail MCP server (http://127.0.0.1:PORT/mcp)
//   E2E_USERNAME, E2E_PASSWORD  the Lanyard user
//   E2E_MAIL_CONNECTOR          the IMAP connector's name (default mail)
//   E2E_MAIL_DISPLAY            its display name
//   E2E_IMAP_USER, E2E_IMAP_PASSWORD  the mailbox's login
//   E2E_SEARCH_SUBJECT          what search_messages looks for in Subject
//   E2E_EXPECT_SUBJECT          the full subject of the seeded message
//   E2E_EXPECT_BODY             text in the seeded message's body
//   E2E_SCREENSHOT_DIR          where the screenshots go (required)
//   CHROMIUM_PATH               default /usr/bin/chromium
//   E2E_TIMEOUT_MS              bound on the whole run, default 150000
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';
import {
  MemoryProvider, STEP_TIMEOUT_MS, camera, failedAt, isLoopback, logResponses, need, openBrowser,
  recordProblems, script, short, signIn, startCallbackServer, withTimeout,
} from './lib.mjs';

const CLIENT_NAME = 'Lanyard chain test agent';

const { log, cleanups, run } = script('chain');

// The agent's provider, which also does what a real client does when the
// authorization server refuses its refresh token (invalid_grant): forget
// the tokens and sign in anew.
class ChainProvider extends MemoryProvider {
  invalidated = [];
  invalidateCredentials(scope) {
    log(`invalidateCredentials ${scope}`);
    this.invalidated.push(scope);
    if (scope === 'all' || scope === 'tokens') this.savedTokens = undefined;
    if (scope === 'all' || scope === 'client') this.savedClient = undefined;
    if (scope === 'all' || scope === 'verifier') this._verifier = undefined;
  }
}

async function main() {
  const base = need('LANYARD_URL').replace(/\/$/, '');
  const baseOrigin = new URL(base).origin;
  const mcpUrl = new URL(need('MCP_URL'));
  const username = need('E2E_USERNAME');
  const password = need('E2E_PASSWORD');
  const mailConnector = process.env.E2E_MAIL_CONNECTOR || 'mail';
  const mailDisplay = need('E2E_MAIL_DISPLAY');
  const imapUser = need('E2E_IMAP_USER');
  const imapPassword = need('E2E_IMAP_PASSWORD');
  const searchSubject = need('E2E_SEARCH_SUBJECT');
  const expectSubject = need('E2E_EXPECT_SUBJECT');
  const expectBody = need('E2E_EXPECT_BODY');
  const shotDir = need('E2E_SCREENSHOT_DIR');
  const secrets = [password, imapPassword];

  // Every request the MCP SDK makes: method, URL without query, status, and
  // for the MCP server's answers the WWW-Authenticate challenge.
  const sdkRequests = [];
  const loggingFetch = async (input, init) => {
    const url = new URL(input instanceof Request ? input.url : String(input));
    const method = init?.method ?? (input instanceof Request ? input.method : 'GET');
    const res = await fetch(input, { ...init, signal: init?.signal ?? AbortSignal.timeout(STEP_TIMEOUT_MS) });
    const entry = { method, url: `${url.origin}${url.pathname}`, status: res.status };
    if (res.status >= 400) entry.www_authenticate = res.headers.get('www-authenticate') ?? undefined;
    if (res.status >= 400 && url.origin === baseOrigin) {
      try {
        const body = await res.clone().json();
        entry.error = body.error;
      } catch {
        // not JSON
      }
    }
    sdkRequests.push(entry);
    log(`sdk ${method} ${entry.url} -> ${res.status}${entry.www_authenticate ? ` (${entry.www_authenticate})` : ''}`);
    return res;
  };

  // The browser, with the checks of accounts.mjs.
  const problems = [];
  const context = await openBrowser(cleanups);
  // No network in the sandbox, and Lanyard's pages must need none.
  await context.route(
    u => !isLoopback(u),
    async route => {
      problems.push(`the browser requested an external resource: ${short(route.request().url())}`);
      await route.fulfill({ status: 200, contentType: 'text/plain', body: '' });
    },
  );
  logResponses(context, log);
  const page = await context.newPage();
  recordProblems(context, page, problems);
  const { shot, screenshots, failure } = camera(page, shotDir, 'chain', log);
  const noSecretsOnPage = async where => {
    const html = await page.content();
    for (const s of secrets) {
      if (html.includes(s)) throw new Error(`${where}: the page contains a password in clear`);
    }
  };
  const onLanyard = (pathname, search) => u =>
    u.origin === baseOrigin && u.pathname === pathname && (search === undefined || u.search === search);
  const signInIfAsked = async name => {
    if ((await page.locator('input[name=username]').count()) === 0) return false;
    await shot(`login-${name}`);
    await signIn(page, baseOrigin, username, password);
    return true;
  };

  let step = 'start';
  const at = s => {
    step = s;
    log(`step: ${s}`);
  };
  const result = { ok: false };
  try {
    // 1. Sign in and link the IMAP account.
    at('signing in to Lanyard');
    await page.goto(`${base}/accounts`);
    await page.waitForSelector('input[name=username]');
    await signInIfAsked('accounts');
    if (new URL(page.url()).pathname !== '/accounts') await page.goto(`${base}/accounts`);
    await page.waitForSelector('h1:has-text("Linked accounts")');
    at('linking the IMAP account');
    await page.click(`a.link-${mailConnector}`);
    await page.waitForURL(onLanyard('/accounts/link'));
    await page.waitForSelector('input[name=password]');
    await page.fill('input[name=username]', imapUser);
    await page.fill('input[name=password]', imapPassword);
    await shot('link-imap');
    await page.click('button#save');
    await page.waitForURL(onLanyard('/accounts', '?done=linked'));
    const account = page.locator('li.account').filter({ has: page.locator('.account-head strong', { hasText: mailDisplay }) });
    if ((await account.count()) !== 1) throw new Error(`the IMAP account is listed ${await account.count()} times after linking, want once`);
    const connectionId = (await account.getAttribute('id')).replace(/^conn-/, '');
    const status = (await account.locator('.status').innerText()).trim();
    if (status !== 'Working') throw new Error(`the IMAP account's status is ${JSON.stringify(status)}, want "Working"`);
    await noSecretsOnPage('accounts page');
    await shot('accounts-linked');
    result.connection_id = connectionId;

    // 2. The agent: 401 → discovery → registration → authorization URL.
    at('first MCP request (expecting 401)');
    const callback = await startCallbackServer(cleanups);
    const provider = new ChainProvider({
      redirectUrl: callback.url,
      clientMetadata: {
        client_name: CLIENT_NAME,
        redirect_uris: [callback.url],
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        token_endpoint_auth_method: 'none',
      },
      log,
    });
    const first = new StreamableHTTPClientTransport(mcpUrl, { authProvider: provider, fetch: loggingFetch });
    const client1 = new Client({ name: 'lanyard-chain', version: '1.0.0' });
    try {
      await withTimeout(client1.connect(first), STEP_TIMEOUT_MS, 'first connect');
      throw new Error('the mail MCP server accepted a connection without a token');
    } catch (e) {
      if (!(e instanceof UnauthorizedError)) throw new Error(`first connect: expected UnauthorizedError, got ${e?.stack ?? e}`);
    }
    const firstMcp = sdkRequests.find(r => r.url === mcpUrl.href);
    if (firstMcp?.status !== 401) throw new Error(`the first MCP request got ${firstMcp?.status}, want 401`);
    result.first_challenge = firstMcp.www_authenticate;
    const authUrl = provider.authorizationUrl;
    if (!authUrl) throw new Error('the SDK did not start authorization');
    if (authUrl.origin !== baseOrigin) throw new Error(`authorization at ${authUrl.origin}, want Lanyard (${baseOrigin})`);
    const q = authUrl.searchParams;
    for (const [k, want] of [['response_type', 'code'], ['code_challenge_method', 'S256'], ['resource', mcpUrl.href], ['state', provider.state()]]) {
      if (q.get(k) !== want) throw new Error(`authorization request ${k}=${q.get(k)}, want ${want}`);
    }
    result.client_id = q.get('client_id');
    result.requested_scope = q.get('scope');

    // 3. Consent in the browser, choosing the IMAP account.
    at('opening the authorization URL');
    await page.goto(authUrl.href);
    await page.waitForSelector('button#approve, input[name=username]');
    result.signed_in_at_authorization = await signInIfAsked('authorize');
    at('on the consent page');
    await page.waitForSelector('button#approve');
    const consentText = await page.innerText('body');
    for (const want of [CLIENT_NAME, 'Mail MCP server', mcpUrl.href, 'mail.read']) {
      if (!consentText.includes(want)) throw new Error(`the consent page does not show ${JSON.stringify(want)}`);
    }
    const box = page.locator(`input[type=checkbox][name=connection][value="${connectionId}"]`);
    if ((await box.count()) !== 1) throw new Error(`the consent page has no checkbox for the IMAP account ${connectionId}`);
    const label = (await page.locator('label', { has: box }).innerText()).trim();
    if (!label.includes(imapUser)) throw new Error(`the IMAP account's checkbox is labelled ${JSON.stringify(label)}, without the account ${imapUser}`);
    if (await box.isChecked()) throw new Error('the IMAP account was ticked before the user ticked it');
    result.consent_account_label = label;
    await box.check();
    if (!(await box.isChecked())) throw new Error('the IMAP account checkbox did not stay ticked');
    await shot('consent');
    at('approving');
    await page.click('button#approve');
    const params = await withTimeout(callback.received, STEP_TIMEOUT_MS, 'redirect to the loopback callback');
    await page.waitForSelector('#done');
    if (params.error) throw new Error(`authorization response error=${params.error} ${params.error_description ?? ''}`);
    if (params.state !== provider.state()) throw new Error('authorization response state does not match');
    if (params.iss !== base) throw new Error(`authorization response iss=${params.iss}, want ${base} (RFC 9207)`);
    if (!params.code) throw new Error('authorization response has no code');
    at('token request');
    await withTimeout(first.finishAuth(params.code), STEP_TIMEOUT_MS, 'finishAuth (token request)');
    await client1.close().catch(() => {});
    result.token_scope = provider.savedTokens?.scope;
    result.refresh_token_issued = !!provider.savedTokens?.refresh_token;

    // 4. The tools, for real: the server redeems, dovecot answers.
    at('connecting with the access token');
    const transport = new StreamableHTTPClientTransport(mcpUrl, { authProvider: provider, fetch: loggingFetch });
    const client = new Client({ name: 'lanyard-chain', version: '1.0.0' });
    cleanups.push(() => client.close());
    await withTimeout(client.connect(transport), STEP_TIMEOUT_MS, 'connect with the access token');
    const { tools } = await withTimeout(client.listTools(), STEP_TIMEOUT_MS, 'tools/list');
    result.tools = tools.map(t => t.name).sort();
    at('calling search_messages');
    const search = await withTimeout(client.callTool({ name: 'search_messages', arguments: { subject: searchSubject, limit: 5 } }), STEP_TIMEOUT_MS, 'search_messages');
    if (search.isError) throw new Error(`search_messages failed: ${JSON.stringify(search.content)}`);
    const found = search.structuredContent ?? JSON.parse(search.content?.[0]?.text ?? 'null');
    result.search = found;
    const hit = found?.messages?.find(m => m.subject === expectSubject);
    if (!hit) throw new Error(`search_messages did not return the seeded message: ${JSON.stringify(found)}`);
    at('calling read_message');
    const read = await withTimeout(client.callTool({ name: 'read_message', arguments: { mailbox: hit.mailbox, uid: hit.uid } }), STEP_TIMEOUT_MS, 'read_message');
    if (read.isError) throw new Error(`read_message failed: ${JSON.stringify(read.content)}`);
    const msg = read.structuredContent ?? JSON.parse(read.content?.[0]?.text ?? 'null');
    if (msg?.subject !== expectSubject || !String(msg?.text).includes(expectBody)) {
      throw new Error(`read_message returned subject ${JSON.stringify(msg?.subject)} and a body without the seeded text`);
    }
    result.read = { subject: msg.subject, from: msg.from, body_has_marker: true };
    const beforeRevoke = sdkRequests.length;

    // 5. The user revokes the agent.
    at('opening the Agents page');
    await page.goto(`${base}/`);
    await page.waitForSelector('h1:has-text("Agents")');
    const row = page.locator('tr').filter({ hasText: result.client_id });
    if ((await row.count()) !== 1) throw new Error(`the Agents page lists the agent ${result.client_id} ${await row.count()} times, want once`);
    const rowText = (await row.innerText()).replace(/\s+/g, ' ');
    for (const want of [CLIENT_NAME, 'Mail MCP server', 'mail.read', imapUser]) {
      if (!rowText.includes(want)) throw new Error(`the agent's row does not show ${JSON.stringify(want)}: ${rowText}`);
    }
    await noSecretsOnPage('agents page');
    await shot('agents');
    at('revoking the agent');
    await Promise.all([
      page.waitForResponse(r => r.request().method() === 'POST' && new URL(r.url()).pathname === '/grants/revoke'),
      row.locator('button:has-text("Revoke")').click(),
    ]);
    await page.waitForURL(onLanyard('/'));
    await page.waitForSelector('h1:has-text("Agents")');
    result.agents_after_revoke = (await page.innerText('main').catch(() => page.innerText('body'))).replace(/\s+/g, ' ').slice(0, 300);
    if ((await page.locator('tr').filter({ hasText: result.client_id }).locator('button:has-text("Revoke")').count()) !== 0) {
      throw new Error('the agent still has a Revoke button after revoking');
    }
    await shot('agents-revoked');

    // 6. The next call fails: 401 from the MCP server, refresh refused.
    at('calling search_messages after the revocation');
    let after;
    try {
      const r = await withTimeout(client.callTool({ name: 'search_messages', arguments: { subject: searchSubject, limit: 5 } }), STEP_TIMEOUT_MS, 'search_messages after revoke');
      after = { resolved: true, isError: !!r.isError, content: r.content };
    } catch (e) {
      after = { rejected: true, name: e?.constructor?.name, unauthorized: e instanceof UnauthorizedError, message: String(e?.message ?? e).slice(0, 300) };
    }
    result.after_revoke = after;
    result.after_revoke_requests = sdkRequests.slice(beforeRevoke);
    result.reauthorization_started = provider.authorizationStarts > 1;
    result.invalidated = provider.invalidated;

    await page.waitForTimeout(300);
    if (problems.length > 0) throw new Error(`browser problems: ${problems.join('; ')}`);
    result.ok = true;
    result.screenshots = screenshots;
    return result;
  } catch (e) {
    throw await failedAt(step, e, page, failure, problems);
  }
}

run(main, 150_000, 'run');
