// A real OpenID provider for the integration tests: oidc-provider with its development
// login and consent pages. Configured by the environment:
//   OIDC_PORT      port to listen on (loopback); the issuer is http://127.0.0.1:<port>
//   OIDC_CLIENTS   JSON array of client metadata (client_id, client_secret, redirect_uris)
//   OIDC_ACCOUNTS  JSON object: login name -> claims (sub, email, given_name, ...)
//   OIDC_TAMPER    unset, or how to spoil every ID token the token endpoint hands out:
//                  bad-signature, wrong-issuer, wrong-audience, expired
// Prints "oidc provider listening on <issuer>" once it accepts connections.
import * as jose from 'jose';
import Provider from 'oidc-provider';

const port = Number(process.env.OIDC_PORT);
const issuer = `http://127.0.0.1:${port}`;
const clients = JSON.parse(process.env.OIDC_CLIENTS);
const accounts = JSON.parse(process.env.OIDC_ACCOUNTS || '{}');
const tamper = process.env.OIDC_TAMPER;

// The provider's own signing key, so that a tampering test can sign what it changed.
const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
const signingKey = { ...(await jose.exportJWK(privateKey)), kid: 'test-key', use: 'sig', alg: 'RS256' };

const provider = new Provider(issuer, {
  clients,
  jwks: { keys: [signingKey] },
  async findAccount(ctx, id) {
    const claims = accounts[id];
    if (!claims) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...claims }; } };
  },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'given_name', 'family_name'],
  },
  // Claims of the scopes asked for go into the ID token, as most IAMs do.
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: true },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      // The confirmation form says yes by itself, so that a test's browser signs out.
      async logoutSource(ctx, form) {
        ctx.body = `<!DOCTYPE html><html><body>${form.replace('</form>', '<input type="hidden" name="logout" value="yes"/></form>')}</body></html>`;
      },
    },
  },
  cookies: { keys: ['missive-test-provider'] },
  pkce: { required: () => true },
  // Everything runs on loopback, which the provider's SSRF protection refuses to call
  // (back-channel logout): the test drops it.
  fetch(url, options) {
    delete options.dispatcher;
    return globalThis.fetch(url, options);
  },
});
// The development pages are served over plain HTTP on loopback.
provider.proxy = false;

if (tamper) {
  const { privateKey: otherKey } = await jose.generateKeyPair('RS256');
  provider.use(async (ctx, next) => {
    await next();
    if (!ctx.path.endsWith('/token') || !ctx.body || !ctx.body.id_token) return;
    const claims = jose.decodeJwt(ctx.body.id_token);
    const now = Math.floor(Date.now() / 1000);
    let key = privateKey;
    if (tamper === 'bad-signature') key = otherKey;
    if (tamper === 'wrong-issuer') claims.iss = 'http://impostor.example';
    if (tamper === 'wrong-audience') claims.aud = 'another-client';
    if (tamper === 'expired') { claims.iat = now - 7200; claims.exp = now - 3600; }
    const idToken = await new jose.SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid: 'test-key' }).sign(key);
    ctx.body = { ...ctx.body, id_token: idToken };
  });
}

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc provider listening on ${issuer}`);
});
