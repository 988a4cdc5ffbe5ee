"""The ``drainer`` command line. Expected failures print one line and exit with a documented code;
anything else is a bug and prints a traceback.

Exit codes: 0 success, 1 an action or IMDS failed (retried on the next run), 2 usage or
configuration error (a refused path, an address the daemon cannot listen on), 3 another run holds
the lock, 70 a bug (with a traceback), 141 the output pipe closed early (``drainer status | head``);
``status`` exits 1 when drainer is failing or stale.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from drainer import __version__
from drainer.base.errors import EXIT_OK, EXIT_USAGE, ConfigError, DrainerError, LockedError
from drainer.base.typing import Logger
from drainer.config import Config
from drainer.io.configfile import load

EXIT_BUG = 70  # EX_SOFTWARE
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as the shell reports a writer killed by a closed pipe


_GLOBAL_HELP = {
    "config": "config file (default: $DRAINER_CONFIG or /etc/drainer/config.toml)",
    "dry_run": "decide and log, change nothing",
    "verbose": "debug logging",
}

_COMMANDS: dict[str, tuple[str, str, str]] = {
    # name: (one-line help, description, examples)
    "check": (
        "one run: read Scheduled Events, decide, act (cron/timer)",
        "One run: read this VM's Scheduled Events from IMDS, decide, save the state, take the VM out of "
        "its load balancer or put it back, approve maintenance early. Idle runs change nothing.",
        "drainer check\n  drainer check --dry-run -v\n  drainer check --config ./config.toml",
    ),
    "run": (
        "the daemon: check every [daemon] poll_interval seconds",
        "The daemon: the same check as `drainer check` every [daemon] poll_interval seconds, with "
        "Prometheus metrics and the probe readiness URL when configured. Stops on SIGTERM/SIGINT.",
        "drainer run\n  systemctl enable --now drainer.service",
    ),
    "drain": (
        "take this VM out of rotation by hand (a manual hold)",
        "Take this VM out of rotation by hand. It stays out, whatever the maintenance events do, until "
        "`drainer restore`.",
        "drainer drain\n  drainer drain --dry-run",
    ),
    "restore": (
        "release the manual hold (the VM returns unless an event holds it)",
        "Release the manual hold of `drainer drain`: the VM returns to rotation unless a maintenance event "
        "still holds it out (then it says which).",
        "drainer restore",
    ),
    "status": (
        "is drainer working? health, last checks, drain state, known events",
        "Is drainer working on this VM? A one-word health (ok, failing, stale, disabled, unknown), the last "
        "successful and failed checks, the state directory, the drain state and the known events. "
        "Exits 1 when the last check failed or no check succeeded for a while.",
        "drainer status\n  drainer status --json | jq .health",
    ),
    "history": (
        "the transition history and the maintenance windows",
        "The append-only history of transitions (events, the VM, approvals) and the maintenance windows "
        "this VM went through.",
        "drainer history --limit 20\n  drainer history --event <EVENT_ID>\n"
        "  drainer history --json --windows",
    ),
    "fleet": (
        "every VM of this VM's pools: in or out, why, since when, leaving (read-only)",
        "Every VM of this VM's backend pools (or of the pools named with --pool: an id, or a name such as "
        "web-pool or lb-web/web-pool, resolved among the load balancers of this VM's subscription; an "
        "unknown or ambiguous one is refused, exit 2): in or out of rotation, drainer's record on its NIC "
        "(which event holds it out, since when), and its intent when it announced it is leaving (the "
        "fleet's floor). Reads ARM only. "
        'From an operator\'s machine: [azure] identity = "default" and --pool by id.',
        "drainer fleet\n  drainer fleet --pool lb-web/web-pool\n"
        "  drainer fleet --json --pool /subscriptions/<id>/resourceGroups/<rg>/providers/"
        "Microsoft.Network/loadBalancers/<lb>/backendAddressPools/<pool>",
    ),
    "doctor": (
        "is this VM ready for maintenance? identity, NICs, pools, permissions, hooks (read-only)",
        "Check, before the first maintenance, everything a drain needs, each on one line (ok or FAIL): "
        "IMDS and this VM's identity; a token for [azure] identity; this VM's NICs and their backend "
        "pools (and every NIC in [drain] nics); the right to write them, from Azure's permissions API, "
        "against the actions the drain method needs (packaging/azure/drainer-role-*.json); the "
        "hooks directory and the restore health command. Then one line per "
        "problem with its fix. Reads only: it never writes to Azure. Exits 0 when ready, 1 otherwise.",
        "drainer doctor\n  drainer doctor --json | jq '.checks[] | select(.status == \"fail\")'\n"
        "  drainer --config ./config.toml doctor",
    ),
    "setup": (
        "write the systemd units, a cron line or the example config for this installation (pip)",
        "For a pip or pipx install: write what the .deb would, for this installation's drainer. `systemd` "
        "writes the daemon's unit, its two socket units (which hold the probe and metrics ports from "
        "boot), and the one-shot service and timer into /etc/systemd/system; `cron` writes "
        "/etc/cron.d/drainer; `config` writes /etc/drainer/config.toml from the example (never over an "
        "existing one). Each file written is named; nothing is enabled or started: the next commands "
        "are printed. --dry-run names the files without writing them.",
        "sudo drainer setup config\n  sudo drainer setup systemd\n  sudo drainer setup cron\n"
        "  drainer setup systemd --dir ./units --dry-run",
    ),
    "config": (
        "validate (config and hooks) or show the configuration",
        "`check` validates the configuration file and the hooks directory (misspelled phase directories, "
        "refused hooks, options without effect, two services on one address); `show` prints the "
        "configuration with every default filled in.",
        "drainer config check\n  drainer --config ./config.toml config show",
    ),
    "hooks": (
        "the hooks that would run, per phase, in order",
        "List what would run in each pipeline (drain, restore, on-event), in order, built-in steps "
        "included, and why each skipped file is skipped.",
        "drainer hooks list",
    ),
    "completion": (
        "print a bash completion script",
        "Print a bash completion script for drainer, generated from its own commands and options.",
        "drainer completion bash > /usr/share/bash-completion/completions/drainer\n"
        "  source <(drainer completion bash)",
    ),
    "demo": (
        "play a maintenance against the built-in emulator",
        "Play a maintenance against the built-in emulator and print the timeline (nothing outside a "
        "temporary directory is touched).",
        "drainer demo",
    ),
}


class HelpFormatter(argparse.HelpFormatter):
    """Wraps one-paragraph descriptions; keeps multi-line text (the examples) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """--config, --dry-run and -v, before the subcommand (defaults) or after it (SUPPRESS: a value
    given before the subcommand is not overwritten by the subcommand's default)."""
    extra: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
    parser.add_argument("--config", metavar="PATH", help=_GLOBAL_HELP["config"], **extra)
    parser.add_argument("--dry-run", action="store_true", help=_GLOBAL_HELP["dry_run"], **extra)
    parser.add_argument("-v", "--verbose", action="store_true", help=_GLOBAL_HELP["verbose"], **extra)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drainer",
        description="Keep this Azure VM out of its load balancer during platform maintenance.",
        epilog="examples:\n  drainer status\n  drainer check -v\n  drainer COMMAND --help",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"drainer {__version__}")
    _global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    commands = {}
    for name, (one_line, description, examples) in _COMMANDS.items():
        commands[name] = sub.add_parser(
            name,
            parents=[common],
            help=one_line,
            description=description,
            epilog=f"examples:\n  {examples}",
            formatter_class=HelpFormatter,
        )
    commands["status"].add_argument("--json", action="store_true", help="machine-readable output")
    history = commands["history"]
    history.add_argument("--json", action="store_true", help="machine-readable output")
    history.add_argument("--event", metavar="EVENT_ID", help="only this event")
    history.add_argument("--limit", type=int, default=200, help="newest N entries (default 200)")
    history.add_argument("--windows", action="store_true", help="with --json: the maintenance windows")
    commands["fleet"].add_argument("--json", action="store_true", help="machine-readable output")
    commands["fleet"].add_argument(
        "--pool",
        action="append",
        default=[],
        metavar="POOL",
        help="a backend pool: its id, or POOL, LB/POOL, GROUP/LB/POOL among this subscription's load "
        "balancers (repeatable)",
    )
    commands["doctor"].add_argument("--json", action="store_true", help="machine-readable output")
    commands["setup"].add_argument("kind", choices=("systemd", "cron", "config"))
    commands["setup"].add_argument(
        "--dir", "--file", dest="target", metavar="PATH", help="where to write (default: the system's place)"
    )
    commands["config"].add_argument("action", choices=("check", "show"))
    commands["hooks"].add_argument("action", choices=("list",))
    commands["completion"].add_argument("shell", choices=("bash",))
    from drainer.emulator.cli import add_parser  # noqa: PLC0415 - keeps cli.py short

    add_parser(sub, HelpFormatter)
    return parser


