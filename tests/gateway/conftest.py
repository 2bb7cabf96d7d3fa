"""Fixtures of the gateway tests: a real IdP process with a registered gateway client.

``oidc_idp`` — one ``onegate serve --role idp`` per test module (``tests.e2e.conftest.IdpServer``),
reached at ``http://idp.localhost:<port>``, with departments ``city`` > ``hrss``, the group
``hr-staff``, two users in both (imported from CSV), a first-party confidential client (the
gateway's registration: ``--backchannel-logout-uri`` pointing at a ``LogoutReceiver`` on
127.0.0.1) and a third-party client (which shows the consent page, so a user can refuse it).

``IdpBrowser`` drives the IdP's real sign-in forms without a browser: it follows redirects until
the relying party's redirect URI and returns the query the relying party would receive.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from tests.e2e.browser import Browser as FormBrowser
from tests.e2e.conftest import IdpServer, IdpUser, LoopbackAdapter

GATEWAY_SCOPES = ("openid", "profile", "email", "groups", "department")
REDIRECT_URI = "http://hr.localhost:8443/.onegate/callback"
THIRD_PARTY_REDIRECT_URI = "http://oa.localhost:8443/.onegate/callback"
POST_LOGOUT_URI = "http://hr.localhost:8443/.onegate/logout"


# -- a back-channel logout receiver ----------------------------------------------------------------


class _ReceiverHandler(BaseHTTPRequestHandler):
    server: _ReceiverServer

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(min(length, 64 * 1024)).decode("utf-8", "replace")
        with self.server.lock:
            self.server.received.append((self.path, dict(parse_qsl(body))))
            self.server.arrived.notify_all()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep pytest's output clean


class _ReceiverServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        self.received: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)


class LogoutReceiver:
    """The relying party's back-channel logout endpoint (a thread on 127.0.0.1): records every
    POSTed form (Back-Channel Logout 1.0 §2.5) and answers 200."""

    def __init__(self) -> None:
        self._server = _ReceiverServer()
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def tokens(self) -> list[str]:
        with self._server.lock:
            return [form.get("logout_token", "") for _, form in self._server.received]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[str]:
        """The logout tokens, once at least ``count`` have arrived (fails after ``timeout``)."""
        with self._server.arrived:
            arrived = self._server.arrived.wait_for(lambda: len(self._server.received) >= count, timeout)
        tokens = self.tokens()
        assert arrived, f"{len(tokens)} logout token(s) arrived, {count} expected"
        return tokens

    def __enter__(self) -> LogoutReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


# -- driving the IdP's forms ------------------------------------------------------------------------


class IdpBrowser:
    """A scripted browser for the IdP at ``idp.localhost`` (cookies per host, real forms)."""

    def __init__(self) -> None:
        self.forms = FormBrowser()
        self.forms.http.mount("http://", LoopbackAdapter())

    @property
    def page(self) -> requests.Response:
        assert self.forms.page is not None
        return self.forms.page

    def open(self, url: str, *, stop_at: str) -> requests.Response:
        return self.forms.get(url, stop_at=stop_at)

    def submit(
        self, having: str, values: Mapping[str, str], *, stop_at: str, button: tuple[str, str] | None = None
    ) -> requests.Response:
        return self.forms.submit(self.forms.form(having), dict(values), button=button, stop_at=stop_at)

    def sign_in(self, authorization_url: str, user: IdpUser, *, stop_at: str) -> requests.Response:
        """Open the authorization URL and sign in with the user's password; the response the
        browser stopped at (a redirect to ``stop_at``, or the page the IdP showed next)."""
        page = self.open(authorization_url, stop_at=stop_at)
        assert urlsplit(page.url).path == "/login", f"not the login page: {page.url}"
        return self.submit(
            "password", {"username": user.username, "password": user.password}, stop_at=stop_at
        )

    def close(self) -> None:
        self.forms.http.close()


def callback_query(response: requests.Response, redirect_uri: str) -> dict[str, str]:
    """The query of the redirect to ``redirect_uri`` that ``response`` is."""
    location = response.headers.get("location", "")
    assert response.status_code in (302, 303) and location.startswith(redirect_uri), (
        f"no redirect to the relying party: {response.status_code} {response.url}\n{response.text[:1500]}"
    )
    return dict(parse_qsl(urlsplit(location).query, keep_blank_values=True))


# -- the IdP ------------------------------------------------------------------------------------

USERS_CSV = """username,display_name,email,phone,department,groups
zhangwei,张伟,zhangwei@hrss.city.gov.cn,,hrss,hr-staff
lina,李娜,lina@hrss.city.gov.cn,,hrss,hr-staff
"""


@dataclass(frozen=True)
class OidcIdp:
    """The module's IdP and what is registered at it. ``user`` signs in with a password only;
    ``stepped_up_user`` is kept for a test that adds a second factor to it."""

    server: IdpServer
    user: IdpUser
    stepped_up_user: IdpUser
    client_id: str
    client_secret: str
    third_party_id: str
    third_party_secret: str
    receiver: LogoutReceiver

    @property
    def issuer(self) -> str:
        return self.server.issuer


def _import_users(server: IdpServer, root: Path) -> dict[str, IdpUser]:
    """Departments ``city`` > ``hrss`` and the users of ``USERS_CSV``, passwords changed."""
    server.cli("user", "departments", "add", "city", "市政府", as_json=False)
    server.cli(
        "user", "departments", "add", "hrss", "市人力资源和社会保障局", "--parent", "city", as_json=False
    )
    csv_path = root / "users.csv"
    csv_path.write_text(USERS_CSV, encoding="utf-8")
    report = server.cli("user", "import", str(csv_path), "--create-groups")
    names = {row.split(",")[0]: row.split(",")[1] for row in USERS_CSV.splitlines()[1:]}
    users = {}
    for entry in report["passwords"]:
        username = entry["username"]
        password = server.change_first_password(username, entry["password"])
        users[username] = IdpUser(username=username, name=names[username], password=password, record=entry)
    return users


@pytest.fixture(scope="module")
def oidc_idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcIdp]:
    """One real IdP per test module, with the gateway registered as a first-party client."""
    root = tmp_path_factory.mktemp("oidc-idp")
    server = IdpServer(root).start()
    try:
        with LogoutReceiver() as receiver, ThreadPoolExecutor(3) as pool:
            # Three independent CLI runs at once (each is a process start of a second or two).
            users = pool.submit(_import_users, server, root)
            gateway = pool.submit(
                server.add_client,
                name="统一网关",
                name_en="Gateway",
                redirect_uris=[REDIRECT_URI],
                first_party=True,
                scopes=GATEWAY_SCOPES,
                grant_types=("authorization_code",),
                extra=(
                    "--backchannel-logout-uri",
                    receiver.url("/.onegate/backchannel-logout"),
                    "--post-logout-redirect-uri",
                    POST_LOGOUT_URI,
                ),
            )
            third_party = pool.submit(
                server.add_client,
                name="协同办公系统",
                name_en="Office automation",
                redirect_uris=[THIRD_PARTY_REDIRECT_URI],
                scopes=GATEWAY_SCOPES,
                grant_types=("authorization_code",),
            )
            yield OidcIdp(
                server=server,
                user=users.result()["zhangwei"],
                stepped_up_user=users.result()["lina"],
                client_id=gateway.result()["client_id"],
                client_secret=gateway.result()["client_secret"],
                third_party_id=third_party.result()["client_id"],
                third_party_secret=third_party.result()["client_secret"],
                receiver=receiver,
            )
    finally:
        server.stop()
