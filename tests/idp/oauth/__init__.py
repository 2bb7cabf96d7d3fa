"""Tests of the OpenID Provider (protocol side)."""
