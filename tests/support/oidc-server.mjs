// oidc-server.mjs: a strict oidc-provider (9.x) authorization server for oauth-broker's tests.
//
// Run:  node tests/support/oidc-server.mjs   (dependencies come from tests/support/node_modules)
//
// Environment
//   OIDC_PORT               port to listen on, 127.0.0.1 only; 0 (default) = pick a free port
//   OIDC_CLIENTS            JSON array of client metadata objects (required), e.g.
//                           [{"client_id":"broker","client_secret":"s3cret",
//                             "redirect_uris":["http://127.0.0.1:5555/api/auth/callback"],
//                             "token_endpoint_auth_method":"client_secret_basic"}]
//                           grant_types defaults to ["authorization_code","refresh_token"],
//                           response_types to ["code"].
//   OIDC_ACCESS_TOKEN_TTL   access token lifetime in seconds (default 60)
//   OIDC_REFRESH_TOKEN_TTL  refresh token lifetime in seconds (default 86400)
//   OIDC_TOKEN_DELAY_MS     delay before the token endpoint handles a request (default 0). The request
//                           is counted on arrival, then delayed, then processed even if the client
//                           has given up meanwhile (like a real slow vendor: a refresh token sent in a
//                           request the client abandoned is still consumed).
//   OIDC_DROP_ABANDONED=1   instead, drop a delayed request whose client disconnected during the delay
//                           (as if it never reached the vendor; counted in /__stats "abandoned").
//   OIDC_NO_REFRESH_TOKEN=1 the code grant issues no refresh token (like a vendor asked without
//                           offline_access, or Google without prompt=consent); default: always issue one.
//   OIDC_LOG=1              one stderr line per token request (default: stderr stays quiet after
//                           start-up, so a parent that never drains a stderr pipe cannot block us).
//
// Stdout: exactly one line once listening, nothing else:
//   {"ready":true,"port":<n>,"issuer":"http://127.0.0.1:<n>"}
// Diagnostics (oidc-provider's start-up warnings, errors) go to stderr. SIGTERM/SIGINT exit 0.
//
// Provider behaviour: PKCE required for every client (S256 only; "plain" is rejected), refresh
// tokens always issued by the code grant (no offline_access / prompt=consent needed), rotated on
// every use; replaying a consumed refresh token answers 400 invalid_grant AND revokes the whole
// grant (its newest refresh token and all access tokens). clockTolerance 0. Opaque tokens.
// Scopes: openid offline_access profile email api:read (unknown scopes are silently dropped).
// Endpoints (discovery at /.well-known/openid-configuration): /auth, /token, /token/revocation,
// /token/introspection, /me, /jwks. Caveat (oidc-provider): a client registered with
// client_secret_basic is also accepted with client_secret_post (see last_token_request.client_auth).
//
// Test-only routes (answered before the provider, never touch it):
//   GET  /__stats   {"token_requests":{"authorization_code":n,"refresh_token":n[,"<other>":n]},
//                    "token_errors":{"<error>":n},"refresh_success":n,"grants_revoked":n,
//                    "last_token_request":null|{"grant_type":s|null,"client_auth":"basic"|"post"|"none",
//                                               "has_code_verifier":b,"params":[names, no values]}}
//                   token_requests counts POST /token on arrival; token_errors every error answer of
//                   /token by its "error" code; refresh_success every 200 to a refresh_token grant;
//                   grants_revoked every oidc-provider "grant.revoked" event (replay, revocation).
//   POST /__reset   zero all counters (and last_token_request) -> {"ok":true}
//   POST /__config?token_delay_ms=<n>&drop_abandoned=<0|1>&issue_refresh_token=<0|1>
//                                       change those at run time
//                                       -> {"token_delay_ms":n,"drop_abandoned":bool,"issue_refresh_token":bool}
//   GET  /__introspect?token=<t>  {"active":bool}: a live (unexpired, unconsumed, grant not revoked)
//                   access token or refresh token of this server. No client auth.
//
// Driving the devInteractions login + consent with a plain HTTP client and a cookie jar
// (verified end to end with curl -b/-c; do not follow redirects automatically to the redirect_uri):
//  1. GET /auth?response_type=code&client_id=<id>&redirect_uri=<uri>&scope=<s>&state=<st>
//         &code_challenge=<b64url(sha256(verifier))>&code_challenge_method=S256
//     -> 303, Location: /interaction/<uid1>   (relative); sets cookies _interaction (path
//        /interaction/<uid1>) and _interaction_resume (path /auth/<uid1>), each with a .sig cookie.
//     Errors: unknown client_id or unregistered redirect_uri -> 400 text/html (no redirect); other
//     errors redirect: 303 <redirect_uri>?error=invalid_request&error_description=...&state=&iss=
//     (missing PKCE, code_challenge_method=plain, short code_challenge); response_type=token ->
//     unsupported_response_type in the fragment.
//  2. (optional) GET /interaction/<uid1> -> 200 HTML login form
//        <form action="http://127.0.0.1:<port>/interaction/<uid1>" method="post">
//        fields: prompt=login (hidden), login (any non-empty), password (any)
//  3. POST /interaction/<uid1>, application/x-www-form-urlencoded: prompt=login&login=alice&password=x
//     -> 303, Location: http://127.0.0.1:<port>/auth/<uid1>   (absolute)
//  4. GET /auth/<uid1> -> 303, Location: /interaction/<uid2>   (new uid; sets _session, path /)
//  5. (optional) GET /interaction/<uid2> -> 200 HTML consent form, same action URL shape,
//        fields: prompt=consent (hidden)
//  6. POST /interaction/<uid2>: prompt=consent -> 303, Location: http://127.0.0.1:<port>/auth/<uid2>
//  7. GET /auth/<uid2> -> 303, Location: <redirect_uri>?code=<code>&state=<st>&iss=http%3A%2F%2F127.0.0.1%3A<port>
//  The accountId (sub) is the login value. Granted scope = requested scopes this server knows,
//  minus offline_access (oidc-provider drops it without prompt=consent; a refresh token is issued
//  anyway); unknown scopes are dropped silently.
//  Abort, at the login or the consent step: GET /interaction/<uid>/abort
//     -> 303, Location: http://127.0.0.1:<port>/auth/<uid>; GET that
//     -> 303, Location: <redirect_uri>?error=access_denied&error_description=End-User+aborted+interaction&state=<st>&iss=...
//  A second /auth in the same cookie jar for a client already consented to the same scopes skips
//  both prompts (303 straight to the redirect_uri); use a fresh jar for a fresh login.
//  Token: POST /token, Authorization: Basic base64(urlenc(client_id) ":" urlenc(client_secret))
//     (an unencoded "%" in the secret -> 400 invalid_request), body
//     grant_type=authorization_code&code=<code>&redirect_uri=<uri>&code_verifier=<verifier>
//     -> 200 {access_token, expires_in, refresh_token, scope, token_type:"Bearer"[, id_token if openid]}
//     A wrong code_verifier -> 400 invalid_grant without consuming the code; replaying a used code
//     -> 400 invalid_grant and the grant is revoked (its tokens die).
//     grant_type=refresh_token&refresh_token=<rt> -> 200 with a new refresh_token; the old one is
//     consumed; replaying it -> 400 invalid_grant + grant revoked (grants_revoked += 1).

