"""core.web.i18n: negotiation rules, in-process catalogs, and catalog completeness."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

from core.web.i18n import (
    CORE_LOCALE_DIR,
    CatalogError,
    Catalogs,
    compile_po,
    html_lang,
    negotiate_locale,
    parse_accept_language,
)

REPO = Path(__file__).resolve().parents[3]
SUPPORTED = ("zh_CN", "en")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("en-US,en;q=0.9,zh-CN;q=0.8", ["en-US", "en", "zh-CN"]),
        ("zh;q=0.5, en;q=0.9", ["en", "zh"]),
        ("fr;q=0, en", ["en"]),
        ("de;q=abc, en;q=0.1", ["en"]),
        ("en;q=2", []),
        ("", []),
        ("*", ["*"]),
        ("da, en-gb;q=0.8, en;q=0.7", ["da", "en-gb", "en"]),
    ],
)
def test_parse_accept_language(header: str, expected: list[str]) -> None:
    assert parse_accept_language(header) == expected


def test_parse_accept_language_is_bounded() -> None:
    assert len(parse_accept_language(",".join(["en"] * 10_000))) <= 32


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, "zh_CN"),
        ({"accept_language": "zh"}, "zh_CN"),
        ({"accept_language": "zh-CN"}, "zh_CN"),
        ({"accept_language": "zh-Hans"}, "zh_CN"),
        ({"accept_language": "zh-Hans-CN"}, "zh_CN"),
        ({"accept_language": "ZH_cn"}, "zh_CN"),
        ({"accept_language": "en-US"}, "en"),
        ({"accept_language": "fr, de"}, "zh_CN"),
        ({"accept_language": "*"}, "zh_CN"),
        ({"cookie": "en", "accept_language": "zh"}, "en"),
        ({"cookie": "klingon", "accept_language": "en"}, "en"),
        ({"ui_locales": "en zh-CN", "cookie": "zh_CN"}, "en"),
        ({"ui_locales": "fr-CA zh", "cookie": "en"}, "zh_CN"),
        ({"ui_locales": "", "cookie": "en"}, "en"),
    ],
)
def test_negotiate_locale(kwargs: dict[str, str], expected: str) -> None:
    assert negotiate_locale(supported=SUPPORTED, default="zh_CN", **kwargs) == expected


def test_html_lang() -> None:
    assert html_lang("zh_CN") == "zh-CN"
    assert html_lang("en") == "en"


def test_catalogs_translate_in_process() -> None:
    catalogs = Catalogs.load(locales=SUPPORTED, default_locale="zh_CN")
    assert catalogs.gettext("zh_CN", "OneGate") == "OneGate 统一身份门户"
    assert catalogs.gettext("en", "OneGate") == "OneGate"
    assert catalogs.gettext(None, "Request ID") == "请求编号"
    assert catalogs.gettext("fr", "Request ID") == "请求编号"  # unknown locale -> default


def test_role_catalogs_merge_over_core(tmp_path: Path) -> None:
    po_dir = tmp_path / "zh_CN" / "LC_MESSAGES"
    po_dir.mkdir(parents=True)
    (po_dir / "messages.po").write_text(
        'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=utf-8\\n"\n\n'
        'msgid "Sign in"\nmsgstr "登录"\n\nmsgid "Reason"\nmsgstr "理由"\n\n'
        '#, fuzzy\nmsgid "Unreviewed"\nmsgstr "未审校"\n',
        encoding="utf-8",
    )
    catalogs = Catalogs.load(locales=SUPPORTED, default_locale="zh_CN", locale_dirs=[tmp_path])
    assert catalogs.gettext("zh_CN", "Sign in") == "登录"
    assert catalogs.gettext("zh_CN", "Reason") == "理由"  # the role's wording wins
    assert catalogs.gettext("zh_CN", "Request ID") == "请求编号"  # core's still there
    assert catalogs.gettext("zh_CN", "Unreviewed") == "Unreviewed"  # fuzzy never shown
    assert catalogs.gettext("en", "Sign in") == "Sign in"


# Every construct of the gettext format that a catalog may hold; Babel (the catalogs' tool)
# reads the same file for the expected result.
EVERY_CONSTRUCT = r"""# A translator's comment.
msgid ""
msgstr ""
"Language: zh_CN\n"
"Plural-Forms: nplurals=2; plural=(n != 1);\n"
"Content-Type: text/plain; charset=utf-8\n"

#: core/web/app.py:10
#. an extracted comment
msgid "Plain"
msgstr "平常"

msgid ""
"Two "
"lines"
msgstr ""
"两"
"行"

msgid "Quote \" and backslash \\ and tab\tand newline\n"
msgstr "引号 \" 反斜杠 \\ 制表\t换行\n"

