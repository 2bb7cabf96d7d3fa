"""WebAuthn (passkeys and security keys) as a second factor and for passwordless sign-in.

Registration follows WebAuthn Level 3 §7.1 "Registering a New Credential" and authentication §7.2
"Verifying an Authentication Assertion" (https://www.w3.org/TR/webauthn-3/). fido2's
:class:`~fido2.server.Fido2Server` parses the responses and checks the client data type, the
origin (through our own callable), the challenge, the ``rpIdHash``, the UP / UV flags and the
assertion signature. What it leaves to us, and this package does (docs/mfa.md explains it to
operators):

* **Single-use ceremonies.** The challenge lives in KV under ``mfa:webauthn:<ceremony id>`` with
  its kind, its user (or "discoverable"), the user-verification requirement and an expiry. Finishing
  takes it with ``get_and_delete``: a second finish of the same ceremony, a ceremony of another
  user or of the other kind, or an expired one is refused as ``challenge``.
* **An exact origin allow-list.** fido2 by default accepts any origin under the RP id (any
  subdomain); we accept only the configured origins, compared as strings, and never a cross-origin
  (iframe) ceremony.
* **Input before parsing.** The response is the browser's ``PublicKeyCredential.toJSON()``; its
  shape, base64url encodings and sizes are checked before fido2 sees it (a CBOR integer where
  bytes belong would otherwise make it allocate that many bytes). Bad input is a result, never
  an exception.
* **Credential binding.** A credential id is registered once across all users (``duplicate``,
  also under a race: the unique constraint decides); an assertion for a user must use one of
  that user's credentials, and a passwordless one must return the credential's own user handle
  (§7.2, identifying the user), compared in constant time.
* **The signature counter** (§6.1.1): when the stored or the new counter is non-zero, the new one
  must be greater; otherwise the key may have been cloned (``counter``, event
  ``mfa-clone-suspected``). It advances by a compare-and-set ``UPDATE``, so of two concurrent
  assertions with the same counter only one passes.
* **Backup flags** (§6.3.3): BE is fixed for the credential's life, BS may change; ``amr`` is
  ``swk`` for a backup-eligible (syncable) key, ``hwk`` for a device-bound one (mfa.levels).
* **Attestation policy.** ``none`` by default. With ``direct`` the statement's signature is checked
  for its format; an AAGUID allow-list refuses every other model — including the all-zero AAGUID a
  client puts there when it strips attestation.

Modules: ``results`` (reasons, ceremony options, results), ``encoding`` (strict checks of the
browser's JSON), ``ceremonies`` (challenge state in KV), ``relying_party`` (settings, exact
origins), ``credentials`` (the credential table, the counter), ``registration`` (§7.1),
``authentication`` (§7.2), ``refusals`` and ``events`` (how a refusal becomes a result and an
event), ``service`` (the :class:`WebAuthnService` facade).
"""

from mfa.webauthn.results import (
    AssertionResult,
    Ceremony,
    RegistrationResult,
    WebAuthnCredentialInfo,
    WebAuthnReason,
)
from mfa.webauthn.service import WebAuthnService

__all__ = [
    "AssertionResult",
    "Ceremony",
    "RegistrationResult",
    "WebAuthnCredentialInfo",
    "WebAuthnReason",
    "WebAuthnService",
]
