"""QR codes of ``otpauth://`` enrolment URIs, as SVG ``data:`` URIs (segno).

An ``<img src="data:image/svg+xml,...">`` suits the pages' Content-Security-Policy
(``img-src 'self' data:``; ``core.web.middleware.security_headers``), where inline SVG markup
with presentation attributes would need ``style-src 'unsafe-inline'`` in some browsers. The QR
code holds the TOTP seed: it is rendered per response, never cached (the pages send
``Cache-Control: no-store``) and never written anywhere.
"""

from __future__ import annotations

import segno

__all__ = ["qr_data_uri"]


def qr_data_uri(text: str) -> str:
    """``text`` as a QR code (error correction M, ISO/IEC 18004 §6.5.1: ~15% of the modules may be
    damaged, enough for a phone camera against a screen), as an SVG data URI."""
    code = segno.make(text, error="m", micro=False, boost_error=False)
    # Dark on explicit white with the standard 4-module quiet zone, so dark-mode pages still scan.
    return str(code.svg_data_uri(scale=5, border=4, dark="#000", light="#fff"))
