// A real OpenID provider (npm oidc-provider) for Go tests, started by
// internal/testenv/oidc.go with:
//
//   PORT       the 127.0.0.1 port to listen on (issuer http://127.0.0.1:PORT)
//   CLIENTS    JSON list of {client_id, client_secret, redirect_uris}
//   ADMIN_KEY  the value of the X-Test-Admin header the test endpoints need
//
// PKCE (S256) is required of every client, refresh tokens are issued on every
// code grant and rotated on every use (reusing a rotated one revokes the
// grant), and revocation (RFC 7009) and userinfo are on. devInteractions is
// the provider's own login page (any user name and password) and consent
// page: plain HTML forms that testenv drives without a browser.
//
// Token introspection (RFC 7662) is on, for tests that look inside a token.
//
// Test-only additions, outside what oidc-provider ships:
//
//   POST /_test/revoke-all  forget every grant and token (connectortest Break)
//   POST /_test/counts      {"refresh": n, "refresh_failed": m}: refresh_token
//                           grants answered with tokens / with an error
//   grant_type urn:ietf:params:oauth:grant-type:token-exchange (RFC 8693),
//     for confidential clients: see TEST-ONLY TOKEN EXCHANGE below.
import http from 'node:http';
import crypto from 'node:crypto';

import Provider, { errors } from 'oidc-provider';

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';

const port = Number(process.env.PORT);
const adminKey = process.env.ADMIN_KEY;
if (!port || !adminKey) {
  console.error('PORT and ADMIN_KEY are required');
  process.exit(2);
}
const clients = JSON.parse(process.env.CLIENTS || '[]').map((c) => ({
  client_id: c.client_id,
  client_secret: c.client_secret || undefined,
  token_endpoint_auth_method: c.client_secret ? 'client_secret_basic' : 'none',
  redirect_uris: c.redirect_uris,
  grant_types: ['authorization_code', 'refresh_token', ...(c.client_secret ? [TOKEN_EXCHANGE] : [])],
  response_types: ['code'],
}));

// A plain in-memory adapter (the built-in one is an LRU the test endpoint
// cannot sweep).
const store = new Map(); // "Model:id" -> { payload, exp }
const grantable = new Set(['AccessToken', 'AuthorizationCode', 'RefreshToken', 'Grant']);
const now = () => Date.now();
class Adapter {
  constructor(model) { this.model = model; }

  key(id) { return `${this.model}:${id}`; }

  async upsert(id, payload, expiresIn) {
    store.set(this.key(id), { payload, exp: expiresIn ? now() + expiresIn * 1000 : Infinity });
  }

  async find(id) {
    const e = store.get(this.key(id));
    if (!e) return undefined;
    if (e.exp <= now()) {
      store.delete(this.key(id));
      return undefined;
    }
    return e.payload;
  }

  async findByUid(uid) {
    for (const [k, e] of store) {
      if (k.startsWith(`${this.model}:`) && e.payload.uid === uid && e.exp > now()) return e.payload;
    }
    return undefined;
  }

  async findByUserCode(userCode) {
    for (const [k, e] of store) {
      if (k.startsWith(`${this.model}:`) && e.payload.userCode === userCode && e.exp > now()) return e.payload;
    }
    return undefined;
  }

  async consume(id) {
    const e = store.get(this.key(id));
    if (e) e.payload.consumed = Math.floor(now() / 1000);
  }

  async destroy(id) { store.delete(this.key(id)); }

  async revokeByGrantId(grantId) {
    for (const [k, e] of store) {
      if (e.payload.grantId === grantId) store.delete(k);
    }
  }
}

const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, {
  adapter: Adapter,
  clients,
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: true },
    introspection: {
      enabled: true,
      // Confidential clients may introspect any token; public ones their own.
      allowedPolicy: async (_ctx, client, token) => client.clientAuthMethod !== 'none' || token.clientId === client.clientId,
    },
    revocation: { enabled: true },
    userinfo: { enabled: true },
  },
  scopes: ['openid', 'offline_access', 'email', 'profile'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['preferred_username', 'name'],
  },
  async findAccount(_ctx, id) {
    return {
      accountId: id,
      async claims() {
        return {
          sub: id, email: `${id}@example.test`, email_verified: true, preferred_username: id, name: id,
        };
      },
    };
  },
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: () => true,
  expiresWithSession: async () => false,
  ttl: {
    AccessToken: 3600,
    AuthorizationCode: 60,
    Grant: 86400,
    IdToken: 3600,
    Interaction: 600,
    RefreshToken: 86400,
    Session: 86400,
  },
});