import { createServer } from 'node:http';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';

import Provider from 'oidc-provider';

function fail(message) {
  process.stderr.write(`oidc-server: ${message}\n`);
  process.exit(2);
}

function intEnv(name, dflt) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return dflt;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0) fail(`${name} must be a non-negative integer, got ${JSON.stringify(raw)}`);
  return n;
}

const PORT = intEnv('OIDC_PORT', 0);
const ACCESS_TOKEN_TTL = intEnv('OIDC_ACCESS_TOKEN_TTL', 60);
const REFRESH_TOKEN_TTL = intEnv('OIDC_REFRESH_TOKEN_TTL', 86400);
let tokenDelayMs = intEnv('OIDC_TOKEN_DELAY_MS', 0);
// OIDC_DROP_ABANDONED=1: a delayed token request whose client disconnected is not processed.
let dropAbandoned = process.env.OIDC_DROP_ABANDONED === '1';
const LOG = process.env.OIDC_LOG === '1';
// OIDC_NO_REFRESH_TOKEN=1: the code grant issues no refresh token.
let issueRefreshTokens = process.env.OIDC_NO_REFRESH_TOKEN !== '1';

let clients;
try {
  clients = JSON.parse(process.env.OIDC_CLIENTS ?? '');
} catch (e) {
  fail(`OIDC_CLIENTS must be a JSON array of client metadata objects (${e.message})`);
}
if (!Array.isArray(clients)) fail('OIDC_CLIENTS must be a JSON array');
clients = clients.map((c) => ({
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  ...c,
}));

