"""Message catalogs and locale negotiation.

Catalogs are gettext ``.po`` files under ``<locale_dir>/<locale>/LC_MESSAGES/messages.po``;
``Catalogs.load`` compiles them in-process once at start-up (no build step, no ``.mo``
files) into the standard library's ``gettext`` translations: the servers do not import
Babel, which stays the tool that extracts and updates the catalogs (docs/i18n.md). Message
ids are English; ``en`` therefore needs no translations and falls back to the id. A role
passes its own locale directory and its catalog is merged over core's.

``negotiate_locale`` picks the locale of a request, first match wins:

1. ``ui_locales`` (OIDC Core 1.0 section 3.1.2.1: space-separated BCP 47 tags, preferred first),
2. the ``onegate_locale`` cookie,
3. ``Accept-Language`` (RFC 9110 section 12.5.4, q-values honoured),
4. the default locale (``zh_CN``).

Tags are matched case-insensitively; ``zh``, ``zh-CN``, ``zh-Hans`` (any Chinese tag, since
Simplified Chinese is the only Chinese catalog) select ``zh_CN``, and ``en-US`` selects ``en``.
"""

from __future__ import annotations

import ast
import io
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from gettext import GNUTranslations as Translations
from pathlib import Path

__all__ = [
    "CORE_LOCALE_DIR",
    "N_",
    "CatalogError",
    "Catalogs",
    "compile_po",
    "html_lang",
    "negotiate_locale",
    "parse_accept_language",
]

CORE_LOCALE_DIR = Path(__file__).parent / "locale"
DOMAIN = "messages"
# Bounds on attacker-supplied header parsing.
_MAX_HEADER_CHARS = 1024
_MAX_TAGS = 32


def N_(message: str) -> str:
    """Mark ``message`` for extraction without translating it now."""
    return message


class CatalogError(ValueError):
    """A ``.po`` file that is not valid gettext syntax (the message names file and line)."""


def _entries(po_path: Path) -> Iterator[tuple[bytes, bytes]]:
    """The translated, non-fuzzy messages of a ``.po`` file as ``.mo`` keys and values: the
    header under ``b""``, ``msgctxt`` joined with EOT, plural forms joined with NUL."""
    fields: dict[str, list[str]] = {}
    flags = ""
    last: list[str] | None = None  # the field that a continued string adds to

    def done() -> tuple[bytes, bytes] | None:
        msgid = "".join(fields["msgid"])
        if "msgid_plural" in fields:
            forms = sorted((key for key in fields if key.startswith("msgstr[")), key=lambda k: int(k[7:-1]))
            key = msgid + "\0" + "".join(fields["msgid_plural"])
            value = "\0".join("".join(fields[form]) for form in forms)
        else:
            key, value = msgid, "".join(fields.get("msgstr", []))
        if "msgctxt" in fields:
            key = "".join(fields["msgctxt"]) + "\x04" + key
        if not value.strip("\0") or ("fuzzy" in flags and msgid):  # untranslated or unreviewed
            return None
        return key.encode(), value.encode()

    lines = po_path.read_text(encoding="utf-8").splitlines()
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if line.startswith('"'):
            if last is None:
                raise CatalogError(f"{po_path}:{number}: a string that continues no field")
            last.append(_string(line, po_path, number))
            continue
        name, _, rest = line.partition(" ")
        starts = not line or line.startswith("#") or name in ("msgctxt", "msgid")
        if starts and "msgid" in fields:  # the entry before this line is complete
            if (found := done()) is not None:
                yield found
            fields, flags = {}, ""
        if not line or line.startswith("#"):
            if line.startswith("#,"):
                flags += line[2:]
            last = None  # obsolete entries (#~) and comments are not messages
            continue
        if name not in ("msgctxt", "msgid", "msgid_plural", "msgstr") and not name.startswith("msgstr["):
            raise CatalogError(f"{po_path}:{number}: unknown field {name!r}")
        last = fields.setdefault(name, [])
        last.append(_string(rest.strip(), po_path, number))
    if "msgid" in fields and (found := done()) is not None:
        yield found


def _string(quoted: str, po_path: Path, number: int) -> str:
    """One double-quoted C string of a ``.po`` file."""
    if len(quoted) < 2 or not (quoted.startswith('"') and quoted.endswith('"')):
        raise CatalogError(f"{po_path}:{number}: expected a double-quoted string")
    try:
        value = ast.literal_eval(quoted)
    except (ValueError, SyntaxError):
        raise CatalogError(f"{po_path}:{number}: not a valid string") from None
    if not isinstance(value, str):
        raise CatalogError(f"{po_path}:{number}: not a valid string")
    return value


