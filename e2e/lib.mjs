// What the browser scripts (client-flow.mjs, accounts.mjs, chain.mjs) share:
// running a script to one RESULT or FAIL line, the MCP SDK's OAuth client
// provider and loopback callback,
// headless Chromium, recording what goes wrong in the browser, screenshots
// and signing in to Lanyard.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { chromium } from 'playwright-core';

export const STEP_TIMEOUT_MS = 20_000;

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];

// script returns what a script named name needs to run: log (to stderr),
// cleanups (run last to first when it ends) and run(main, defaultMs, what),
// which bounds main by E2E_TIMEOUT_MS (default defaultMs) and then prints
// `RESULT {json}` with what main returned and exits 0, or `FAIL <reason>`
// and exits 1.
export function script(name) {
  const log = (...a) => console.error(`${name}:`, ...a);
  const cleanups = [];
  let finished = false;
  async function finish(code, line) {
    if (finished) return;
    finished = true;
    for (const c of cleanups.reverse()) {
      try {
        await Promise.race([c(), new Promise(r => setTimeout(r, 5000))]);
      } catch {
        // best effort
      }
    }
    console.log(line);
    process.exit(code);
  }
  const fail = reason => finish(1, `FAIL ${reason}`);
  function run(main, defaultMs, what) {
    const overall = Number(process.env.E2E_TIMEOUT_MS || defaultMs);
    setTimeout(() => fail(`the whole ${what} took longer than ${overall} ms`), overall);
    main().then(
      r => finish(0, `RESULT ${JSON.stringify(r)}`),
      e => fail((e?.message ?? String(e)).replace(/\s*\n\s*/g, ' ')),
    );
  }
  return { log, cleanups, run };
}

export function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
}

export function withTimeout(promise, ms, what) {
  let t;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      t = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(t));
}

export const isLoopback = u => ['127.0.0.1', 'localhost', '[::1]'].includes(u.hostname);

// short is a URL without its query (codes, states), for logs and reports.
export const short = u => {
  try {
    const x = new URL(u);
    return `${x.origin}${x.pathname}`;
  } catch {
    return String(u).slice(0, 200);
  }
};

// listen starts server on a free loopback port and returns the port.
export function listen(server) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server.address().port));
  });
}

// startCallbackServer starts the loopback redirect target (RFC 8252 §7.3),
// closed among the cleanups; received resolves with the query parameters
// of the first request to /callback.
export async function startCallbackServer(cleanups) {
  let deliver;
  const received = new Promise(r => (deliver = r));
  const server = http.createServer((req, res) => {
    const u = new URL(req.url, 'http://127.0.0.1');
    if (u.pathname !== '/callback') {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    res.end('<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Signed in</title><link rel="icon" href="data:,"></head><body><p id="done">You can close this window.</p></body></html>');
    deliver(Object.fromEntries(u.searchParams));
  });
  const port = await listen(server);
  cleanups.push(() => new Promise(r => server.close(r)));
  return { url: `http://127.0.0.1:${port}/callback`, received };
}

// MemoryProvider is an in-memory OAuthClientProvider of the MCP SDK for one
// MCP server, as a real agent keeps one per server. The authorization URL
// is only recorded (and counted): the script drives the browser once
// connect() has failed with UnauthorizedError, as a real client would open
// the system browser.
export class MemoryProvider {
  constructor({ redirectUrl, clientMetadata, clientMetadataUrl, log }) {
    this._redirectUrl = redirectUrl;
    this._clientMetadata = clientMetadata;
    if (clientMetadataUrl) this.clientMetadataUrl = clientMetadataUrl;
    this._log = log;
    this._state = crypto.randomBytes(16).toString('base64url');
    this.authorizationUrl = undefined;
    this.authorizationStarts = 0;
    this.savedClient = undefined;
    this.savedTokens = undefined;
    this._verifier = undefined;
  }
  get redirectUrl() {
    return this._redirectUrl;
  }
  get clientMetadata() {
    return this._clientMetadata;
  }
  state() {
    return this._state;
  }
  clientInformation() {
    return this.savedClient;
  }
  saveClientInformation(info) {
    this._log(`saveClientInformation client_id=${info.client_id}`);
    this.savedClient = info;
  }
  tokens() {
    return this.savedTokens;
  }
  saveTokens(tokens) {
    this._log(`saveTokens token_type=${tokens.token_type} scope=${tokens.scope ?? ''} expires_in=${tokens.expires_in ?? ''} refresh=${!!tokens.refresh_token}`);
    this.savedTokens = tokens;
  }
  redirectToAuthorization(url) {
    this._log(`redirectToAuthorization ${url.origin}${url.pathname}`);
    this.authorizationUrl = url;
    this.authorizationStarts += 1;
  }
  saveCodeVerifier(v) {
    this._verifier = v;
  }
  codeVerifier() {
    if (!this._verifier) throw new Error('no code verifier saved');
    return this._verifier;
  }
}

// openBrowser launches headless Chromium (CHROMIUM_PATH, default
// /usr/bin/chromium), closed among the cleanups, and returns a new context
// in it with the step timeout for every wait and navigation.
export async function openBrowser(cleanups) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: STEP_TIMEOUT_MS,
  });
  cleanups.push(() => browser.close());
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  context.setDefaultNavigationTimeout(STEP_TIMEOUT_MS);
  return context;
}