msgctxt "button"
msgid "Open"
msgstr "打开"

msgid "Open"
msgstr "开放"

msgid "{n} alert"
msgid_plural "{n} alerts"
msgstr[0] "{n} 条告警"
msgstr[1] "{n} 条告警们"

#, fuzzy, python-format
msgid "Unreviewed"
msgstr "未审校"

msgid "Untranslated"
msgstr ""

#~ msgid "Obsolete"
#~ msgstr "过时"
msgid "No blank line before"
msgstr "前面没有空行"
"""


def test_catalogs_compile_like_babel(tmp_path: Path) -> None:
    po = tmp_path / "messages.po"
    po.write_text(EVERY_CONSTRUCT, encoding="utf-8")
    with po.open("rb") as fh:
        catalog = read_po(fh, abort_invalid=True)
    mo = io.BytesIO()
    write_mo(mo, catalog, use_fuzzy=False)
    mo.seek(0)
    babel = Translations(fp=mo)
    ours = compile_po([po])

    def messages(translations: Translations) -> dict[object, str]:
        return {k: v for k, v in translations._catalog.items() if k}  # type: ignore[attr-defined]

    assert messages(ours) == messages(babel)  # Babel writes a header of its own
    assert ours.gettext("Two lines") == "两行"
    assert ours.gettext('Quote " and backslash \\ and tab\tand newline\n') == '引号 " 反斜杠 \\ 制表\t换行\n'
    assert ours.pgettext("button", "Open") == "打开" and ours.gettext("Open") == "开放"
    assert ours.ngettext("{n} alert", "{n} alerts", 1) == "{n} 条告警"
    assert ours.ngettext("{n} alert", "{n} alerts", 3) == "{n} 条告警们"  # this file's plural rule
    assert ours.gettext("Unreviewed") == "Unreviewed" and ours.gettext("Untranslated") == "Untranslated"
    assert ours.gettext("Obsolete") == "Obsolete" and ours.gettext("No blank line before") == "前面没有空行"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('msgid "a"\nmsgstr "b\n', ":2: expected a double-quoted string"),
        ('msgid "a"\nmsgstr "b" x\n', ":2: expected a double-quoted string"),
        ('"stray"\n', ":1: a string that continues no field"),
        ('msgid "a"\nmsgtxt "b"\n', ":2: unknown field 'msgtxt'"),
        ('msgid "a"\nmsgstr "\\q"\n', ":2: not a valid string"),
    ],
)
def test_a_broken_catalog_names_file_and_line(tmp_path: Path, text: str, where: str) -> None:
    po = tmp_path / "zh_CN" / "LC_MESSAGES" / "messages.po"
    po.parent.mkdir(parents=True)
    po.write_text(text, encoding="utf-8")
    with pytest.raises(CatalogError, match=re.escape(f"{po}{where}")):
        Catalogs.load(locales=("zh_CN",), default_locale="zh_CN", locale_dirs=[tmp_path])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"locales": ("zh_CN", "en"), "default_locale": "fr"}, "default_locale"),
        ({"locales": ("zh_CN", "ja"), "default_locale": "zh_CN"}, "no catalog"),
        ({"locales": (), "default_locale": "zh_CN"}, "at least one"),
    ],
)
def test_bad_locale_configuration(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Catalogs.load(**kwargs)  # type: ignore[arg-type]


def _extracted_ids() -> set[str]:
    with (REPO / "babel.cfg").open(encoding="utf-8") as fh:
        method_map, options_map = parse_mapping_cfg(fh)
    ids: set[str] = set()
    for _, _, message, _, _ in extract_from_dir(str(REPO / "core" / "web"), method_map, options_map):
        ids.add(message if isinstance(message, str) else message[0])
    return ids


def _catalog(locale: str) -> dict[str, tuple[str, bool]]:
    with (CORE_LOCALE_DIR / locale / "LC_MESSAGES" / "messages.po").open("rb") as fh:
        catalog = read_po(fh, locale=locale)
    return {m.id: (m.string, m.fuzzy) for m in catalog if m.id and isinstance(m.id, str)}


def test_every_extracted_message_is_translated_to_chinese() -> None:
    extracted = _extracted_ids()
    assert "The page you requested was not found." in extracted  # from Python (N_)
    assert "Skip to main content" in extracted  # from templates
    zh = _catalog("zh_CN")
    missing = sorted(i for i in extracted if not zh.get(i, ("", False))[0])
    assert missing == []
    assert not [i for i, (_, fuzzy) in zh.items() if fuzzy]


def test_catalogs_hold_no_stale_messages() -> None:
    extracted = _extracted_ids()
    assert set(_catalog("zh_CN")) == extracted
    assert set(_catalog("en")) == extracted
