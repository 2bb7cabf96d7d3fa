"""A whole OneGate stack for the gateway tests: one real ``onegate serve --role all`` process
(IdP on ``idp.localhost``, the gateway on the application hosts), with applications routed to
real upstream servers, users made with the CLI and a policy applied with ``onegate policy apply``.

Python cannot resolve ``*.localhost``: ``browser()`` gives a scripted form browser whose requests
go to 127.0.0.1 with the original Host header (``LoopbackAdapter``), so cookies stay per host
exactly as in a real browser.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from tests.e2e.browser import Browser
from tests.e2e.conftest import IdpServer, IdpUser, LoopbackAdapter
from tests.onegate.conftest import ONEGATE

__all__ = ["GatewayStack", "SignedIn"]

SignedIn = Browser


class GatewayStack(IdpServer):
    """``routes``: app name -> (host label, upstream URL or None for forward-auth only)."""

    def __init__(
        self,
        root: Path,
        routes: Mapping[str, tuple[str, str | None]],
        *,
        policy: str,
        settings: Mapping[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.routes = dict(routes)
        route_list = [
            {"app": app, "hosts": [f"{label}.localhost"], "upstream": upstream}
            for app, (label, upstream) in self.routes.items()
        ]
        super().__init__(
            root,
            settings={
                "ONEGATE_GATEWAY__ROUTES": json.dumps(route_list),
                **(settings or {}),
            },
        )
        if port is not None:
            self.port = port
            self.origin = f"http://idp.localhost:{port}"
            self.env["ONEGATE_IDP__ISSUER"] = self.origin
        self.policy_path = root / "policy.yaml"
        self.policy_path.write_text(policy, encoding="utf-8")
        self._role = "all"

    def app_url(self, app: str, path: str = "/") -> str:
        return f"http://{self.routes[app][0]}.localhost:{self.port}{path}"

    def start(self, timeout: float = 30) -> GatewayStack:
        # init, the departments and groups, and the policy: in one process (stack_setup.py).
        done = subprocess.run(
            [sys.executable, "-m", "tests.gateway.stack_setup", str(self.policy_path)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"stack set-up failed:\n{done.stderr[-4000:]}"
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [*ONEGATE, "serve", "--role", self._role, "--port", str(self.port), "--host", "127.0.0.1"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait(timeout)
        return self

    def _wait(self, timeout: float) -> None:
        import time

        deadline = time.monotonic() + timeout
        while not self._ready():
            assert self._process is not None
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the stack did not start on port {self.port}:\n{self.log()[-4000:]}")
            time.sleep(0.05)

    def browser(self) -> Browser:
        browser = Browser()
        browser.http.mount("http://", LoopbackAdapter())
        return browser

    def sign_in(self, app: str, user: IdpUser, path: str = "/") -> tuple[Browser, requests.Response]:
        """Open ``path`` of ``app`` through the gateway and sign in at the IdP with a password;
        the browser and the page it ends on (the application's answer)."""
        browser = self.browser()
        page = browser.get(self.app_url(app, path))
        assert urlsplit(page.url).hostname == "idp.localhost", (
            f"not sent to sign in: {page.url} {page.text[:500]}"
        )
        page = browser.submit(
            browser.form("password"), {"username": user.username, "password": user.password}
        )
        return browser, page

    def upstream_view(self, response: requests.Response) -> dict[str, Any]:
        """What the echo upstream received, from its JSON answer."""
        assert response.status_code == 200, f"{response.status_code} {response.url}: {response.text[:1000]}"
        data: dict[str, Any] = response.json()
        return data


def headers_of(view: Mapping[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in view["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


def identity_names(view: Mapping[str, Any]) -> Sequence[str]:
    return [n for n, _ in view["headers"] if n.lower().replace("_", "-").startswith("x-onegate-")]