// ---- TEST-ONLY TOKEN EXCHANGE (RFC 8693) ---------------------------------
// oidc-provider has no token exchange grant; this one lets tests exchange an
// access token onward (Lanyard's oauth2 token_exchange option). Policy: the
// subject_token must be a live access token this provider issued to the
// calling client (a confidential one) under a live grant; else invalid_grant.
// The answer is a new access token for the same account and grant that lives
// EXCHANGED_TTL seconds, carries the requested audience (at most one) as its
// aud, and has the requested scope if that is a subset of the subject's
// (invalid_scope otherwise), else the subject's. Revoking the grant revokes
// it too. Not a model of any real provider's policy.
const EXCHANGED_TTL = 300;
async function tokenExchange(ctx) {
  const { params, client } = ctx.oidc;
  if (!params.subject_token) throw new errors.InvalidRequest('missing required parameter \'subject_token\'');
  if (params.subject_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest(`subject_token_type must be ${ACCESS_TOKEN_TYPE}`);
  }
  if (params.requested_token_type && params.requested_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest(`requested_token_type must be ${ACCESS_TOKEN_TYPE}`);
  }
  if (params.actor_token || params.actor_token_type) throw new errors.InvalidRequest('actor_token is not supported');
  const subject = await provider.AccessToken.find(params.subject_token);
  if (!subject || !subject.isValid || subject.clientId !== client.clientId || !subject.grantId) {
    throw new errors.InvalidGrant('subject_token is invalid, expired, revoked or not this client\'s');
  }
  const grant = await provider.Grant.find(subject.grantId);
  if (!grant || grant.clientId !== client.clientId) throw new errors.InvalidGrant('the subject_token\'s grant is gone');
  let { scope } = subject;
  if (params.scope) {
    const have = subject.scopes;
    if (!params.scope.split(' ').every((s) => have.has(s))) {
      throw new errors.InvalidScope('the requested scope exceeds the subject_token\'s');
    }
    scope = params.scope;
  }
  const at = new provider.AccessToken({
    accountId: subject.accountId, client, grantId: subject.grantId, scope, gty: 'token_exchange', expiresIn: EXCHANGED_TTL,
  });
  if (params.audience) at.setAudience(params.audience);
  ctx.oidc.entity('AccessToken', at);
  const value = await at.save();
  ctx.body = {
    access_token: value,
    issued_token_type: ACCESS_TOKEN_TYPE,
    token_type: at.tokenType,
    expires_in: at.expiration,
    scope: at.scope || undefined,
  };
}
provider.registerGrantType(TOKEN_EXCHANGE, tokenExchange, [
  'subject_token', 'subject_token_type', 'requested_token_type', 'audience', 'scope', 'actor_token', 'actor_token_type',
]);
// ---- END TEST-ONLY TOKEN EXCHANGE -----------------------------------------

// Counts of refresh_token grants, for tests that a refresh happened once.
const counts = { refresh: 0, refresh_failed: 0 };
provider.on('grant.success', (ctx) => { if (ctx.oidc.params.grant_type === 'refresh_token') counts.refresh += 1; });
provider.on('grant.error', (ctx) => { if (ctx.oidc?.params?.grant_type === 'refresh_token') counts.refresh_failed += 1; });

const handler = provider.callback();
const server = http.createServer((req, res) => {
  if (req.url.startsWith('/_test/')) {
    if (req.method !== 'POST' || req.headers['x-test-admin'] !== adminKey) {
      res.writeHead(403).end();
      return;
    }
    if (req.url === '/_test/counts') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(counts));
      return;
    }
    if (req.url === '/_test/revoke-all') {
      let n = 0;
      for (const [k] of store) {
        if (grantable.has(k.slice(0, k.indexOf(':')))) {
          store.delete(k);
          n += 1;
        }
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ revoked: n }));
      return;
    }
    res.writeHead(404).end();
    return;
  }
  handler(req, res);
});
server.listen(port, '127.0.0.1', () => console.log(`oidc-provider listening on ${issuer}`));
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => server.close(() => process.exit(0)));
