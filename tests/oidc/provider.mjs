// A certified OpenID provider (npm oidc-provider) for Hangar's sign-in tests, on loopback.
// Usage: node provider.mjs PORT REDIRECT_URI CLIENT_SECRET
// PKCE (S256) is required of every client; accounts exist for any login name, with
// the e-mail address <login>@example.com.
import Provider from "oidc-provider";

const [port, redirectUri, secret] = process.argv.slice(2);
const provider = new Provider(`http://localhost:${port}`, {
  clients: [
    {
      client_id: "hangar",
      client_secret: secret,
      redirect_uris: [redirectUri],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      token_endpoint_auth_method: "client_secret_basic",
    },
  ],
  pkce: { required: () => true },
  claims: { openid: ["sub"], email: ["email", "email_verified"] },
  scopes: ["openid", "email", "offline_access"],
  features: { devInteractions: { enabled: true } },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: `${id}@example.com`, email_verified: true };
      },
    };
  },
});
provider.listen(Number(port), "127.0.0.1", () => console.log("ready"));
