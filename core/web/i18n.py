"""Message catalogs and locale negotiation.

Catalogs are gettext ``.po`` files under ``<locale_dir>/<locale>/LC_MESSAGES/messages.po``;
``Catalogs.load`` compiles them in-process once at start-up (no build step, no ``.mo``
files). Message ids are English; ``en`` therefore needs no translations and falls back to
the id. A role passes its own locale directory and its catalog is merged over core's.

``negotiate_locale`` picks the locale of a request, first match wins:

1. ``ui_locales`` (OIDC Core 1.0 section 3.1.2.1: space-separated BCP 47 tags, preferred first),
2. the ``onegate_locale`` cookie,
3. ``Accept-Language`` (RFC 9110 section 12.5.4, q-values honoured),
4. the default locale (``zh_CN``).

Tags are matched case-insensitively; ``zh``, ``zh-CN``, ``zh-Hans`` (any Chinese tag, since
Simplified Chinese is the only Chinese catalog) select ``zh_CN``, and ``en-US`` selects ``en``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import babel.core
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

__all__ = ["CORE_LOCALE_DIR", "N_", "Catalogs", "html_lang", "negotiate_locale", "parse_accept_language"]

CORE_LOCALE_DIR = Path(__file__).parent / "locale"
DOMAIN = "messages"
# Bounds on attacker-supplied header parsing.
_MAX_HEADER_CHARS = 1024
_MAX_TAGS = 32


def N_(message: str) -> str:
    """Mark ``message`` for extraction without translating it now."""
    return message


def _compile(po_path: Path, locale: str) -> Translations:
    with po_path.open("rb") as fh:
        catalog = read_po(fh, locale=locale, domain=DOMAIN, abort_invalid=True)
    buffer = io.BytesIO()
    write_mo(buffer, catalog, use_fuzzy=False)  # fuzzy entries are unreviewed: never shown
    buffer.seek(0)
    return Translations(fp=buffer, domain=DOMAIN)


def _release_locale_data() -> None:
    """Drop Babel's global CLDR table once catalogs are compiled.

    Compiling parses each catalog's ``Language`` header (``Locale.parse``), and ``zh_CN`` is
    resolved through CLDR's likely subtags: Babel loads its global table (about 2 MiB) and
    keeps it for the life of the process. Nothing after start-up uses it (the compiled
    translations are gettext catalogs); ``babel.core.get_global`` loads it again if asked.
    """
    babel.core._global_data = None


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
            merged = _compile(core_po, locale)
            for directory in locale_dirs:
                extra = Path(directory) / locale / "LC_MESSAGES" / f"{DOMAIN}.po"
                if extra.is_file():
                    merged.merge(_compile(extra, locale))
            loaded[locale] = merged
        _release_locale_data()
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
