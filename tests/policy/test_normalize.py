"""policy.normalize: one canonical path, so the path that is checked is the path that is routed."""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policy.normalize import MAX_PATH_BYTES, PathReason, PathRejected, canonical_path


def _denied_by_admin_rule(raw: str) -> bool:
    """What a rule `deny /admin` (prefix, case rule: insensitive) sees of ``raw``."""
    key = canonical_path(raw).key
    return key == "/admin" or key.startswith("/admin/")


@pytest.mark.parametrize(
    "raw",
    [
        "/admin",
        "/admin/",
        "/admin/users",
        "/admin/../admin",
        "/x/../admin/",
        "/%61dmin",
        "/%61%64%6D%69%6E/users",
        "//admin",
        "///admin//users",
        "/admin;x=y",
        "/admin;jsessionid=1/users",
        "/ADMIN",
        "/Admin/Users",
        "/%2e%2e/admin",
        "/x/%2E%2E/admin",
        "/x/.%2e/admin",
        "/./admin",
        "/x/..;/admin",
        "/..;/admin",
        "/../../../admin",
        "/x/y/../../admin/.",
    ],
)
def test_no_spelling_of_admin_escapes_the_admin_rule(raw: str) -> None:
    assert _denied_by_admin_rule(raw), canonical_path(raw)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("/%252e%252e/admin", PathReason.DOUBLE_ENCODING),  # one more decoding upstream gives /../admin
        ("/%2561dmin", PathReason.DOUBLE_ENCODING),
        ("/x%2fadmin", PathReason.ENCODED_SEPARATOR),  # one segment here, two upstream
        ("/x%2F..%2Fadmin", PathReason.ENCODED_SEPARATOR),
        ("/x%5c..%5cadmin", PathReason.ENCODED_SEPARATOR),
        # An encoded ";": "..%3B" is a plain segment here, but "..;" (a dot segment with a
        # parameter) to an upstream that decodes before it strips parameters.
        ("/public/..%3b/admin", PathReason.ENCODED_SEPARATOR),
        ("/hr/a%3Bb", PathReason.ENCODED_SEPARATOR),
        ("/x\\..\\admin", PathReason.BAD_CHARACTER),  # Windows servers read "\" as "/"
        ("/%C0%AE%C0%AE/admin", PathReason.BAD_UTF8),  # overlong ".": lax decoders see ".."
        ("/%E0%80%AE/admin", PathReason.BAD_UTF8),
        ("/admin%00.html", PathReason.ENCODED_CONTROL),
        ("/admin%0d%0aX:1", PathReason.ENCODED_CONTROL),
        ("/%zzadmin", PathReason.BAD_ESCAPE),
        ("/admin%4", PathReason.BAD_ESCAPE),
        ("/admin%", PathReason.BAD_ESCAPE),
        ("/a b", PathReason.BAD_CHARACTER),
        ("/\x7f", PathReason.BAD_CHARACTER),
        ("admin", PathReason.NOT_ABSOLUTE),
        ("", PathReason.NOT_ABSOLUTE),
        ("http://evil/admin", PathReason.NOT_ABSOLUTE),
        ("/" + "a" * MAX_PATH_BYTES, PathReason.TOO_LONG),
    ],
)
def test_ambiguous_paths_are_refused(raw: str, reason: PathReason) -> None:
    with pytest.raises(PathRejected) as refused:
        canonical_path(raw)
    assert refused.value.reason is reason


def test_raw_non_ascii_bytes_are_refused() -> None:
    with pytest.raises(PathRejected) as refused:
        canonical_path("/人事".encode())
    assert refused.value.reason is PathReason.BAD_CHARACTER


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ("/", "/"),
        ("/hr/", "/hr/"),
        ("/hr/.", "/hr/"),
        ("/hr/a/..", "/hr/"),
        ("/hr/;v=1", "/hr/"),
        ("/hr/%7euser", "/hr/~user"),  # unreserved: decoded
        ("/hr/%e4%ba%ba%e4%ba%8b", "/hr/%E4%BA%BA%E4%BA%8B"),  # others kept, upper-case hex
        ("/hr/a%20b", "/hr/a%20b"),
        ("/hr/report.pdf", "/hr/report.pdf"),
        ("/hr/..hidden", "/hr/..hidden"),  # only a whole ".." segment is a dot segment
        ("/Admin", "/Admin"),  # forwarded in its own case
    ],
)
def test_canonical_forms(raw: str, path: str) -> None:
    canonical = canonical_path(raw)
    assert canonical.path == path and canonical.key == path.lower()


_UNRESERVED_ESCAPES = {
    f"%{ord(c):02X}" for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
}
_SEGMENT = st.one_of(
    st.sampled_from(
        [".", "..", "", "admin", "ADMIN", "%2e", "%2E%2e", "%61dmin", ";x=1", "a;b", "%7E", "%E4%BA%BA"]
    ),
    st.text(alphabet="abcXYZ019-._~!$&'()*+,=:@", max_size=6),
)


@given(st.lists(_SEGMENT, max_size=10), st.booleans())
def test_the_canonical_form_is_canonical(segments: list[str], trailing: bool) -> None:
    raw = "/" + "/".join(segments) + ("/" if trailing else "")
    canonical = canonical_path(raw)
    path = canonical.path
    assert canonical_path(path) == canonical  # idempotent: checking again changes nothing
    assert path.startswith("/") and "//" not in path and ";" not in path
    assert not re.search(r"/\.\.?(/|$)", path)  # no dot segment survives
    escapes = {e.upper() for e in re.findall(r"%[0-9A-Fa-f]{2}", path)}
    assert not escapes & _UNRESERVED_ESCAPES  # unreserved characters are never left escaped
    assert canonical.key == path.lower()


@given(st.text(max_size=40))
def test_any_text_is_canonical_or_refused_never_an_error(text: str) -> None:
    raw = "/" + quote(text, safe="/;%.")
    try:
        canonical = canonical_path(raw)
    except PathRejected:
        return
    assert canonical_path(canonical.path) == canonical
