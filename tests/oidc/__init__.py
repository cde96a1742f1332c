"""A certified OpenID provider (npm oidc-provider) run by the tests."""
