"""OAuth 2 / OIDC clients (relying parties) and the consents users gave them."""
