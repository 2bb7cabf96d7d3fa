"""Fixtures of the real-browser tests: Debian's Chromium through Playwright, and a real IdP process.

Browser side (Playwright's async API, see tests/e2e/playwright_support.py for why not the sync
one): ``browser`` — one Chromium for the whole session; ``context`` — a fresh browser context
per test (no cookies, ``zh-CN``, Asia/Shanghai); ``page`` — a tab in it, screenshotted when the
test fails; ``authenticator`` — a virtual passkey authenticator on that page; ``screenshots`` —
PNGs under the test's temporary directory.

Every coroutine test in this directory runs on pytest-asyncio's *session* event loop (added
below), the loop the browser lives on; a test needs no asyncio mark of its own.

IdP side: ``idp_server`` — one ``onegate serve --role idp`` process per test module, with a data
dir of its own, reached by the browser at ``http://idp.localhost:<port>`` (the issuer): WebAuthn
refuses an IP address as RP id. ``start_idp(settings)`` starts one for a single test with extra
``ONEGATE_*`` settings. Users and clients are made with the real CLI (``add_user``,
``add_client``, ``cli``). Python code cannot resolve ``idp.localhost`` (glibc does not map
``*.localhost``), so ``IdpServer.http()`` sends its requests to 127.0.0.1 with the
``idp.localhost`` Host header.
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import pytest_asyncio
import requests
from playwright.async_api import Browser, BrowserContext, Page
from pytest_asyncio import is_async_test
from requests.adapters import HTTPAdapter

from tests.e2e.browser import Browser as FormBrowser
from tests.e2e.browser import forms as html_forms
from tests.e2e.playwright_support import Screenshots, VirtualAuthenticator, launch_chromium
from tests.onegate.conftest import ONEGATE, clean_env

IDP_HOST = "idp.localhost"
_HERE = Path(__file__).parent
_FAILED = pytest.StashKey[bool]()


# -- the event loop of the browser tests ---------------------------------------------------------


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run this directory's coroutine tests on the session loop, where ``browser`` lives."""
    session_loop = pytest.mark.asyncio(loop_scope="session")
    for item in items:
        if is_async_test(item) and _HERE in Path(item.path).parents:
            item.add_marker(session_loop, append=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.when == "call" and report.failed:
        item.stash[_FAILED] = True
    return report


# -- the browser ---------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, one for the session (fails, never skips, when missing)."""
    async with launch_chromium() as chromium:
        yield chromium


@pytest_asyncio.fixture(loop_scope="session")
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    """A fresh profile for one test: a Shanghai civil servant's browser (UI in zh-CN)."""
    ctx = await browser.new_context(locale="zh-CN", timezone_id="Asia/Shanghai")
    # A page that does not come within 10 s will not come: fail fast rather than at 30 s.
    ctx.set_default_timeout(10_000)
    yield ctx
    await ctx.close()


@pytest.fixture
def screenshots(tmp_path: Path) -> Screenshots:
    """PNG screenshots under ``<tmp_path>/screenshots`` (pytest keeps the last three runs)."""
    return Screenshots(tmp_path / "screenshots")


@pytest_asyncio.fixture(loop_scope="session")
async def page(
    context: BrowserContext, screenshots: Screenshots, request: pytest.FixtureRequest
) -> AsyncIterator[Page]:
    """A tab in ``context``; when the test fails, its last state is saved as ``failure.png``."""
    tab = await context.new_page()
    yield tab
    if request.node.stash.get(_FAILED, False) and not tab.is_closed():
        path = await screenshots.take(tab, "failure")
        print(f"screenshot of the failed test: {path}")


@pytest_asyncio.fixture(loop_scope="session")
async def authenticator(page: Page) -> VirtualAuthenticator:
    """A virtual platform authenticator on ``page`` (ctap2, internal, resident keys, UV)."""
    return await VirtualAuthenticator.attach(page)


# -- the IdP -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LoopbackAdapter(HTTPAdapter):
    """Sends ``http://<name>.localhost:<port>/...`` to 127.0.0.1 with the original Host header.

    Chromium and curl map ``*.localhost`` to loopback themselves; glibc does not, so Python
    cannot resolve ``idp.localhost``. The response keeps the URL that was asked for, so cookies
    stay with ``idp.localhost`` and relative redirects resolve against it.
    """

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        asked = request.url or ""
        parts = urlsplit(asked)
        if not (parts.hostname or "").endswith(".localhost"):
            return super().send(request, **kwargs)
        sent = request.copy()
        sent.url = urlunsplit(parts._replace(netloc=f"127.0.0.1:{parts.port or 80}"))
        sent.headers["Host"] = parts.netloc
        response = super().send(sent, **kwargs)
        response.url = asked
        response.request = request
        return response


def loopback_session() -> requests.Session:
    """A ``requests`` session that reaches ``*.localhost`` servers (see ``LoopbackAdapter``)."""
    session = requests.Session()
    session.mount("http://", LoopbackAdapter())
    return session


@dataclass(frozen=True)
class IdpUser:
    """A user made with ``onegate user add``; ``password`` is the one they sign in with."""

    username: str
    name: str
    password: str
    record: Mapping[str, Any] = field(repr=False)


class IdpServer:
    """A real ``onegate serve --role idp`` process with a data dir of its own (``start()``)."""

    def __init__(self, root: Path, *, settings: Mapping[str, str] | None = None) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.origin = f"http://{IDP_HOST}:{self.port}"
        self.data_dir = root / "data"
        self.log_path = root / "idp.log"
        self.env = clean_env(
            {"ONEGATE_IDP__ISSUER": self.origin, "ONEGATE_DATA_DIR": str(self.data_dir), **(settings or {})}
        )
        self._process: subprocess.Popen[bytes] | None = None
        self._http = loopback_session()

    @property
    def issuer(self) -> str:
        return self.origin

    def url(self, path: str = "/") -> str:
        """``path`` on the IdP, as the browser reaches it: ``http://idp.localhost:<port><path>``."""
        return f"{self.origin}{path}"

    def http(self) -> requests.Session:
        """A fresh Python-side HTTP session (own cookies) that reaches the IdP at ``idp.localhost``."""
        return loopback_session()

    def log(self) -> str:
        """What the server has written so far (JSON access and application logs)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- process -------------------------------------------------------------------------------

    def start(self, timeout: float = 30) -> IdpServer:
        self.cli("init")
        with self.log_path.open("wb") as log:
            # Logs to a file, not a pipe: nobody reads a pipe while the test runs, and a full
            # pipe would block the server mid-request.
            self._process = subprocess.Popen(
                [*ONEGATE, "serve", "--role", "idp", "--port", str(self.port), "--host", "127.0.0.1"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the IdP did not start on {self.origin}:\n{self.log()[-4000:]}")
            time.sleep(0.05)
        return self

    def _ready(self) -> bool:
        try:
            return self._http.get(self.url("/readyz"), timeout=5).status_code == 200
        except requests.RequestException:  # not listening yet, or too busy starting to answer
            return False

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(10)
        self._process = None
        self._http.close()

    # -- the CLI -------------------------------------------------------------------------------

    def cli(self, *args: str, as_json: bool = True) -> Any:
        """Run ``onegate <args> [--json]`` against this IdP's data dir; the parsed JSON output
        (or the text without ``as_json``). A failing command fails the test with its stderr."""
        command = [*ONEGATE, *args, *(["--json"] if as_json else [])]
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, f"onegate {' '.join(args)}: exit {done.returncode}\n{done.stderr}"
        return json.loads(done.stdout) if as_json else done.stdout

    def add_user(
        self,
        username: str | None = None,
        *,
        name: str = "测试用户",
        email: str | None = None,
        department: str | None = None,
        groups: Sequence[str] = (),
        activate: bool = True,
    ) -> IdpUser:
        """``onegate user add``; ``username`` defaults to a unique ``u-<hex>``.

        The CLI gives a one-time password that must be changed at the first sign-in. With
        ``activate`` (the default) that first sign-in, the change and a sign-out are done here
        over HTTP, so the returned password signs the user straight in to ``/account`` and the
        user has no session yet; without it the returned password is the one-time one.
        """
        username = username or f"u-{secrets.token_hex(4)}"
        args = ["user", "add", username, "--name", name]
        for option, value in (("--email", email), ("--department", department)):
            if value is not None:
                args += [option, value]
        for group in groups:
            args += ["--group", group]
        record = dict(self.cli(*args))
        password = str(record["password"])
        if activate:
            password = self.change_first_password(username, password)
        return IdpUser(username=username, name=name, password=password, record=record)

    def change_first_password(self, username: str, one_time_password: str) -> str:
        """Sign in with the one-time password through the real forms and set a new one."""
        new_password = "Og-" + secrets.token_urlsafe(15)
        forms = FormBrowser()
        forms.http.mount("http://", LoopbackAdapter())
        try:
            forms.get(self.url("/login"))
            page = forms.submit(forms.form("password"), {"username": username, "password": one_time_password})
            assert urlsplit(page.url).path == "/password", f"{username}: sign-in ended at {page.url}"
            page = forms.submit(
                forms.form("new_password"),
                {
                    "current_password": one_time_password,
                    "new_password": new_password,
                    "confirm_password": new_password,
                },
            )
            assert urlsplit(page.url).path == "/account", f"{username}: password change ended at {page.url}"
            # Sign this helper's session out again: the test's browser should find the user with
            # no session but its own (the account page lists them, logout-everywhere ends them).
            logout = next(f for f in html_forms(page.text) if f.action.endswith("/account/logout"))
            page = forms.submit(logout, {})
            assert urlsplit(page.url).path == "/login", f"{username}: sign-out ended at {page.url}"
        finally:
            forms.http.close()
        return new_password

    def add_client(
        self,
        *,
        name: str,
        redirect_uris: Sequence[str],
        name_en: str | None = None,
        first_party: bool = False,
        public: bool = False,
        scopes: Sequence[str] = ("openid", "profile", "email"),
        grant_types: Sequence[str] = ("authorization_code", "refresh_token"),
        extra: Sequence[str] = (),
    ) -> dict[str, Any]:
        """``onegate client add``: the record, with ``client_id`` (and ``client_secret``, printed
        once, for a confidential client). ``extra`` are further CLI options as they are typed,
        e.g. ``("--minimum-acr", "urn:onegate:acr:phr")``."""
        args = ["client", "add", "--name", name]
        if name_en is not None:
            args += ["--name-en", name_en]
        for uri in redirect_uris:
            args += ["--redirect-uri", uri]
        for scope in scopes:
            args += ["--scope", scope]
        for grant in grant_types:
            args += ["--grant-type", grant]
        if first_party:
            args.append("--first-party")
        if public:
            args.append("--public")
        return dict(self.cli(*args, *extra))


@pytest.fixture(scope="module")
def idp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdpServer]:
    """One IdP per test module (default settings). Tests share it: make your own users."""
    server = IdpServer(tmp_path_factory.mktemp("idp")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_idp(tmp_path: Path) -> Iterator[Callable[..., IdpServer]]:
    """``start_idp({"ONEGATE_MFA__REQUIRED": "true"})``: an IdP of this test's own, with extra
    ``ONEGATE_*`` settings; stopped when the test ends."""
    started: list[IdpServer] = []

    def start(settings: Mapping[str, str] | None = None) -> IdpServer:
        server = IdpServer(tmp_path / f"idp-{len(started) + 1}", settings=settings)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
