// A real OpenID Connect / OAuth2 authorization server for the tests: oidc-provider, bound to
// 127.0.0.1 on a port the operating system picks.
//
// Usage: node oidc_provider.mjs CONFIG.json
//
// CONFIG.json contains {"clients": [client metadata...], "accessTokenTtl": {client_id: seconds}}.
// Once listening, the script prints one line `listening http://127.0.0.1:PORT` on stdout.
//
// Test-only routes (not part of OpenID Connect):
//   GET  /_test/token-requests  every POST to /token so far, as JSON records
//                               {client_id, grant_type, status, error}, counted on the server
//   POST /_test/reset           forget the recorded token requests
//
// Set TOKENFLIGHT_OIDC_DEBUG=1 to print the provider's error events on stderr: its error
// responses are deliberately generic, and the events carry the precise reason.

import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';

import Provider, { errors } from 'oidc-provider';

const configPath = process.argv[2];
if (!configPath) {
  process.stderr.write('usage: node oidc_provider.mjs CONFIG.json\n');
  process.exit(2);
}
const config = JSON.parse(readFileSync(configPath, 'utf8'));
const accessTokenTtl = config.accessTokenTtl ?? {};
const defaultTtl = config.defaultAccessTokenTtl ?? 300;

function ttlFor(client) {
  return accessTokenTtl[client?.clientId] ?? defaultTtl;
}

const tokenRequests = [];

function clientIdOf(ctx) {
  const fromProvider = ctx.oidc?.client?.clientId ?? ctx.oidc?.params?.client_id;
  if (fromProvider) {
    return fromProvider;
  }
  const header = ctx.headers.authorization ?? '';
  if (header.toLowerCase().startsWith('basic ')) {
    const decoded = Buffer.from(header.slice(6), 'base64').toString('utf8');
    return decodeURIComponent(decoded.split(':')[0]);
  }
  return null;
}

const server = createServer();
await new Promise((resolve) => {
  server.listen(0, '127.0.0.1', resolve);
});
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: config.clients,
  scopes: ['openid', 'offline_access', 'read', 'write'],
  features: {
    clientCredentials: { enabled: true },
    devInteractions: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => undefined,
      useGrantedResource: async () => false,
      getResourceServerInfo: async (ctx, resourceIndicator, client) => {
        if (!resourceIndicator.startsWith('urn:tokenflight:')) {
          throw new errors.InvalidTarget();
        }
        return {
          scope: 'read write',
          audience: resourceIndicator,
          accessTokenTTL: ttlFor(client),
          accessTokenFormat: 'jwt',
        };
      },
    },
  },
  // Always rotate refresh tokens, so that reusing a replaced one fails with invalid_grant
  // and revokes the grant, as strict production servers do.
  rotateRefreshToken: true,
  ttl: {
    AccessToken: (ctx, token, client) => ttlFor(client),
    ClientCredentials: (ctx, token, client) => ttlFor(client),
    RefreshToken: 24 * 60 * 60,
    Grant: 24 * 60 * 60,
    Interaction: 60 * 60,
    Session: 24 * 60 * 60,
    IdToken: 60 * 60,
  },
  cookies: { keys: ['tokenflight-test-cookie-key'] },
  findAccount: async (ctx, sub) => ({
    accountId: sub,
    claims: async () => ({ sub }),
  }),
});

provider.use(async (ctx, next) => {
  if (ctx.method === 'GET' && ctx.path === '/_test/token-requests') {
    ctx.body = tokenRequests;
    return;
  }
  if (ctx.method === 'POST' && ctx.path === '/_test/reset') {
    tokenRequests.length = 0;
    ctx.status = 204;
    return;
  }
  await next();
  if (ctx.method === 'POST' && ctx.path === '/token') {
    let error = null;
    if (ctx.status >= 400 && ctx.body && typeof ctx.body === 'object') {
      error = ctx.body.error ?? null;
    }
    tokenRequests.push({
      client_id: clientIdOf(ctx),
      grant_type: ctx.oidc?.params?.grant_type ?? null,
      status: ctx.status,
      error,
    });
  }
});

if (process.env.TOKENFLIGHT_OIDC_DEBUG) {
  for (const event of ['grant.error', 'server_error', 'authorization.error', 'introspection.error']) {
    provider.on(event, (ctx, err) => {
      process.stderr.write(`${event}: ${err.name} ${err.message} ${err.error_detail ?? ''}\n`);
    });
  }
}

server.on('request', provider.callback());

function stop() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

process.stdout.write(`listening ${issuer}\n`);
