"""A minimal scripted browser for end-to-end tests over real HTTP: cookies, redirects, forms.

It follows redirects itself so a test can stop at a relying party's redirect URI, and fills
HTML forms the way a user would: every field the page rendered (hidden CSRF tokens included)
is sent back, with the test's values for the visible ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import requests


@dataclass
class Form:
    action: str
    method: str
    fields: list[tuple[str, str, str]] = field(default_factory=list)  # (name, type, value)
    buttons: list[tuple[str, str]] = field(default_factory=list)  # (name, value) of submit buttons


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(Form(action=a.get("action", ""), method=a.get("method", "get").lower()))
        elif self.forms and tag in ("input", "button") and a.get("name"):
            kind = a.get("type", "text" if tag == "input" else "submit").lower()
            if kind == "submit":
                self.forms[-1].buttons.append((a["name"], a.get("value", "")))
            else:
                self.forms[-1].fields.append((a["name"], kind, a.get("value", "")))


def forms(html: str) -> list[Form]:
    parser = _FormParser()
    parser.feed(html)
    return parser.forms


class Browser:
    def __init__(self, *, host_header: str | None = None) -> None:
        self.http = requests.Session()
        self.host_header = host_header
        self.page: requests.Response | None = None

    def get(self, url: str, *, stop_at: str | None = None) -> requests.Response:
        return self._follow(self.http.get(url, allow_redirects=False, timeout=10), stop_at)

    def submit(
        self,
        form: Form,
        values: dict[str, str],
        *,
        button: tuple[str, str] | None = None,
        stop_at: str | None = None,
    ) -> requests.Response:
        assert self.page is not None
        data = [(name, values.get(name, value)) for name, _kind, value in form.fields]
        if button is not None:
            data.append(button)
        url = urljoin(self.page.url, form.action or self.page.url)
        response = self.http.request(form.method.upper(), url, data=data, allow_redirects=False, timeout=10)
        return self._follow(response, stop_at)

    def _follow(self, response: requests.Response, stop_at: str | None) -> requests.Response:
        for _ in range(20):
            location = response.headers.get("location")
            if response.status_code not in (301, 302, 303, 307) or location is None:
                break
            target = urljoin(response.url, location)
            if stop_at is not None and target.startswith(stop_at):
                response.headers["location"] = target
                return response
            response = self.http.get(target, allow_redirects=False, timeout=10)
        self.page = response
        return response

    def form(self, having: str) -> Form:
        """The page's first form with a field or button named ``having``."""
        assert self.page is not None
        for candidate in forms(self.page.text):
            names = [f[0] for f in candidate.fields] + [b[0] for b in candidate.buttons]
            if having in names:
                return candidate
        raise AssertionError(
            f"no form with {having!r} on {urlsplit(self.page.url).path}: {self.page.text[:2000]}"
        )
