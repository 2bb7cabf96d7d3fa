"""The pages' catalogs: every message the pages can show has a Chinese translation, none is stale."""

from __future__ import annotations

from pathlib import Path

from babel.messages.extract import extract_from_dir, extract_from_file
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

from idp.pages import LOCALE_DIR

REPO = Path(__file__).resolve().parents[3]


def _extracted_ids() -> set[str]:
    with (REPO / "babel.cfg").open(encoding="utf-8") as fh:
        method_map, options_map = parse_mapping_cfg(fh)
    found = list(extract_from_dir(str(REPO / "idp" / "pages"), method_map, options_map))
    # The password policy's reasons are shown by the password page, from this catalog.
    policy = extract_from_file("python", str(REPO / "idp" / "directory" / "policy.py"))
    messages = [entry[2] for entry in found] + [entry[1] for entry in policy]
    return {message if isinstance(message, str) else message[0] for message in messages}


def _catalog(locale: str) -> dict[str, tuple[str, bool]]:
    with (LOCALE_DIR / locale / "LC_MESSAGES" / "messages.po").open("rb") as fh:
        catalog = read_po(fh, locale=locale)
    return {m.id: (m.string, m.fuzzy) for m in catalog if m.id and isinstance(m.id, str)}


def test_every_message_is_translated_to_chinese() -> None:
    extracted = _extracted_ids()
    assert "Sign in" in extracted  # templates
    assert "You have signed out." in extracted  # Python (N_)
    assert "Use at least %(min_length)s characters." in extracted  # the policy
    zh = _catalog("zh_CN")
    assert sorted(i for i in extracted if not zh.get(i, ("", False))[0]) == []
    assert not [i for i, (_, fuzzy) in zh.items() if fuzzy]


def test_catalogs_hold_no_stale_messages() -> None:
    extracted = _extracted_ids()
    assert set(_catalog("zh_CN")) == extracted
    assert set(_catalog("en")) == extracted
    assert all(not string for string, _ in _catalog("en").values())  # English falls back to the ids
