// Linked accounts in a real browser: headless Chromium (npm playwright-core
// driving /usr/bin/chromium) on Lanyard's own pages, run by accounts_test.go
// against a real dovecot, a real OpenID provider (npm oidc-provider) and an
// API that checks keys.
//
// The user signs in; links the IMAP account first with a wrong password (the
// form shows the error, keeps the user name, never echoes the password, and
// no account appears) and then with the right one; links the OAuth account
// through the provider's own login and consent pages; adds an API key; sees
// all three accounts "Working"; unlinks the API key account. Every page is
// screenshotted into E2E_SCREENSHOT_DIR.
//
// The run fails on any console error, uncaught page error, failed request or
// HTTP answer >= 400, except exactly one: the 400 answer to the wrong-password
// form post, which is expected (with the one console error Chromium logs for
// it, "Failed to load resource: ... 400" at /accounts/link). Requests to hosts other than loopback are
// answered by the script with an empty body (the sandbox has no network; the
// provider's page imports a web font) and reported; one made by a Lanyard page
// fails the run (Lanyard must not use external resources).
//
// On success it prints `RESULT {json}` and exits 0; on failure it prints
// `FAIL <reason>` and exits 1. No password or key is ever printed.
//
// Environment:
//   LANYARD_URL                 Lanyard's base URL (http://127.0.0.1:PORT)
//   E2E_USERNAME, E2E_PASSWORD  the Lanyard user
//   E2E_CONNECTORS              JSON object: connector name → display name, for the three below
//   E2E_MAIL_CONNECTOR, E2E_IDP_CONNECTOR, E2E_APIKEY_CONNECTOR
//                               names of the IMAP, OAuth and API key connectors
//                               (default mail, idp, weather)
//   E2E_IMAP_USER, E2E_IMAP_PASSWORD, E2E_IMAP_WRONG_PASSWORD
//   E2E_IDP_ISSUER              the provider's issuer (its pages' origin)
//   E2E_IDP_USER                the name to sign in with at the provider (any is accepted)
//   E2E_API_KEY                 the key the API accepts
//   E2E_SCREENSHOT_DIR          where the screenshots go (required)
//   CHROMIUM_PATH               default /usr/bin/chromium
//   E2E_TIMEOUT_MS              bound on the whole run, default 150000
import {
  camera, failedAt, isLoopback, need, openBrowser, recordProblems, script, short, signIn,
} from './lib.mjs';

const { log, cleanups, run } = script('accounts');