def _mo(messages: Mapping[bytes, bytes]) -> bytes:
    """A GNU ``.mo`` file of ``messages`` (little-endian, no hash table)."""
    keys = sorted(messages)
    ids = strings = b""
    table: list[tuple[int, int, int, int]] = []
    for key in keys:
        table.append((len(key), len(ids), len(messages[key]), len(strings)))
        ids += key + b"\0"
        strings += messages[key] + b"\0"
    count = len(keys)
    start_ids = 28 + 16 * count
    start_strings = start_ids + len(ids)
    head = struct.pack("<7I", 0x950412DE, 0, count, 28, 28 + 8 * count, 0, 0)
    originals = b"".join(struct.pack("<2I", length, start_ids + at) for length, at, _, _ in table)
    translated = b"".join(struct.pack("<2I", length, start_strings + at) for _, _, length, at in table)
    return head + originals + translated + ids + strings


def compile_po(po_paths: Sequence[Path]) -> Translations:
    """One catalog of ``po_paths``, each merged over the ones before it (the first one's header)."""
    messages: dict[bytes, bytes] = {}
    for index, po_path in enumerate(po_paths):
        for key, value in _entries(po_path):
            if key or not index:
                messages[key] = value
    return Translations(io.BytesIO(_mo(messages)))


@dataclass(frozen=True)
class Catalogs:
    """Compiled translations per locale, immutable after start-up."""

    default_locale: str
    translations: Mapping[str, Translations]

    @classmethod
    def load(
        cls, *, locales: Sequence[str], default_locale: str, locale_dirs: Sequence[Path] = ()
    ) -> Catalogs:
        """Compile core's catalogs, then merge each of ``locale_dirs`` over them in order.

        Raises ``ValueError`` when ``default_locale`` is not in ``locales`` or core has no
        catalog for one of ``locales``.
        """
        if not locales:
            raise ValueError("locales: at least one locale is required")
        if default_locale not in locales:
            raise ValueError(f"default_locale {default_locale!r} is not one of locales {list(locales)}")
        loaded: dict[str, Translations] = {}
        for locale in locales:
            core_po = CORE_LOCALE_DIR / locale / "LC_MESSAGES" / f"{DOMAIN}.po"
            if not core_po.is_file():
                raise ValueError(f"locales: no catalog for {locale!r} at {core_po}")
            extras = [Path(directory) / locale / "LC_MESSAGES" / f"{DOMAIN}.po" for directory in locale_dirs]
            loaded[locale] = compile_po([core_po, *(extra for extra in extras if extra.is_file())])
        return cls(default_locale=default_locale, translations=loaded)

    @property
    def locales(self) -> tuple[str, ...]:
        return tuple(self.translations)

    def get(self, locale: str | None) -> Translations:
        """The translations for ``locale``, or the default locale's."""
        return self.translations.get(locale or "", self.translations[self.default_locale])

    def gettext(self, locale: str | None, message: str) -> str:
        result: str = self.get(locale).gettext(message)
        return result


def _tag(value: str) -> str:
    return value.strip().replace("_", "-").lower()


def _match(tag: str, supported: Sequence[str]) -> str | None:
    """The supported locale for one language tag: exact, then by primary language."""
    wanted = _tag(tag)
    if not wanted or wanted == "*":
        return None
    for locale in supported:
        if _tag(locale) == wanted:
            return locale
    primary = wanted.split("-", 1)[0]
    for locale in supported:
        if _tag(locale).split("-", 1)[0] == primary:
            return locale
    return None


def parse_accept_language(header: str) -> list[str]:
    """Language tags of an Accept-Language header, most preferred first, q=0 dropped."""
    weighted: list[tuple[float, int, str]] = []
    for index, item in enumerate(header[:_MAX_HEADER_CHARS].split(",")[:_MAX_TAGS]):
        tag, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = -1.0
        if tag and 0.0 < quality <= 1.0:
            weighted.append((-quality, index, tag))
    return [tag for _, _, tag in sorted(weighted)]


def negotiate_locale(
    *,
    supported: Sequence[str],
    default: str,
    ui_locales: str | None = None,
    cookie: str | None = None,
    accept_language: str | None = None,
) -> str:
    """The locale for a request (order in the module docstring)."""
    if ui_locales:
        for tag in ui_locales[:_MAX_HEADER_CHARS].split()[:_MAX_TAGS]:
            if (found := _match(tag, supported)) is not None:
                return found
    if cookie and (found := _match(cookie[:64], supported)) is not None:
        return found
    if accept_language:
        for tag in parse_accept_language(accept_language):
            if (found := _match(tag, supported)) is not None:
                return found
    return default


def html_lang(locale: str) -> str:
    """The BCP 47 tag for ``<html lang>``: ``zh_CN`` -> ``zh-CN``."""
    return locale.replace("_", "-")
