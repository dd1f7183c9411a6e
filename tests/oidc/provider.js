// The OpenID provider tests/integration/oidc.rs signs in against: panva's
// oidc-provider (OpenID Certified), over HTTPS with the certificate the test
// generated, with its development login form (any name, any password) and
// the accounts the test chooses.
//
// Started as `node provider.js`, with CERT_FILE and KEY_FILE (PEM) in the
// environment. Prints `listening https://localhost:<port>` on stdout once it
// serves, then reads one JSON command per line on stdin and answers `ok` (or
// `error <why>`) on stdout:
//
//   {"client": {"client_id", "client_secret", "redirect_uris": [...]}}
//   {"accounts": {"<login>": {<claims: email, email_verified, groups, ...>}}}
//   {"tamper": "<mode>"}   the next token response's ID token, altered:
//       wrong_audience, expired, wrong_issuer (re-signed with the real key),
//       bad_signature (another key, the real key's kid), unknown_kid (another
//       key and kid), replayed_nonce (the ID token of an earlier sign-in).
//
// The provider's signing key is generated here, so this harness can mint
// tokens the gateway must refuse.

import fs from 'node:fs';
import https from 'node:https';
import readline from 'node:readline';

import * as jose from 'jose';
import Provider from 'oidc-provider';
import MemoryAdapter from 'oidc-provider/lib/adapters/memory_adapter.js';

const KID = 'tokengate-test-key';
const clients = new Map();
let accounts = {};
let tamper = null;
// The ID token of the latest untampered sign-in, for replayed_nonce.
let previousIdToken = null;

const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
const signingJwk = { ...(await jose.exportJWK(privateKey)), kid: KID, alg: 'RS256', use: 'sig' };
const other = await jose.generateKeyPair('RS256');

// Clients come from the test (the gateway's redirect URL is known only once
// it listens); everything else is the provider's own in-memory storage.
class Adapter extends MemoryAdapter {
  constructor(name) {
    super(name);
    this.modelName = name;
  }

  async find(id) {
    if (this.modelName === 'Client') return clients.get(id);
    return super.find(id);
  }
}

let handler = (req, res) => { res.statusCode = 503; res.end(); };
const server = https.createServer(
  { cert: fs.readFileSync(process.env.CERT_FILE), key: fs.readFileSync(process.env.KEY_FILE) },
  (req, res) => handler(req, res),
);
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
// By name, while the gateway's page is opened by address: two sites, as in
// real life, so the browser keeps their cookies apart (cookies ignore ports)
// and the flow cookie must survive a cross-site redirect back.
const issuer = `https://localhost:${server.address().port}`;

const provider = new Provider(issuer, {
  adapter: Adapter,
  jwks: { keys: [signingJwk] },
  async findAccount(ctx, id) {
    const claims = accounts[id];
    if (!claims) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...claims }; } };
  },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'groups'],
  },
  // The claims of the requested scopes go into the ID token itself (the
  // gateway reads them there, not from the userinfo endpoint).
  conformIdTokenClaims: false,
  features: { devInteractions: { enabled: true } },
  // No consent screen: every sign-in grants the scopes asked for.
  async loadExistingGrant(ctx) {
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid email profile');
    await grant.save();
    return grant;
  },
  cookies: { keys: ['tokengate-test-provider-cookie-key'] },
});

async function mint(payload, key, kid) {
  return new jose.SignJWT(payload).setProtectedHeader({ alg: 'RS256', kid, typ: 'JWT' }).sign(key);
}

async function altered(idToken, mode) {
  const claims = jose.decodeJwt(idToken);
  const now = Math.floor(Date.now() / 1000);
  switch (mode) {
    case 'wrong_audience': return mint({ ...claims, aud: 'another-client' }, privateKey, KID);
    case 'expired': return mint({ ...claims, iat: now - 7200, exp: now - 3600 }, privateKey, KID);
    case 'wrong_issuer': return mint({ ...claims, iss: 'https://impostor.example' }, privateKey, KID);
    case 'bad_signature': return mint(claims, other.privateKey, KID);
    case 'unknown_kid': return mint(claims, other.privateKey, 'unknown-kid');
    case 'replayed_nonce':
      if (!previousIdToken) throw new Error('replayed_nonce needs an earlier sign-in');
      return previousIdToken;
    default: throw new Error(`unknown tamper mode ${mode}`);
  }
}

provider.use(async (ctx, next) => {
  await next();
  if (ctx.path === '/token' && ctx.method === 'POST' && ctx.body && ctx.body.id_token) {
    if (tamper) {
      const mode = tamper;
      tamper = null;
      ctx.body = { ...ctx.body, id_token: await altered(ctx.body.id_token, mode) };
    } else {
      previousIdToken = ctx.body.id_token;
    }
  }
  // The development views load a web font; the test machine has no network.
  if (typeof ctx.body === 'string' && ctx.body.includes('@import url(https://fonts.googleapis.com')) {
    ctx.body = ctx.body.replace(/@import url\(https:\/\/fonts\.googleapis\.com[^)]*\);/, '');
  }
});

handler = provider.callback();
process.stdout.write(`listening ${issuer}\n`);

const lines = readline.createInterface({ input: process.stdin });
lines.on('line', (line) => {
  try {
    const cmd = JSON.parse(line);
    if (cmd.client) {
      clients.set(cmd.client.client_id, {
        token_endpoint_auth_method: 'client_secret_basic',
        grant_types: ['authorization_code'],
        response_types: ['code'],
        ...cmd.client,
      });
    }
    if (cmd.accounts) accounts = { ...accounts, ...cmd.accounts };
    if ('tamper' in cmd) tamper = cmd.tamper;
    process.stdout.write('ok\n');
  } catch (e) {
    process.stdout.write(`error ${String(e.message).replace(/\n/g, ' ')}\n`);
  }
});
// The test's end closes stdin: stop with it.
lines.on('close', () => process.exit(0));
