// A real OpenID Provider (oidc-provider) for the integration tests, on loopback over HTTPS.
//
// Usage: node server.mjs <config.json>
//   {
//     "port": 0,                      // 0 = pick a free port (the READY line tells which)
//     "certFile": "...", "keyFile": "...",
//     "clientCaFile": "...",           // optional: CA whose client certificates are verified
//                                      // (tls_client_auth); any certificate may be presented
//     "clients": [ ...oidc-provider client metadata, passed through... ],
//     "accessTokenTTL": 3600,         // optional, seconds
//     "refreshTokenTTL": 1209600      // optional, seconds
//   }
//
// Prints exactly one line "READY https://127.0.0.1:<port>" on stdout once it serves requests.
// Test-only endpoints, outside the provider's routes:
//   GET  /__test/stats  -> {"tokenRequests": n, "byGrant": {"<grant_type>": n, ...},
//                           "invalidGrant": n, "invalidGrantReasons": {"<description>": n}}
//   POST /__test/reset  -> zeroes the counters
//   POST /__test/delay?ms=N -> from now on, /token answers are held N ms after the provider
//                           has processed the request (a rotation has happened, the answer is
//                           on its way: the window in which a stopped client loses a grant)

import { X509Certificate, generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import https from 'node:https';

import Provider from 'oidc-provider';

const DEFAULT_RESOURCE = 'urn:oauth-token-operator:test';
// Scopes a resource server (and so an access token) may carry. 'openid email roles' mirrors the
// client-credentials provider from the design; oidc-provider accepts them for that grant as long
// as the client's `scope` metadata lists them.
const RESOURCE_SCOPES = 'openid email roles offline_access api:read api:write';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const accessTokenTTL = config.accessTokenTTL ?? 3600;
const refreshTokenTTL = config.refreshTokenTTL ?? 14 * 24 * 3600;

function signingKeys() {
  // RS256 is oidc-provider's default for ID tokens and JWT access tokens; ES256 is there so
  // clients that ask for it work too. Fresh keys per run: nothing outlives the test session.
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
  return [
    { ...rsa.export({ format: 'jwk' }), kid: 'rsa-1', alg: 'RS256', use: 'sig' },
    { ...ec.export({ format: 'jwk' }), kid: 'ec-1', alg: 'ES256', use: 'sig' },
  ];
}

// sub_type arrives as an authorize parameter, but tokens are minted later at /token, where the
// authorization request is gone. Remember it per grant so extraTokenClaims can put it into every
// access token of that grant (including refreshed ones).
const subTypeByGrant = new Map();

const counters = {};
function resetCounters() {
  counters.tokenRequests = 0;
  // The grants the operator uses are always present; others (or an unparsable body) appear on use.
  counters.byGrant = { client_credentials: 0, refresh_token: 0, authorization_code: 0 };
  // invalid_grant answers: for refresh tokens, reuse of a rotated token revokes the grant.
  counters.invalidGrant = 0;
  counters.invalidGrantReasons = {};
}
resetCounters();
let tokenDelayMs = 0;

// Start-up stages on stderr, so that a start that never says READY shows where it stopped.
const stage = (what) => console.error(`stage: ${what} at ${Math.round(performance.now())} ms`);

const server = https.createServer({
  cert: readFileSync(config.certFile),
  key: readFileSync(config.keyFile),
  // Mutual TLS (RFC 8705): ask every client for a certificate, accept connections without
  // one or with an unverified one; the provider decides per client what it needs.
  requestCert: true,
  rejectUnauthorized: false,
  ...(config.clientCaFile ? { ca: readFileSync(config.clientCaFile) } : {}),
});

function peerCertificate(ctx) {
  const peer = ctx.socket.getPeerCertificate?.();
  return peer?.raw ? new X509Certificate(peer.raw) : undefined;
}

await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(config.port ?? 0, '127.0.0.1', resolve);
});
stage('listening');