async function main() {
  const base = need('LANYARD_URL').replace(/\/$/, '');
  const baseOrigin = new URL(base).origin;
  const username = need('E2E_USERNAME');
  const password = need('E2E_PASSWORD');
  const names = JSON.parse(need('E2E_CONNECTORS'));
  const mail = process.env.E2E_MAIL_CONNECTOR || 'mail';
  const idp = process.env.E2E_IDP_CONNECTOR || 'idp';
  const weather = process.env.E2E_APIKEY_CONNECTOR || 'weather';
  for (const n of [mail, idp, weather]) {
    if (!names[n]) throw new Error(`E2E_CONNECTORS has no display name for ${n}`);
  }
  const imapUser = need('E2E_IMAP_USER');
  const imapPassword = need('E2E_IMAP_PASSWORD');
  const imapWrong = need('E2E_IMAP_WRONG_PASSWORD');
  const idpOrigin = new URL(need('E2E_IDP_ISSUER')).origin;
  const idpUser = need('E2E_IDP_USER');
  const apiKey = need('E2E_API_KEY');
  const shotDir = need('E2E_SCREENSHOT_DIR');
  const secrets = [password, imapPassword, imapWrong, apiKey];

  // What the run must not see, and the one answer it expects to be an error.
  const problems = [];
  const external = [];
  const requests = [];
  let expectWrongPassword = false;
  let wrongPasswordAnswered = 0;

  const context = await openBrowser(cleanups);

  // No network in the sandbox: answer every non-loopback request here.
  await context.route(
    u => !isLoopback(u),
    async route => {
      const req = route.request();
      let from = '';
      try {
        from = new URL(req.frame().url()).origin;
      } catch {
        // a request with no frame (service worker): unknown
      }
      external.push({ url: short(req.url()), type: req.resourceType(), from });
      if (from === baseOrigin) problems.push(`a Lanyard page requested an external resource: ${short(req.url())}`);
      const ct = req.resourceType() === 'stylesheet' ? 'text/css' : req.resourceType() === 'font' ? 'font/woff2' : 'text/plain';
      await route.fulfill({ status: 200, contentType: ct, body: '' });
    },
  );
  context.on('request', r => requests.push(`${r.method()} ${short(r.url())}`));
  context.on('response', r => log(`${r.request().method()} ${short(r.url())} -> ${r.status()}`));
  const page = await context.newPage();
  let wrongPasswordConsole = 0;
  recordProblems(context, page, problems, {
    allowResponse: r => {
      const req = r.request();
      const u = new URL(r.url());
      if (expectWrongPassword && r.status() === 400 && req.method() === 'POST' &&
          u.origin === baseOrigin && u.pathname === '/accounts/link') {
        expectWrongPassword = false;
        wrongPasswordAnswered += 1;
        return true;
      }
      return false;
    },
    // Chromium reports the deliberate 400 document as a console error too:
    // allowed once, for exactly that answer.
    allowConsole: m => {
      if ((expectWrongPassword || wrongPasswordAnswered === 1) && wrongPasswordConsole === 0 &&
          m.text() === 'Failed to load resource: the server responded with a status of 400 (Bad Request)' &&
          m.location()?.url === `${base}/accounts/link`) {
        wrongPasswordConsole += 1;
        return true;
      }
      return false;
    },
  });

  const { shot, screenshots, failure } = camera(page, shotDir, 'accounts', log);
  // Text and markup of the page must never hold a password or key.
  const noSecretsOnPage = async where => {
    const html = await page.content();
    for (const s of secrets) {
      if (html.includes(s)) throw new Error(`${where}: the page contains a password or key in clear`);
    }
  };
  const onLanyard = (pathname, search) => u =>
    u.origin === baseOrigin && u.pathname === pathname && (search === undefined || u.search === search);
  const accountItems = () => page.locator('li.account');
  const accountByName = display =>
    page.locator('li.account').filter({ has: page.locator('.account-head strong', { hasText: display }) });

  let step = 'start';
  const at = s => {
    step = s;
    log(`step: ${s}`);
  };
  try {
    // 1. Sign in.
    at('opening /accounts signed out');
    await page.goto(`${base}/accounts`);
    await page.waitForSelector('input[name=username]');
    if (!(await page.title()).includes('Sign in')) throw new Error(`signed-out /accounts shows "${await page.title()}", want the sign-in page`);
    await shot('login');
    at('signing in');
    await signIn(page, baseOrigin, username, password);
    if (new URL(page.url()).pathname !== '/accounts') {
      at(`opening /accounts after signing in (landed on ${new URL(page.url()).pathname})`);
      await page.goto(`${base}/accounts`);
    }
    await page.waitForSelector('h1:has-text("Linked accounts")');
    if ((await accountItems().count()) !== 0) throw new Error('a fresh user already has linked accounts');
    for (const n of [mail, idp, weather]) {
      if ((await page.locator(`.link-${n}`).count()) !== 1) throw new Error(`no "Link ${names[n]}" button (.link-${n})`);
    }
    await shot('accounts-empty');

    // 2. IMAP, wrong password: error shown, user name kept, password not echoed, nothing linked.
    at('opening the IMAP link form');
    await page.click(`a.link-${mail}`);
    await page.waitForURL(onLanyard('/accounts/link'));
    await page.waitForSelector('input[name=password]');
    await shot('link-imap-form');
    await page.fill('input[name=username]', imapUser);
    await page.fill('input[name=password]', imapWrong);
    at('submitting the IMAP form with a wrong password');
    expectWrongPassword = true;
    await page.click('button#save');
    await page.waitForSelector('.problem[role=alert]');
    expectWrongPassword = false;
    if (wrongPasswordAnswered !== 1) throw new Error(`the wrong-password form post was not answered 400 (answered ${wrongPasswordAnswered} times)`);
    const problem = (await page.innerText('.problem')).trim();
    if (!/refused/i.test(problem) || !/nothing was saved/i.test(problem)) {
      throw new Error(`wrong password: the error says ${JSON.stringify(problem)}, want that the service refused and nothing was saved`);
    }
    const kept = await page.inputValue('input[name=username]');
    const echoed = await page.inputValue('input[name=password]');
    if (echoed !== '') throw new Error('wrong password: the password field was filled in again by the server');
    if (kept !== imapUser) throw new Error(`wrong password: the user name field holds ${JSON.stringify(kept)}, want it kept`);
    await noSecretsOnPage('wrong-password page');
    await shot('link-imap-wrong-password');
    at('back to the accounts page after the wrong password');
    await page.click('a.button:has-text("Cancel")');
    await page.waitForURL(onLanyard('/accounts'));
    const afterWrong = await accountItems().count();
    if (afterWrong !== 0) throw new Error(`after the wrong password the page lists ${afterWrong} accounts, want none`);

    // 3. IMAP, right password.
    at('linking IMAP with the right password');
    await page.click(`a.link-${mail}`);
    await page.waitForURL(onLanyard('/accounts/link'));
    await page.fill('input[name=username]', imapUser);
    await page.fill('input[name=password]', imapPassword);
    await page.click('button#save');
    await page.waitForURL(onLanyard('/accounts', '?done=linked'));
    if ((await accountByName(names[mail]).count()) !== 1) throw new Error('the IMAP account is not listed after linking');

    // 4. OAuth at the provider's own login and consent pages.
    at(`starting the ${names[idp]} link`);
    await page.click(`button.link-${idp}`);
    await page.waitForURL(u => u.origin === idpOrigin);
    at('waiting for the provider\'s login page');
    await page.waitForSelector('input[name=login]');
    await shot('provider-login');
    await page.fill('input[name=login]', idpUser);
    await page.fill('input[name=password]', 'any password');
    at('signing in at the provider');
    await page.click('button[type=submit]');
    at('waiting for the provider\'s consent page');
    await page.waitForSelector('input[name=prompt][value=consent]', { state: 'attached' });
    await shot('provider-consent');
    at('approving at the provider and waiting for the callback to complete');
    await page.click('button[type=submit]');
    await page.waitForURL(onLanyard('/accounts', '?done=linked'));
    if ((await accountByName(names[idp]).count()) !== 1) throw new Error(`the ${names[idp]} account is not listed after linking`);

    // 5. API key.
    at('opening the API key form');
    await page.click(`a.link-${weather}`);
    await page.waitForURL(onLanyard('/accounts/link'));
    await page.waitForSelector('input[name=api_key]');
    if ((await page.getAttribute('input[name=api_key]', 'type')) !== 'password') throw new Error('the API key field is not a password field');
    await shot('link-apikey-form');
    await page.fill('input[name=api_key]', apiKey);
    at('saving the API key');
    await page.click('button#save');
    await page.waitForURL(onLanyard('/accounts', '?done=linked'));

    // 6. All three, working.
    at('checking the three accounts');
    const notice = (await page.innerText('.notice')).trim();
    if (notice !== 'Account linked.') throw new Error(`notice ${JSON.stringify(notice)}, want "Account linked."`);
    const n = await accountItems().count();
    if (n !== 3) throw new Error(`the accounts page lists ${n} accounts, want 3`);
    const accounts = {};
    const wantAccount = {
      [mail]: s => s.includes(imapUser),
      [idp]: s => s.includes(`${idpUser}@example.test`),
      [weather]: s => s.includes(apiKey.slice(-4)) && !s.includes(apiKey.slice(0, -4)),
    };
    for (const c of [mail, idp, weather]) {
      const li = accountByName(names[c]);
      if ((await li.count()) !== 1) throw new Error(`${names[c]} is listed ${await li.count()} times, want once`);
      const id = (await li.getAttribute('id')).replace(/^conn-/, '');
      const status = (await li.locator('.status').innerText()).trim();
      const statusClass = await li.locator('.status').getAttribute('class');
      const detail = (await li.locator('.muted').first().innerText()).replace(/\s+/g, ' ').trim();
      if (status !== 'Working' || !statusClass.includes('status-active')) {
        throw new Error(`${names[c]}: status ${JSON.stringify(status)} (${statusClass}), want "Working"`);
      }
      if (!wantAccount[c](detail)) throw new Error(`${names[c]}: account shown as ${JSON.stringify(detail)}`);
      for (const b of ['Test now', 'Re-link', 'Unlink']) {
        if ((await li.locator(`:is(button, a):has-text("${b}")`).count()) !== 1) throw new Error(`${names[c]}: no "${b}" action`);
      }
      accounts[c] = { id, status, detail };
    }
    await noSecretsOnPage('accounts page');
    await shot('accounts-three');

    // 7. Unlink the API key account.
    at(`unlinking ${names[weather]}`);
    await accountByName(names[weather]).locator(':is(a, button):has-text("Unlink")').click();
    await page.waitForURL(onLanyard('/accounts/unlink'));
    await page.waitForSelector('button#unlink');
    await shot('unlink-confirm');
    await page.click('button#unlink');
    await page.waitForURL(onLanyard('/accounts', '?done=unlinked'));
    const unlinked = (await page.innerText('.notice')).trim();
    if (!unlinked.startsWith('Account unlinked.')) throw new Error(`notice ${JSON.stringify(unlinked)} after unlinking`);
    const left = await accountItems().count();
    if (left !== 2 || (await accountByName(names[weather]).count()) !== 0) {
      throw new Error(`after unlinking, ${left} accounts are listed (${names[weather]} ${await accountByName(names[weather]).count()} times), want 2 without it`);
    }
    for (const c of [mail, idp]) {
      if ((await page.locator(`#conn-${accounts[c].id} .status`).innerText()).trim() !== 'Working') {
        throw new Error(`${names[c]} is no longer "Working" after unlinking ${names[weather]}`);
      }
    }
    await shot('after-unlink');

    // 8. The same page at phone width (the issue asks for a design that works there).
    at('phone width');
    await page.setViewportSize({ width: 390, height: 844 });
    await page.reload();
    await page.waitForSelector('h1:has-text("Linked accounts")');
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    await shot('accounts-phone');

    // Let late console messages and failures arrive before judging.
    await page.waitForTimeout(300);
    if (problems.length > 0) throw new Error(`browser problems: ${problems.join('; ')}`);
    return {
      ok: true,
      connections: Object.fromEntries(Object.entries(accounts).map(([c, a]) => [c, { id: a.id, status: a.status, account: a.detail }])),
      unlinked: weather,
      wrong_password_answers: wrongPasswordAnswered,
      wrong_password_message: problem,
      external_requests: external,
      phone_horizontal_overflow_px: overflow,
      requests: requests.length,
      screenshots,
    };
  } catch (e) {
    throw await failedAt(step, e, page, failure, problems);
  }
}

run(main, 150_000, 'run');
