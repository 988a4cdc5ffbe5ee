"""The ``drainer`` command line. Expected failures print one line and exit with a documented code;
anything else is a bug and prints a traceback.

Exit codes: 0 success, 1 an action or IMDS failed (retried on the next run), 2 usage or
configuration error (a refused path, an address the daemon cannot listen on), 3 another run holds
the lock.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from drainer import __version__
from drainer.config import Config, load
from drainer.errors import EXIT_OK, EXIT_USAGE, DrainerError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drainer",
        description="Keep this Azure VM out of its load balancer during platform maintenance.",
    )
    parser.add_argument("--version", action="version", version=f"drainer {__version__}")
    parser.add_argument(
        "--config", metavar="PATH", help="config file (default: $DRAINER_CONFIG or /etc/drainer/config.toml)"
    )
    parser.add_argument("--dry-run", action="store_true", help="decide and log, change nothing")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    sub.add_parser("check", help="one run: read Scheduled Events, decide, act (cron/timer)")
    sub.add_parser("run", help="the daemon: check every [daemon] poll_interval seconds")
    sub.add_parser("drain", help="take this VM out of rotation by hand (a manual hold)")
    sub.add_parser("restore", help="release the manual hold (the VM returns unless an event holds it)")
    status = sub.add_parser("status", help="this VM's drain state and the known events")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    history = sub.add_parser("history", help="the transition history")
    history.add_argument("--json", action="store_true", help="machine-readable output")
    history.add_argument("--event", metavar="EVENT_ID", help="only this event")
    history.add_argument("--limit", type=int, default=200, help="newest N entries (default 200)")
    history.add_argument("--windows", action="store_true", help="with --json: the maintenance windows")
    config = sub.add_parser("config", help="validate (config and hooks) or show the configuration")
    config.add_argument("action", choices=("check", "show"))
    hooks = sub.add_parser("hooks", help="the hooks that would run, per phase, in order")
    hooks.add_argument("action", choices=("list",))
    emulator = sub.add_parser("emulator", help="serve an IMDS emulator on loopback")
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=8169)
    emulator.add_argument(
        "--vm", action="append", default=[], metavar="NAME", help="VM names to know (first is the default VM)"
    )
    sub.add_parser("demo", help="play a maintenance against the built-in emulator")
    return parser


def main(argv: Sequence[str] | None = None, *, seams: Any = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args, seams)
    except DrainerError as exc:
        from drainer.terminal import printable  # noqa: PLC0415

        print(printable(f"drainer: {exc}"), file=sys.stderr)  # may quote IMDS or ARM answers
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def _load_config(args: argparse.Namespace) -> Config:
    config = load(args.config)
    if args.dry_run:
        config = config._replace(dry_run=True)
    return config


def _dispatch(args: argparse.Namespace, seams: Any) -> int:
    command = args.command
    if command == "emulator":
        from drainer.emulator.server import serve_forever  # noqa: PLC0415

        return serve_forever(args.host, args.port, args.vm or ["web-0"])
    if command == "demo":
        from drainer.demo import run_demo  # noqa: PLC0415

        return run_demo()
    config = _load_config(args)
    if command == "config":
        return _config_command(args.action, config)
    if command == "hooks":
        from drainer.hooks import listing  # noqa: PLC0415

        print("\n".join(listing(config)))
        return EXIT_OK
    from drainer import log as logmod  # noqa: PLC0415

    logmod.configure(config.logging, level="debug" if args.verbose else None)
    logger = logmod.get_logger()
    if command == "check" and Path(config.disabled_file).exists():
        logger.warning("disabled: the kill-switch file exists; doing nothing", file=config.disabled_file)
        return EXIT_OK
    if command == "run":
        from drainer.daemon import run_daemon  # noqa: PLC0415

        return run_daemon(config, logger, seams)
    if command in ("check", "drain", "restore"):
        from drainer.runner import run_once  # noqa: PLC0415

        manual = {"check": None, "drain": True, "restore": False}[command]
        recorder = _oneshot_metrics(config)
        try:
            result = run_once(config, logger, seams, manual=manual)
        except DrainerError as exc:
            logger.error("check failed; nothing was changed", error=str(exc), error_type=type(exc).__name__)
            raise
        finally:
            if recorder is not None:
                _write_oneshot_metrics(config, recorder, logger)
        if manual is False and result.held_by:
            print(
                f"drainer: manual hold released; the VM stays out for {', '.join(result.held_by)}",
                file=sys.stderr,
            )
        return result.exit_code
    from drainer import report  # noqa: PLC0415

    if command == "status":
        return report.status(config, as_json=args.json)
    if command == "history":
        return report.history(
            config, as_json=args.json, event_id=args.event, limit=args.limit, windows=args.windows
        )
    raise AssertionError(command)  # pragma: no cover - argparse restricts the choices


def _oneshot_metrics(config: Config) -> Any:
    """For a one-shot run with ``[metrics] textfile``: a recorder carrying the counters of earlier runs."""
    if not (config.metrics.enabled and config.metrics.textfile):
        return None
    from drainer.prom import enable  # noqa: PLC0415 - prometheus_client only when metrics are on

    recorder = enable()
    recorder.load_counts(Path(config.state_dir) / "metrics.json")
    return recorder


def _write_oneshot_metrics(config: Config, recorder: Any, log: Any) -> None:
    from drainer.prom import write_textfile  # noqa: PLC0415
    from drainer.safefile import ensure_dir  # noqa: PLC0415

    try:
        ensure_dir(config.state_dir)
        recorder.save_counts(Path(config.state_dir) / "metrics.json")
        write_textfile(recorder, config.metrics.textfile)
    except OSError as exc:
        log.error("cannot write the metrics textfile", file=config.metrics.textfile, error=str(exc))


def _config_command(action: str, config: Config) -> int:
    if action == "check":
        from drainer.audit import refusals  # noqa: PLC0415

        refused = refusals(config)
        for problem in refused:
            print(f"drainer: refused: {problem}", file=sys.stderr)
        if refused:
            return EXIT_USAGE
        print(f"drainer: configuration OK ({config.source}); hooks in {config.hooks.dir} OK")
        return EXIT_OK
    print(json.dumps(_config_json(config), indent=2))
    return EXIT_OK


def _config_json(config: Config) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if hasattr(value, "_asdict"):
            return {k: plain(v) for k, v in value._asdict().items()}
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value

    data: dict[str, Any] = plain(config)
    return data


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