// recordProblems adds to problems every failed request and HTTP answer >=
// 400 in context and every console error, uncaught error and crash of page,
// except the answers allowResponse(response) and the console messages
// allowConsole(message) accept.
export function recordProblems(context, page, problems, { allowResponse = () => false, allowConsole = () => false } = {}) {
  context.on('requestfailed', r => {
    problems.push(`request failed: ${r.method()} ${short(r.url())}: ${r.failure()?.errorText ?? 'unknown'}`);
  });
  context.on('response', r => {
    if (r.status() >= 400 && !allowResponse(r)) problems.push(`HTTP ${r.status()} for ${r.request().method()} ${short(r.url())}`);
  });
  page.on('console', m => {
    if (m.type() !== 'error' || allowConsole(m)) return;
    const where = m.location()?.url ? ` (at ${short(m.location().url)})` : '';
    problems.push(`console error: ${m.text().slice(0, 300)}${where}`);
  });
  page.on('pageerror', e => problems.push(`page error: ${String(e?.message ?? e).slice(0, 300)}`));
  page.on('crash', () => problems.push('the page crashed'));
}

// logResponses logs every answer the browser gets.
export function logResponses(context, log) {
  context.on('response', r => log(`browser ${r.request().method()} ${short(r.url())} -> ${r.status()}`));
}

// camera takes full-page screenshots of page into dir (none if dir is
// empty), named prefix-NN-name.png in order; shot(name) returns the file,
// screenshots lists them all and failure() saves prefix-failure.png, best
// effort.
export function camera(page, dir, prefix, log) {
  if (dir) fs.mkdirSync(dir, { recursive: true });
  const screenshots = [];
  const save = async (file, timeout) => {
    await page.screenshot({ path: file, fullPage: true, timeout });
    log(`screenshot ${file}`);
    return file;
  };
  return {
    screenshots,
    async shot(name) {
      if (!dir) return undefined;
      const file = await save(path.join(dir, `${prefix}-${String(screenshots.length + 1).padStart(2, '0')}-${name}.png`), 10_000);
      screenshots.push(file);
      return file;
    },
    async failure() {
      if (!dir) return;
      await save(path.join(dir, `${prefix}-failure.png`), 5000).catch(() => {});
    },
  };
}

// pageText is the visible text of page, white space folded, cut to n
// characters; '' if it cannot be read.
export async function pageText(page, n) {
  try {
    return (await page.innerText('body', { timeout: 2000 })).replace(/\s+/g, ' ').slice(0, n);
  } catch {
    return '';
  }
}

// failedAt saves a failure screenshot (failure of camera) and returns the
// error of a run whose step failed with e: the first line of e's message,
// the page and what it says, and the browser problems recorded so far.
export async function failedAt(step, e, page, failure, problems) {
  const summary = await pageText(page, 500);
  await failure();
  const extra = problems.length > 0 ? ` [browser problems: ${problems.join('; ')}]` : '';
  return new Error(`${step}: ${String(e?.message ?? e).split('\n')[0]} (page ${short(page.url())} says: ${summary})${extra}`);
}

// signIn fills in Lanyard's login form on page and waits until the browser
// has left /login for another page of Lanyard (at origin).
export async function signIn(page, origin, username, password) {
  await page.fill('input[name=username]', username);
  await page.fill('input[name=password]', password);
  await page.click('button#login');
  await page.waitForURL(u => u.origin === origin && u.pathname !== '/login');
}