// ---------------------------------------------------------------- stats

function freshStats() {
  return {
    token_requests: { authorization_code: 0, refresh_token: 0 },
    token_errors: {},
    refresh_success: 0,
    grants_revoked: 0,
    abandoned: 0,
    last_token_request: null,
  };
}
let stats = freshStats();

function json(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
  });
  res.end(text);
}

async function readRaw(req, limit = 1024 * 1024) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw new Error('request body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, size).toString('utf8');
}

// ---------------------------------------------------------------- provider

function buildProvider(issuer) {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'test-rs256', alg: 'RS256', use: 'sig' };

  const provider = new Provider(issuer, {
    clients,
    jwks: { keys: [signingKey] },
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    responseTypes: ['code'],
    scopes: ['openid', 'offline_access', 'api:read'],
    claims: {
      openid: ['sub'],
      profile: ['name', 'preferred_username'],
      email: ['email', 'email_verified'],
    },
    async findAccount(_ctx, sub) {
      return {
        accountId: sub,
        async claims() {
          return {
            sub, name: sub, preferred_username: sub, email: `${sub}@example.test`, email_verified: true,
          };
        },
      };
    },
    pkce: { required: () => true },
    clockTolerance: 0,
    rotateRefreshToken: true,
    // Always issue a refresh token from the code grant (no offline_access / prompt=consent dance),
    // unless told not to (OIDC_NO_REFRESH_TOKEN=1 or /__config?issue_refresh_token=0).
    issueRefreshToken: async (_ctx, client) => issueRefreshTokens && client.grantTypeAllowed('refresh_token'),
    // Tokens outlive the browser session (as with offline_access at real vendors).
    expiresWithSession: async () => false,
    features: {
      devInteractions: { enabled: true },
      revocation: {
        enabled: true,
        allowedPolicy: async (_ctx, client, token) => token.clientId === client.clientId,
      },
      introspection: {
        enabled: true,
        allowedPolicy: async (_ctx, client, token) => token.clientId === client.clientId,
      },
    },
    ttl: {
      AccessToken: ACCESS_TOKEN_TTL,
      AuthorizationCode: 60,
      IdToken: 3600,
      RefreshToken: REFRESH_TOKEN_TTL,
      Interaction: 3600,
      Session: 14 * 24 * 3600,
      Grant: 14 * 24 * 3600,
    },
  });

  // Error answers of the token endpoint: remember the code on the ctx for the counting middleware
  // (the body is not JSON when the client asked for HTML).
  provider.on('grant.error', (ctx, err) => { ctx.state.oidcError = err?.error ?? 'server_error'; });
  provider.on('server_error', (ctx) => { if (ctx?.state) ctx.state.oidcError = 'server_error'; });
  provider.on('grant.revoked', () => { stats.grants_revoked += 1; });

  provider.use(async (ctx, next) => {
    if (ctx.method !== 'POST' || ctx.path !== '/token') {
      await next();
      return;
    }
    // Read the form body ourselves so the request can be counted on arrival (before the delay);
    // oidc-provider then parses the string we leave on req.body (it warns once about that).
    let raw = '';
    try {
      raw = await readRaw(ctx.req);
    } catch {
      raw = '';
    }
    ctx.req.body = raw;
    const form = ctx.is('application/x-www-form-urlencoded') ? new URLSearchParams(raw) : new URLSearchParams();
    const grantType = form.get('grant_type');
    const auth = ctx.get('authorization');
    let clientAuth = 'none';
    if (/^basic /i.test(auth)) clientAuth = 'basic';
    else if (form.has('client_secret')) clientAuth = 'post';
    const key = grantType ?? '(missing)';
    stats.token_requests[key] = (stats.token_requests[key] ?? 0) + 1;
    stats.last_token_request = {
      grant_type: grantType,
      client_auth: clientAuth,
      has_code_verifier: form.has('code_verifier'),
      params: [...new Set(form.keys())],
    };

    if (tokenDelayMs > 0) await sleep(tokenDelayMs);
    if (dropAbandoned && (ctx.req.socket?.destroyed ?? true)) {
      // The client hung up during the delay (a crashed caller): like a vendor whose
      // request never arrived, nothing is processed and no token is used up.
      stats.abandoned += 1;
      ctx.status = 499;
      return;
    }

    await next();

    if (ctx.status >= 400) {
      const code = (ctx.body && typeof ctx.body === 'object' && ctx.body.error)
        || ctx.state.oidcError || `http_${ctx.status}`;
      stats.token_errors[code] = (stats.token_errors[code] ?? 0) + 1;
    } else if (ctx.status === 200 && grantType === 'refresh_token') {
      stats.refresh_success += 1;
    }
    if (LOG) {
      process.stderr.write(`oidc-server: POST /token grant_type=${grantType} auth=${clientAuth} -> ${ctx.status}`
        + `${ctx.status >= 400 ? ` ${ctx.body?.error ?? ''}` : ''}\n`);
    }
  });

  return provider;
}

