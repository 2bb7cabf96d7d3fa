"""`onegate soc rules list|test|import`: the SOC's detection rules from the command line.

* ``list`` — the built-in streaming rules with the parameters this site runs them with, and the
  Sigma rules of ``soc.sigma_dir`` (with any file that did not load, and why);
* ``test FILE`` — load a Sigma rule file (or a folder), print what it compiles to for each store,
  and run it over the configured event store for the last ``--since`` (default 24 h): the
  matches, so a rule can be tried before it is imported;
* ``import FILE...`` — check the files and copy them into ``soc.sigma_dir``; a file that does not
  load is refused with the reason and nothing is copied. The running SOC reads the folder at start.
"""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from onegate.cli_common import ConfigFile, DataDir, Json, emit_json, fail, run, settings_from, table

if TYPE_CHECKING:
    from soc.sigma.rules import LoadError, SigmaRule

__all__ = ["soc_app"]

soc_app = typer.Typer(help="Security operations. / 安全运营。", no_args_is_help=True)
rules_app = typer.Typer(help="Detection rules: built-in and Sigma. / 检测规则。", no_args_is_help=True)
soc_app.add_typer(rules_app, name="rules")

_SINCE = re.compile(r"^(\d{1,5})([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _load(path: Path) -> tuple[list[SigmaRule], list[LoadError]]:
    from soc.sigma.rules import load_folder

    if path.is_dir():
        return load_folder(path)
    if not path.is_file():
        raise fail(f"{path}: no such file or folder / 文件或目录不存在")
    # load_folder reads a folder; give it one holding just this file.
    import tempfile

    with tempfile.TemporaryDirectory(prefix="onegate-sigma-") as folder:
        shutil.copy(path, Path(folder) / path.name)
        return load_folder(folder)


def _builtin(settings: Any) -> list[dict[str, Any]]:
    from soc.detections.rules import builtin_rules

    disabled = set(settings.soc.rules_disabled)
    rows = []
    for rule in builtin_rules():
        info = rule.info
        params = {**info.params, **settings.soc.rule_params.get(info.id, {})}
        rows.append(
            {
                "id": info.id,
                "name": info.name.as_dict(),
                "kind": info.kind,
                "severity": info.severity.value,
                "risk_score": info.risk_score,
                "technique": info.technique,
                "tactic": info.tactic,
                "enabled": info.id not in disabled,
                "params": params,
                "suppress_by": list(info.suppress_by),
            }
        )
    return rows


def _sigma_row(rule: SigmaRule) -> dict[str, Any]:
    info = rule.info
    return {
        "id": info.id,
        "name": info.name.as_dict(),
        "kind": "sigma",
        "severity": info.severity.value,
        "risk_score": info.risk_score,
        "technique": info.technique,
        "tactic": info.tactic,
        "enabled": rule.standalone,
        "params": dict(info.params),
        "file": rule.file,
        "queries": rule.queries,
    }


@rules_app.command("list")
def list_rules(data_dir: DataDir = None, config: ConfigFile = None, as_json: Json = False) -> None:
    """The built-in rules as this site runs them, and the Sigma rules of soc.sigma_dir."""
    settings = settings_from(data_dir, config)
    rows = _builtin(settings)
    errors: list[str] = []
    if settings.soc.sigma_dir is not None and Path(settings.soc.sigma_dir).is_dir():
        rules, problems = _load(Path(settings.soc.sigma_dir))
        rows += [_sigma_row(rule) for rule in rules]
        errors = [str(problem) for problem in problems]
    if as_json:
        emit_json({"rules": rows, "errors": errors})
        return
    table(
        ["id", "name", "severity", "technique", "enabled"],
        [
            [
                r["id"],
                f"{r['name']['zh']} / {r['name']['en']}",
                r["severity"],
                r["technique"],
                "yes" if r["enabled"] else "no",
            ]
            for r in rows
        ],
    )
    for error in errors:
        typer.echo(f"not loaded / 未加载: {error}", err=True)


@rules_app.command("test")
def test_rule(
    file: Annotated[Path, typer.Argument(help="A Sigma rule file (.yml) or a folder of them.")],
    since: Annotated[str, typer.Option("--since", help="How far back to run it: 30m, 24h, 7d.")] = "24h",
    data_dir: DataDir = None,
    config: ConfigFile = None,
    as_json: Json = False,
) -> None:
    """Compile a Sigma rule, show its queries and run it over the recent events."""
    match = _SINCE.match(since)
    if match is None:
        raise fail(f"--since {since!r}: a number and s, m, h or d (24h) / 时间范围格式如 24h")
    span = timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    settings = settings_from(data_dir, config)
    rules, problems = _load(file)
    if problems:
        for problem in problems:
            typer.echo(f"not loaded / 未加载: {problem}", err=True)
        raise typer.Exit(1)
    if not rules:
        raise fail(f"{file}: no Sigma rule in it / 未找到 Sigma 规则")

    async def work() -> list[dict[str, Any]]:
        from onegate.soc_app import open_event_store

        store = open_event_store(settings)
        end = datetime.now(UTC)
        try:
            out = []
            for rule in rules:
                if not rule.standalone:
                    continue
                matches = await rule.test(store, end - span, end)
                out.append(
                    {
                        **_sigma_row(rule),
                        "matches": len(matches),
                        "first": [
                            {
                                k: hit.get(k)
                                for k in ("@timestamp", "event.id", "user.name", "source.ip", "url.path")
                            }
                            for match in matches[:5]
                            for hit in match.events[-1:]
                        ],
                    }
                )
            return out
        finally:
            await store.close()

    results = run(work())
    if as_json:
        emit_json({"rules": results})
        return
    for result in results:
        typer.echo(f"{result['id']}  {result['name']['en']}  ({result['severity']}, {result['technique']})")
        for store, text in result["queries"].items():
            typer.echo(f"  {store}: {text}")
        typer.echo(f"  matches in the last {since} / 最近 {since} 命中: {result['matches']}")
        for hit in result["first"]:
            typer.echo(f"    {hit}")


@rules_app.command("import")
def import_rules(
    files: Annotated[list[Path], typer.Argument(help="Sigma rule files (.yml).")],
    force: Annotated[bool, typer.Option("--force", help="Replace files of the same name.")] = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Check Sigma rule files and copy them into soc.sigma_dir."""
    settings = settings_from(data_dir, config)
    folder = settings.soc.sigma_dir
    if folder is None:
        raise fail("set soc.sigma_dir first (docs/configuration.md) / 请先配置 soc.sigma_dir")
    target = Path(folder)
    for file in files:
        if file.suffix not in (".yml", ".yaml"):
            raise fail(f"{file}: a Sigma rule file ends in .yml / Sigma 规则文件应以 .yml 结尾")
        if (target / file.name).exists() and not force:
            raise fail(f"{target / file.name} exists; --force replaces it / 同名规则已存在")
        rules, problems = _load(file)
        if problems:
            for problem in problems:
                typer.echo(f"refused / 拒绝导入: {problem}", err=True)
            raise typer.Exit(1)
        if not rules:
            raise fail(f"{file}: no Sigma rule in it / 未找到 Sigma 规则")
    target.mkdir(parents=True, exist_ok=True)
    for file in files:
        shutil.copy(file, target / file.name)
        typer.echo(f"imported {file.name} -> {target} / 已导入")
