"""Real nginx and Caddy (Debian's packages) for the tests, with the configurations of deploy/.

``render(template, **values)`` fills the ``{{NAME}}`` placeholders of a deploy/ example (every
one must be given, and nothing else). ``NginxServer`` and ``CaddyServer`` run the rendered
example in a temporary directory of their own on free loopback ports, in the foreground, with
their logs, pid file, temp files and (Caddy) data and config directories in that directory:

    with NginxServer(NGINX_FORWARD_AUTH, SERVER_NAME="hr.localhost",
                     GATEWAY=f"127.0.0.1:{auth_port}", UPSTREAM=f"127.0.0.1:{app_port}") as nginx:
        httpx.get(nginx.url("/"), headers={"host": "hr.localhost"})

A placeholder whose name ends in ``LISTEN`` that the caller leaves out gets a free port
(``127.0.0.1:<port>``; ``.ports[name]``); ``.port`` is the one of ``LISTEN`` (nginx) or of
``SITE`` (Caddy, whose ``SITE`` defaults to ``http://:<port>``). ``start()`` returns once every
port answers; ``stop()`` ends the process; ``log()`` is what it has written. nginx and Caddy are
installed by ``python -m tests.services prepare``; a missing one fails the test, never skips it.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

__all__ = [
    "CADDYFILE",
    "NGINX_FORWARD_AUTH",
    "NGINX_PROXY",
    "CaddyServer",
    "NginxServer",
    "free_port",
    "placeholders",
    "render",
]

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NGINX_FORWARD_AUTH = DEPLOY / "nginx" / "onegate-forward-auth.conf"
NGINX_PROXY = DEPLOY / "nginx" / "onegate-proxy.conf"
CADDYFILE = DEPLOY / "caddy" / "Caddyfile"

NGINX = Path("/usr/sbin/nginx")
CADDY = Path("/usr/bin/caddy")

_PLACEHOLDER = re.compile(r"\{\{([A-Z][A-Z0-9_]*)\}\}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def placeholders(template: Path | str) -> set[str]:
    """The ``{{NAME}}`` placeholders of a deploy/ example."""
    return set(_PLACEHOLDER.findall(Path(template).read_text(encoding="utf-8")))


def render(template: Path | str, **values: str) -> str:
    """The example with every ``{{NAME}}`` replaced by ``values[NAME]``.

    Refuses a placeholder left without a value, a value for no placeholder (a typo), and a value
    that could end a directive or a block (newline, ``;``, braces).
    """
    text = Path(template).read_text(encoding="utf-8")
    names = set(_PLACEHOLDER.findall(text))
    if missing := names - values.keys():
        raise ValueError(f"{template}: no value for {', '.join(sorted(missing))}")
    if unknown := values.keys() - names:
        raise ValueError(f"{template}: no placeholder {', '.join(sorted(unknown))}")
    for name, value in values.items():
        if not value or any(c in value for c in "\r\n;{}"):
            raise ValueError(f"{name}: {value!r} is not a single configuration value")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def _binary(path: Path, name: str) -> str:
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        raise AssertionError(f"{name} is not installed: run `python -m tests.services prepare` as root")
    return found


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class _Server:
    """A proxy process in the foreground, its files in ``root`` (removed by ``stop()``)."""

    name = "server"
    main_listen = "LISTEN"

    def __init__(self, template: Path | str, **values: str) -> None:
        self.template = Path(template)
        self.root = Path(tempfile.mkdtemp(prefix=f"onegate-{self.name}-"))
        self.ports: dict[str, int] = {}
        for placeholder in sorted(placeholders(self.template)):
            if placeholder.endswith("LISTEN") and placeholder not in values:
                self.ports[placeholder] = free_port()
                values[placeholder] = f"127.0.0.1:{self.ports[placeholder]}"
        self.values = values
        self.port = self.ports.get(self.main_listen, 0)
        self.log_path = self.root / f"{self.name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    def url(self, path: str = "/", *, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def log(self) -> str:
        """Everything the server wrote: its own output and error log, then the access log."""
        parts = [p.read_text(errors="replace") for p in sorted(self.root.glob("*.log"))]
        return "\n".join(parts)

    def _write_config(self) -> Path:
        raise NotImplementedError

    def _command(self, config: Path) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self, timeout: float = 20) -> Self:
        config = self._write_config()
        with self.log_path.open("wb") as out:  # a file, not a pipe nobody reads
            self._process = subprocess.Popen(
                self._command(config), cwd=self.root, env=self._env(), stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while not all(_answers(port) for port in self.ports.values()):
            if self._process.poll() is not None or time.monotonic() > deadline:
                log = self.log()
                self.stop()
                raise AssertionError(f"{self.name} did not start with {self.template}:\n{log[-4000:]}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
            self._process = None
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


class NginxServer(_Server):
    """``nginx -p <root> -c <root>/nginx.conf`` in the foreground (``daemon off``), the deploy/
    example included in its http block; pid, logs and temp paths under ``root``."""

    name = "nginx"

    def _write_config(self) -> Path:
        site = self.root / "site.conf"
        site.write_text(render(self.template, **self.values), encoding="utf-8")
        # As root the master would hand the workers to "nobody", who may not enter this directory.
        user = "user root;\n" if os.geteuid() == 0 else ""
        temp = self.root / "temp"
        temp.mkdir()
        config = self.root / "nginx.conf"
        config.write_text(
            f"""daemon off;
master_process on;
worker_processes 1;
{user}pid {self.root}/nginx.pid;
error_log {self.root}/error.log notice;
events {{ worker_connections 512; }}
http {{
    access_log {self.root}/access.log;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {site};
}}
""",
            encoding="utf-8",
        )
        return config

    def _command(self, config: Path) -> list[str]:
        nginx = _binary(NGINX, "nginx")
        return [nginx, "-p", f"{self.root}/", "-c", str(config), "-e", str(self.root / "error.log")]


class CaddyServer(_Server):
    """``caddy run --config <file> --adapter caddyfile``: the deploy/ example after a global block
    of the harness (admin API off, no automatic HTTPS, bind to loopback, storage under ``root``,
    HOME and XDG directories there too)."""

    name = "caddy"
    main_listen = "SITE"

    def __init__(self, template: Path | str = CADDYFILE, **values: str) -> None:
        if "SITE" not in values:
            port = free_port()
            values["SITE"] = f"http://:{port}"
            super().__init__(template, **values)
            self.ports["SITE"] = self.port = port
        else:
            super().__init__(template, **values)

    def _write_config(self) -> Path:
        config = self.root / "Caddyfile"
        config.write_text(
            f"""{{
	admin off
	auto_https off
	default_bind 127.0.0.1
	grace_period 2s
	storage file_system {self.root}/data
}}

{render(self.template, **self.values)}""",
            encoding="utf-8",
        )
        return config

    def _command(self, config: Path) -> list[str]:
        return [_binary(CADDY, "caddy"), "run", "--config", str(config), "--adapter", "caddyfile"]

    def _env(self) -> dict[str, str]:
        home = str(self.root)
        return {
            **os.environ,
            "HOME": home,
            "XDG_DATA_HOME": f"{home}/data",
            "XDG_CONFIG_HOME": f"{home}/config",
        }