async function isActive(provider, token) {
  if (!token) return false;
  for (const Model of [provider.AccessToken, provider.RefreshToken]) {
    let found;
    try {
      found = await Model.find(token);
    } catch {
      found = undefined;
    }
    if (!found) continue;
    if (found.isExpired || found.consumed) return false;
    if (found.grantId && !(await provider.Grant.find(found.grantId))) return false;
    return true;
  }
  return false;
}

// ---------------------------------------------------------------- server

let providerCallback = null;
let provider = null;

async function testRoute(req, res, url) {
  if (req.method === 'GET' && url.pathname === '/__stats') return json(res, 200, stats);
  if (req.method === 'POST' && url.pathname === '/__reset') {
    stats = freshStats();
    return json(res, 200, { ok: true });
  }
  if (req.method === 'POST' && url.pathname === '/__config') {
    const v = url.searchParams.get('token_delay_ms');
    if (v !== null) {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 0) return json(res, 400, { error: 'token_delay_ms must be a non-negative integer' });
      tokenDelayMs = n;
    }
    const d = url.searchParams.get('drop_abandoned');
    if (d !== null) dropAbandoned = d === '1' || d === 'true';
    const r = url.searchParams.get('issue_refresh_token');
    if (r !== null) issueRefreshTokens = r === '1' || r === 'true';
    return json(res, 200, {
      token_delay_ms: tokenDelayMs, drop_abandoned: dropAbandoned, issue_refresh_token: issueRefreshTokens,
    });
  }
  if (req.method === 'GET' && url.pathname === '/__introspect') {
    return json(res, 200, { active: await isActive(provider, url.searchParams.get('token')) });
  }
  return json(res, 404, { error: 'not_found' });
}

const server = createServer((req, res) => {
  if (req.url.startsWith('/__')) {
    const url = new URL(req.url, 'http://127.0.0.1');
    testRoute(req, res, url).catch((e) => {
      process.stderr.write(`oidc-server: ${req.method} ${url.pathname}: ${e.stack}\n`);
      if (!res.headersSent) json(res, 500, { error: 'server_error' });
    });
    return;
  }
  if (!providerCallback) {
    res.writeHead(503).end();
    return;
  }
  providerCallback(req, res);
});

server.on('error', (e) => fail(`listen on 127.0.0.1:${PORT} failed: ${e.message}`));

server.listen(PORT, '127.0.0.1', async () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  try {
    provider = buildProvider(issuer);
    // Static clients are validated lazily; load each now so bad metadata fails start-up.
    for (const c of clients) {
      if (!(await provider.Client.find(String(c.client_id)))) throw new Error(`client ${c.client_id} not found`);
    }
  } catch (e) {
    fail(`provider configuration rejected: ${e.message ?? e}${e.error_description ? ` (${e.error_description})` : ''}`);
  }
  provider.on('server_error', (_ctx, err) => process.stderr.write(`oidc-server: server_error: ${err?.stack ?? err}\n`));
  providerCallback = provider.callback();
  process.stdout.write(`${JSON.stringify({ ready: true, port, issuer })}\n`);
});

function shutdown() {
  server.close();
  server.closeAllConnections();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