# Called before a prompt exit (the tests' entry point records the imported modules here).
BEFORE_EXIT: list[Callable[[], None]] = []


def main(argv: Sequence[str] | None = None, *, seams: Any = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code = _dispatch(args, seams)
        sys.stdout.flush()  # here, where a closed pipe is handled, not at interpreter exit
        if args.command in ("check", "drain", "restore") and "azure.core" in sys.modules:
            _exit_now(code)
    except DrainerError as exc:
        from drainer.base.terminal import printable  # noqa: PLC0415
        from drainer.io.log import redact_text  # noqa: PLC0415

        # May quote IMDS or ARM answers, and so a token: masked by value.
        print(printable(redact_text(f"drainer: {exc}")), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `drainer status | head`: the reader went away. Point stdout at /dev/null so the interpreter's
        # final flush does not fail again, and exit as a process killed by SIGPIPE would.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception:  # noqa: BLE001 - the last resort: a bug gets its traceback and a request
        from drainer.io.log import redact_text  # noqa: PLC0415

        print(redact_text(traceback.format_exc()), file=sys.stderr, end="")
        print(
            f"drainer: unexpected error (a bug in drainer {__version__}); please report it with the "
            "traceback above and the command you ran",
            file=sys.stderr,
        )
        return EXIT_BUG
    return code


def _exit_now(code: int) -> None:
    """Exit at once after a one-shot action: the interpreter's teardown of the Azure SDK's modules takes
    0.2 to 0.85 s and does nothing for us. Everything is flushed first: the state database is closed and
    the lock released by run_once; logs, stdout and stderr here."""
    import logging  # noqa: PLC0415

    for hook in BEFORE_EXIT:
        hook()
    logging.shutdown()  # the syslog and event-log handlers, when configured
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _load_config(args: argparse.Namespace) -> Config:
    config = load(args.config)
    if args.dry_run:
        config = config._replace(dry_run=True)
    return config


def _dispatch(args: argparse.Namespace, seams: Any) -> int:
    command = args.command
    if command == "emulator":
        from drainer.emulator.cli import main as emulator_main  # noqa: PLC0415

        return emulator_main(args)
    if command == "completion":
        from drainer.app.completion import bash  # noqa: PLC0415

        print(bash(_parser()), end="")
        return EXIT_OK
    if command == "demo":
        from drainer.app.demo import run_demo  # noqa: PLC0415

        return run_demo()
    if command == "setup":
        from drainer.app.setup import setup  # noqa: PLC0415

        return setup(args.kind, args.target, dry_run=args.dry_run)
    if command == "config":
        return _config_command(args)
    config = _load_config(args)
    if command == "fleet":
        from drainer.app.fleetview import fleet  # noqa: PLC0415 - imports the Azure SDK

        return fleet(config, args.pool, as_json=args.json)
    if command == "doctor":
        from drainer.app.doctor import doctor  # noqa: PLC0415 - imports the Azure SDK when needed

        return doctor(config, as_json=args.json)
    if command == "hooks":
        from drainer.act.hooks import listing  # noqa: PLC0415

        print("\n".join(listing(config)))
        return EXIT_OK
    from drainer.io import log as logmod  # noqa: PLC0415

    logmod.configure(config.logging, level="debug" if args.verbose else None)
    logger = logmod.get_logger()
    if command == "check" and Path(config.disabled_file).exists():
        logger.warning("disabled: the kill-switch file exists; doing nothing", file=config.disabled_file)
        return EXIT_OK
    if command == "run":
        from drainer.app.daemon import run_daemon  # noqa: PLC0415

        return run_daemon(config, logger, seams)
    if command in ("check", "drain", "restore"):
        from drainer.app.runner import run_once  # noqa: PLC0415

        manual = {"check": None, "drain": True, "restore": False}[command]
        recorder = _oneshot_metrics(config)
        try:
            result = run_once(config, logger, seams, manual=manual)
        except LockedError as exc:
            # Not a failure: another run (the daemon, a manual drain) is at work; this one yields.
            logger.info("skipped: another drainer run holds the lock", detail=str(exc))
            return exc.exit_code
        except DrainerError as exc:
            # One record per failure: the log line is the message (it reaches stderr and, when
            # configured, syslog); printing it again would make cron's syslog show it twice.
            logger.error("check failed; nothing was changed", error=str(exc), error_type=type(exc).__name__)
            _record(config, str(exc), type(exc).__name__)
            return exc.exit_code
        finally:
            if recorder is not None:
                _write_oneshot_metrics(config, recorder, logger)
        _record(config, "; ".join(result.errors) or None, "ActionError")
        if manual is False and result.held_by:
            print(
                f"drainer: manual hold released; the VM stays out for {', '.join(result.held_by)}",
                file=sys.stderr,
            )
        return result.exit_code
    from drainer.app import report  # noqa: PLC0415

    if command == "status":
        return report.status(config, as_json=args.json)
    if command == "history":
        return report.history(
            config, as_json=args.json, event_id=args.event, limit=args.limit, windows=args.windows
        )
    raise AssertionError(command)  # pragma: no cover - argparse restricts the choices


def _record(config: Config, error: str | None, error_type: str) -> None:
    """Remember the check's outcome for ``drainer status`` (through the effects seam)."""
    from drainer.act.effects import effects_for  # noqa: PLC0415
    from drainer.act.seams import Seams  # noqa: PLC0415

    effects_for(config, Seams()).record_outcome(config.state_dir, error, error_type)


def _oneshot_metrics(config: Config) -> Any:
    """For a one-shot run with ``[metrics] textfile``: a recorder carrying the counters of earlier runs."""
    if not (config.metrics.enabled and config.metrics.textfile):
        return None
    from drainer.io.prom import enable  # noqa: PLC0415 - prometheus_client only when metrics are on

    recorder = enable()
    recorder.load_counts(Path(config.state_dir) / "metrics.json")
    return recorder


def _write_oneshot_metrics(config: Config, recorder: Any, log: Logger) -> None:
    from drainer.io.prom import write_textfile  # noqa: PLC0415
    from drainer.io.safefile import ensure_dir  # noqa: PLC0415

    try:
        ensure_dir(config.state_dir)
        recorder.save_counts(Path(config.state_dir) / "metrics.json")
        write_textfile(recorder, config.metrics.textfile)
    except OSError as exc:
        log.error("cannot write the metrics textfile", file=config.metrics.textfile, error=str(exc))


def _config_command(args: argparse.Namespace) -> int:
    """``config check``: every problem of the file, else the findings; ``config show``: the configuration
    as the file's tables, every default filled in. Raises ConfigError (``show``: the first problem)."""
    if args.action == "show":
        from drainer.config.show import as_tables  # noqa: PLC0415

        print(json.dumps(as_tables(_load_config(args)), indent=2))
        return EXIT_OK
    from drainer.base.terminal import printable  # noqa: PLC0415 - the file's text is quoted

    try:
        config = _load_config(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(printable(f"drainer: error: {problem}"), file=sys.stderr)
        return exc.exit_code
    from drainer.app.audit import refusals  # noqa: PLC0415
    from drainer.config.check import findings  # noqa: PLC0415

    refused = refusals(config)
    for refusal in refused:
        print(f"drainer: refused: {refusal}", file=sys.stderr)
    found = findings(config)
    for finding in found:
        print(f"drainer: {finding.severity}: {finding.message}", file=sys.stderr)
    if refused or any(f.severity == "error" for f in found):
        return EXIT_USAGE
    warnings = f" with {len(found)} warning(s)" if found else ""
    print(f"drainer: configuration OK{warnings} ({config.source}); hooks in {config.hooks.dir}")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
