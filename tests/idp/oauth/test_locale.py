"""Every message of the protocol pages has a Chinese translation; pages render in both languages."""

from __future__ import annotations

from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from core.web.i18n import CORE_LOCALE_DIR
from idp.endpoints import LOCALE_DIR

REPO = Path(__file__).resolve().parents[3]


def _catalog(directory: Path, locale: str) -> dict[str, str]:
    with (directory / locale / "LC_MESSAGES" / "messages.po").open("rb") as fh:
        return {str(m.id): str(m.string) for m in read_po(fh, locale=locale) if m.id}


def test_every_message_is_translated_to_chinese() -> None:
    method_map = [("**.py", "python"), ("**/templates/**.html", "jinja2")]
    options = {"**/templates/**.html": {"extensions": "jinja2.ext.i18n"}}
    extracted = {
        str(message)
        for _, _, message, _, _ in extract_from_dir(str(REPO / "idp" / "endpoints"), method_map, options)
    }
    assert "Sign out of OneGate?" in extracted
    zh = {**_catalog(CORE_LOCALE_DIR, "zh_CN"), **_catalog(LOCALE_DIR, "zh_CN")}
    assert sorted(m for m in extracted if not zh.get(m)) == []
    assert set(_catalog(LOCALE_DIR, "en")) == set(_catalog(LOCALE_DIR, "zh_CN"))