// The issuer needs the real port, so the provider is built only after listen() resolved it.
const issuer = `https://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: config.clients ?? [],
  jwks: { keys: signingKeys() },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  scopes: ['openid', 'offline_access', 'api:read', 'api:write'],
  claims: {
    email: ['email', 'email_verified'],
    roles: ['roles'],
  },
  extraParams: ['sub_type'],
  clientAuthMethods: [
    'client_secret_basic',
    'client_secret_jwt',
    'client_secret_post',
    'private_key_jwt',
    'tls_client_auth',
    'self_signed_tls_client_auth',
    'none',
  ],
  pkce: {
    // PKCE for everyone: the CLI always sends it, and public clients must (design).
    required: () => true,
  },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    mTLS: {
      enabled: true,
      certificateBoundAccessTokens: true,
      tlsClientAuth: true,
      selfSignedTlsClientAuth: true,
      getCertificate: peerCertificate,
      certificateAuthorized: (ctx) => ctx.socket.authorized === true,
      // The test clients register tls_client_auth_subject_dn only.
      certificateSubjectMatches: (ctx, property, expected) =>
        property === 'tls_client_auth_subject_dn' && peerCertificate(ctx)?.subject === expected,
    },
    resourceIndicators: {
      enabled: true,
      // Without a resource, oidc-provider issues opaque tokens; the operator wants JWTs with exp.
      defaultResource: async (_ctx, _client, oneOf) => oneOf ?? DEFAULT_RESOURCE,
      getResourceServerInfo: async (_ctx, resource) => {
        if (!/^(https|urn):/.test(resource)) {
          throw new Provider.errors.InvalidTarget();
        }
        return { scope: RESOURCE_SCOPES, audience: resource, accessTokenFormat: 'jwt' };
      },
      // Token requests without a resource parameter use what was granted at authorize time.
      useGrantedResource: async () => true,
    },
  },
  rotateRefreshToken: true,
  issueRefreshToken: async (_ctx, client, source) =>
    client.grantTypeAllowed('refresh_token') && source.scopes.has('offline_access'),
  extraTokenClaims: async (_ctx, token) => {
    const subType = token.grantId && subTypeByGrant.get(token.grantId);
    return subType ? { sub_type: subType } : undefined;
  },
  // Any login succeeds (devInteractions asks for "any login"); the login becomes the subject.
  findAccount: async (_ctx, sub) => ({
    accountId: sub,
    claims: async () => ({
      sub,
      email: `${sub}@example.test`,
      email_verified: true,
      roles: ['user'],
    }),
  }),
  ttl: {
    AccessToken: accessTokenTTL,
    ClientCredentials: accessTokenTTL,
    IdToken: accessTokenTTL,
    RefreshToken: refreshTokenTTL,
    Grant: refreshTokenTTL,
    Session: refreshTokenTTL,
    Interaction: 3600,
  },
});

provider.on('server_error', (_ctx, err) => console.error('server_error', err));
provider.on('grant.error', (_ctx, err) => {
  if (err.error === 'invalid_grant') {
    counters.invalidGrant += 1;
    const why = err.error_detail ?? err.error_description ?? 'unknown';
    counters.invalidGrantReasons[why] = (counters.invalidGrantReasons[why] ?? 0) + 1;
  }
});

// oidc-provider validates static clients lazily, on first use; fail at startup instead, so a
// bad client in a test shows up as a start() error with this message on stderr.
stage('provider built');
for (const { client_id: clientId } of config.clients ?? []) {
  await provider.Client.find(clientId);
}
stage('clients checked');

// Where the /token grant type is handed from the provider (which parses bodies) to the counters.
const GRANT_TYPE = Symbol('grantType');

provider.use(async (ctx, next) => {
  try {
    await next();
  } finally {
    ctx.req[GRANT_TYPE] = ctx.oidc?.body?.grant_type;
  }
  const { oidc } = ctx;
  const grantId = oidc?.entities?.Grant?.jti;
  if (grantId && typeof oidc.params?.sub_type === 'string') {
    subTypeByGrant.set(grantId, oidc.params.sub_type);
  }
});

const providerHandler = provider.callback();

function sendJson(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

server.on('request', (req, res) => {
  const { pathname } = new URL(req.url, issuer);
  if (pathname.startsWith('/__test/')) {
    if (req.method === 'GET' && pathname === '/__test/stats') {
      sendJson(res, 200, counters);
    } else if (req.method === 'POST' && pathname === '/__test/reset') {
      resetCounters();
      sendJson(res, 200, counters);
    } else if (req.method === 'POST' && pathname === '/__test/delay') {
      tokenDelayMs = Number(new URL(req.url, issuer).searchParams.get('ms') ?? 0);
      sendJson(res, 200, { delayMs: tokenDelayMs });
    } else {
      sendJson(res, 404, { error: 'not_found' });
    }
    return;
  }
  if (req.method === 'POST' && pathname === '/token') {
    // Counted before the provider sees the request, so rejected requests count too. The grant
    // type needs the body, which only the provider parses; read it once the response is done.
    counters.tokenRequests += 1;
    res.once('finish', () => {
      const grantType = req[GRANT_TYPE] ?? 'unknown';
      counters.byGrant[grantType] = (counters.byGrant[grantType] ?? 0) + 1;
    });
    if (tokenDelayMs > 0) {
      // Hold the finished answer back: the provider has already acted on the request.
      const end = res.end.bind(res);
      const delay = tokenDelayMs;
      res.end = (...args) => {
        setTimeout(() => end(...args), delay);
        return res;
      };
    }
  }
  providerHandler(req, res);
});

server.on('tlsClientError', (err) => console.error('tlsClientError', err.message));

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

process.stdout.write(`READY ${issuer}\n`);
