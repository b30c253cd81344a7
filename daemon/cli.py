"""The `subwatch` command line: run the daemon, transcribe files once, inspect and edit the queue.

Exit codes: 0 success; 1 a file failed or an operation could not be done; 2 wrong
usage (argparse); 78 (EX_CONFIG) the config is invalid, which the systemd unit
lists in RestartPreventExitStatus so a typo does not cause a restart loop. `check-config`
exits 0 also when it warns (on stderr) that other users can read the config's secrets: the
config is valid, and the warning says how to fix its permissions.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from daemon import __version__
from daemon.config import Config, ConfigError, RulesError, load_config, validate_rules
from daemon.datatypes import Job
from daemon.hostcheck import config_exposure, raise_nofile_limit
from daemon.jobsjson import decoders_json, job_json, jobs_json, json_text, nodes_json
from daemon.options import FolderNotify, FolderRules, build_rules
from daemon.queue import JobQueue, QueueError
from daemon.text import format_duration, format_speed, printable
from daemon.transcribe.engines import DEFAULT_ENGINE, ENGINES
from daemon.transcribe.models import is_model_path

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 78
DEFAULT_CONFIG = Path(os.environ.get("SUBWATCH_CONFIG", "/etc/subwatch/config.yaml"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Paths go to stdout as their bytes, as `ls` and `find` print them: a name that is
    # not UTF-8 must not crash `subwatch scan` with UnicodeEncodeError.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"subwatch: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (QueueError, ValueError) as exc:
        print(f"subwatch: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="subwatch",
        description="Watch media folders and write Whisper subtitles (.srt/.vtt) beside new files.",
    )
    parser.add_argument("--version", action="version", version=f"subwatch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon in the foreground (systemd runs this)",
                              description="Watch the configured folders until SIGTERM or Ctrl-C; "
                              "SIGHUP reloads the config.")
    _config_arg(run)
    run.set_defaults(handler=cmd_run)

    one = commands.add_parser("transcribe", help="write subtitles for the given files now",
                              description="Transcribe files once with the same pipeline and sidecars as "
                              "the daemon, showing a progress bar.")
    one.add_argument("files", nargs="+", type=Path, metavar="FILE")
    one.add_argument("--config", type=Path, help="take defaults (and the folder rules for files inside "
                     "a watched folder) from this config")
    one.add_argument("--model", help="Whisper model name, .pt checkpoint, or faster-whisper / Hugging Face "
                     "model folder (default: turbo)")
    one.add_argument("--language", help="ISO 639-1 code, or auto (default)")
    one.add_argument("--task", choices=("transcribe", "translate"))
    one.add_argument("--prompt", help="initial prompt: names, jargon, spelling")
    one.add_argument("--beam-size", type=int, help="beams searched per window; 1 = greedy (default: 5)")
    one.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    one.add_argument("--engine", choices=ENGINES, help="what decodes: auto (default: ctranslate2 on the CPU, "
                     "torch on a GPU), torch, ctranslate2, ctranslate2-int8-encoder (a little faster "
                     "on a CPU, more memory), or ctranslate2-int8 (faster on a CPU, not word for word)")
    one.add_argument("--formats", help="comma-separated: srt,vtt,txt,json")
    one.add_argument("--models-dir", type=Path, help="where Whisper checkpoints are kept "
                     "(default: ~/.cache/whisper, or models_dir from --config)")
    one.add_argument("--overwrite", action="store_true",
                     help="replace existing subtitles at the target names (never done otherwise)")
    one.set_defaults(handler=cmd_transcribe)

    status = commands.add_parser("status", help="show the queue", description="List the jobs in the queue.")
    _config_arg(status)
    status.add_argument("--json", action="store_true", help="print a JSON array of jobs")
    status.add_argument("--decoders", action="store_true",
                        help="with --json: print each transcriber's decoder child (restarts, last death)")
    status.add_argument("--nodes", action="store_true",
                        help="with --json: print each daemon sharing the queue (heartbeat, gone, files held)")
    status.add_argument("--state", choices=("pending", "running", "done", "failed", "skipped"),
                        help="only jobs in this state")
    status.set_defaults(handler=cmd_status)

    check = commands.add_parser("check-config", help="validate the config and show each folder's rules",
                                description="Validate the config; print each folder's effective rules.")
    _config_arg(check)
    check.set_defaults(handler=cmd_check_config)

    scan = commands.add_parser("scan", help="queue existing media that lacks subtitles",
                               description="Queue media under the watched folders (or PATH) that has no "
                               "subtitles yet; a running daemon picks the jobs up.")
    _config_arg(scan)
    scan.add_argument("path", nargs="?", type=Path, help="only this folder or file (inside a watched folder)")
    scan.set_defaults(handler=cmd_scan)

    retry = commands.add_parser("retry", help="queue failed jobs again",
                                description="Put failed jobs back in the queue with their attempts reset.")
    _config_arg(retry)
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("path", nargs="?", type=Path, help="the media file whose job to retry")
    which.add_argument("--all-failed", action="store_true", help="retry every failed job")
    retry.set_defaults(handler=cmd_retry)

    forget = commands.add_parser("forget", help="remove a file's job so it can be queued fresh",
                                 description="Delete the job, subwatch's record of its sidecars and the "
                                 "transcript stored for its content (unless a copy's job uses it).")
    _config_arg(forget)
    forget.add_argument("path", type=Path)
    forget.set_defaults(handler=cmd_forget)

    rewrite = commands.add_parser(
        "rewrite", help="write finished files' subtitles again with the current layout rules",
        description="Render the subtitles of done jobs again from their stored transcripts with "
        "each folder's current layout rules (max_line_chars, max_lines, formats, lang_code, sdh, "
        "forced, name_template), without transcribing. Subtitles subwatch did not write, or that "
        "were edited since, are left as they are; ones the new layout no longer names are removed "
        "if unedited.")
    _config_arg(rewrite)
    rewrite.add_argument("path", nargs="?", type=Path,
                         help="only the job of this media file, or the jobs under this folder")
    rewrite.set_defaults(handler=cmd_rewrite)

    migrate = commands.add_parser(
        "migrate-db", help="copy this host's SQLite queue into a PostgreSQL database",
        description="Copy the SQLite queue in state_dir (jobs, stored transcripts, sidecar records, "
        "owed notifications and media server updates) into an empty PostgreSQL database, ids and all, "
        "its paths stored as node.path_map maps this host's; then set `database:` to the URL. Stop the "
        "daemon first. A database that holds jobs is refused.")
    _config_arg(migrate)
    migrate.add_argument("--to", required=True, metavar="URL",
                         help="postgresql://user@host/dbname (the password from PGPASSWORD or ~/.pgpass)")
    migrate.set_defaults(handler=cmd_migrate_db)
    return parser


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", type=Path, default=DEFAULT_CONFIG,
                        help=f"config file (default: {DEFAULT_CONFIG}, or $SUBWATCH_CONFIG)")


# ---------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    from daemon.logs import setup_logging
    from daemon.service import Service

    setup_logging(config.log_level)
    _prepare_host(config)
    code = Service(config).run()
    # Everything that matters is committed to SQLite by now. A model thread that
    # is still inside torch would abort the interpreter's normal teardown, so
    # leave directly with the intended code.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _prepare_host(config: Config) -> None:
    """Given the loaded config, raise the open-files limit and warn if others can read its secrets."""
    log = logging.getLogger("subwatch")
    limit = raise_nofile_limit()
    if limit.error:
        log.debug("open files: soft limit %d (hard %d) left as it is: %s",
                  limit.soft, limit.hard, limit.error)
    else:
        log.debug("open files: soft limit %d (was %d, hard %d)", limit.soft, limit.before, limit.hard)
    warning = config_exposure(config)
    if warning:
        log.warning("%s", warning)


# ---------------------------------------------------------------- transcribe


def cmd_transcribe(args: argparse.Namespace) -> int:
    from daemon.logs import setup_logging
    from daemon.malloc import one_arena

    one_arena()  # before the decoder's threads allocate: this process decodes
    config = load_config(args.config) if args.config else None
    setup_logging(config.log_level if config else "warning")
    models_dir = args.models_dir or (config.models_dir if config else _whisper_cache())
    engine = args.engine or (config.engine if config else DEFAULT_ENGINE)
    failures = 0
    for path in args.files:
        rules = _one_shot_rules(absolute(path), config, args)
        failures += not _transcribe_file(absolute(path), rules, models_dir, engine, args.overwrite)
    return EXIT_FAILED if failures else EXIT_OK


def _whisper_cache() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return default / "whisper"


def absolute(path: Path) -> Path:
    """Make a path absolute the way the watcher reports paths: without resolving symlinks."""
    return Path(os.path.abspath(path))


def _one_shot_rules(path: Path, config: Config | None, args: argparse.Namespace) -> FolderRules:
    """Given a file, the config (if any) and the command line, return the file's rules: those of its
    watched folder, or the defaults, with the flags given written over them."""
    flags = {
        "model": args.model and _model_arg(args.model),
        "language": args.language,
        "task": args.task,
        "prompt": args.prompt,
        "beam_size": args.beam_size,
        "device": args.device,
        "formats": args.formats.split(",") if args.formats else None,
    }
    try:
        written = validate_rules({key: value for key, value in flags.items() if value is not None})
    except RulesError as exc:  # checked by the config's own validators, so errors read the same
        raise SystemExit(f"subwatch: --{exc}") from None
    folder = config.folder_for(path) if config else None
    return folder.with_keys(written) if folder else build_rules(path.parent, written)


def _model_arg(value: str) -> str:
    return str(absolute(Path(value))) if is_model_path(value) else value


def _transcribe_file(path: Path, rules: FolderRules, models_dir: Path, engine: str, overwrite: bool) -> bool:
    from daemon import media, pipeline, subtitles
    from daemon.transcribe import DeviceUnavailable, ModelNotFound, ModelStore, resolve_device, transcribe

    sidecars = subtitles.Unrecorded(overwrite)
    try:
        prepared = pipeline.prepare(path, rules, sidecars.owns)
        options = rules.transcribe
        # A one-shot run holds its one model to the end: nothing to unload.
        store = ModelStore(models_dir, unload_after_seconds=float("inf"), engine=engine)
        model = store.get(options.model, resolve_device(rules.devices[0]))
        length = format_duration(prepared.audio.duration)
        print(f"{path.name}: transcribing {length} with {options.model}", file=sys.stderr)
        transcript = transcribe(prepared.audio, options, model, show_progress_bar=True)
        result = pipeline.complete(prepared, transcript, sidecars)
    except pipeline.Skip as exc:
        print(f"{path}: skipped: {exc}", file=sys.stderr)
        return True
    except (media.MediaError, ModelNotFound, DeviceUnavailable, subtitles.SidecarFolderError) as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return False
    if result.note:  # no speech found: nothing written, which is this run's answer, not a failure
        print(f"{path.name}: {result.note} in {format_duration(result.media_duration)}; "
              "no subtitles written", file=sys.stderr)
        return True
    for kept in result.kept:
        print(f"{kept}: exists and was kept (use --overwrite to replace it)", file=sys.stderr)
    for output in result.outputs:
        print(output)
    speed = format_speed(result.media_duration, result.elapsed) or "?"
    uncovered = result.transcript.uncovered_seconds if result.transcript else 0.0
    missing = f"  {uncovered:.0f} s of speech without subtitles" if uncovered >= 0.5 else ""
    print(f"{path.name}: done  {result.language}  {format_duration(result.media_duration)} in "
          f"{result.elapsed:.0f} s ({speed} realtime){missing}", file=sys.stderr)
    return True


# ---------------------------------------------------------------- queue commands


def _open_queue(config: Config):  # type: ignore[no-untyped-def]
    from daemon.queue import JobQueue

    return JobQueue(config.queue_at, node=config.node.name, paths=config.queue_paths)


def _shown_database(config: Config) -> str:
    if config.database is None:
        return f"SQLite file {config.db_path}"
    from urllib.parse import urlsplit

    password = urlsplit(config.database.reveal()).password is not None
    return config.queue_shown + ("; password set (not shown)" if password else "")


def cmd_status(args: argparse.Namespace) -> int:
    from daemon.datatypes import JobState

    config = load_config(args.config)
    queue = _open_queue(config) if config.database is not None or config.db_path.exists() else None
    states = [JobState(args.state)] if args.state else None
    if args.json:
        shown = (decoders_json(queue) if args.decoders else nodes_json(queue) if args.nodes
                 else jobs_json(queue, states))
        print(json_text(shown))
        return EXIT_OK
    jobs = queue.jobs(states) if queue else []
    if not jobs:
        print("no jobs")
    for job in jobs:
        detail = job.error or (", ".join(p.name for p in job.outputs) if job.outputs else "")
        line = f"{job.state.value:<8} {job.attempts:>2}  {printable(os.fsdecode(job.path))}"
        node = f"  · node {printable(job.node)}" if config.database is not None and job.node else ""
        print(line + (f"  — {printable(detail)}" if detail else "") + _speech(job) + node)
    for node in nodes_json(queue) if config.database is not None else []:
        print(_node_line(node))
    for decoder in queue.decoders.all() if queue else []:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(decoder.last_death_at or 0))
        print(f"decoder {decoder.name}: {decoder.restarts} restart(s); "
              f"last died {when} ({decoder.last_death})")
    return EXIT_OK


def _node_line(node: dict) -> str:
    """Given a node as nodes_json shows it, return its line of `subwatch status`."""
    alive = "gone" if node["gone"] else f"last heartbeat {node['silent_seconds']:.0f} s ago"
    workers = f"; workers {', '.join(node['workers'])}" if node["workers"] and not node["gone"] else ""
    now = [printable(os.path.basename(p)) for p in node["transcribing"]]
    doing = f"; transcribing {', '.join(now)}" if now else ""
    held = f"; holds {len(node['running'])} file(s)" if node["running"] else ""
    return f"node {printable(node['name'])}: {alive}{workers}{doing}{held}"


def _speech(job: Job) -> str:
    """Return "  · speech 52 s, 3 s uncovered" for a job that recorded its speech, else ""."""
    if job.speech_seconds is None:
        return ""
    uncovered = job.uncovered_seconds or 0.0
    return f"  · speech {job.speech_seconds:.0f} s, {uncovered:.0f} s uncovered"


# The JSON of `status --json` lives in daemon.jobsjson (GET /api/jobs serves the same); tests read it here.
_job_json = job_json


def cmd_check_config(args: argparse.Namespace) -> int:
    """Print the effective config. A config whose secrets other users can read is valid, so that
    warning goes to stderr and the exit status stays 0 (see hostcheck.config_exposure)."""
    config = load_config(args.config)
    warning = config_exposure(config)
    if warning:
        print(f"subwatch: warning: {warning}", file=sys.stderr)
    print(f"{config.source}: OK")
    print(f"  state_dir: {config.state_dir}\n  models_dir: {config.models_dir}")
    print(f"  database: {_shown_database(config)}")
    print(f"  node: {config.node.name}; lease {config.node.lease_seconds:g} s; "
          f"path_map {_show_map(config.node.path_map.pairs)}")
    print(f"  log_level: {config.log_level}")
    print(f"  gpu_memory_limit: {config.gpu_memory_limit or 'none (the whole card)'}")
    print(f"  engine: {config.engine}")
    print(f"  notify: {len(config.notify.urls)} url(s), on {', '.join(sorted(config.notify.on))}")
    _show_http(config)
    for rules in config.folders:
        exists = "" if rules.path.is_dir() else "  (does not exist yet: watched when it appears)"
        print(f"\n{rules.path}{exists}")
        for key, value in rules.keys().items():
            print(f"  {key}: {_show(key, value)}")
    return EXIT_OK


def _show_http(config: Config) -> None:
    """Print the http section and the media servers; a key or token only as whether it is set."""
    http = config.http
    if http is None:
        print("  http: off (no `http:` section)")
    else:
        key = "set (not shown)" if http.api_key is not None else "none (loopback only)"
        print(f"  http: listening on {http.listen}; api_key {key}; path_map {_show_map(http.path_map)}")
        print(f"    accept_unwatched: {str(http.accept_unwatched).lower()}; "
              f"asr_requires_key: {str(http.asr_requires_key).lower()}; "
              f"metrics_without_key: {str(http.metrics_without_key).lower()}")
        hosts = ", ".join(http.allowed_hosts) or "none beyond this machine's names"
        print(f"    allowed_hosts: {hosts}; requests: up to {http.max_audio_hours:g} h of audio each, "
              f"{http.max_queued_audio_hours:g} h waiting, {http.decode_slots} decoded at once")
    for server in config.media_servers:
        print(f"  media server: {server.label}; token set (not shown); path_map {_show_map(server.path_map)}")


def _show_map(path_map: tuple[tuple[str, str], ...]) -> str:
    return "{" + ", ".join(f"{a} -> {b}" for a, b in path_map) + "}"


def _show(key: str, value: object) -> str:
    if value is None:
        return "auto" if key in ("language", "poll") else "none"
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, FolderNotify):  # a count, as for notify.urls above: URLs often hold tokens
        return f"{len(value.urls)} url(s)" + (", instead of notify.urls" if value.replace else "")
    return str(value)


def cmd_scan(args: argparse.Namespace) -> int:
    from daemon.intake import Intake

    config = load_config(args.config)
    queued: list[Path] = []

    def queued_one(path: Path) -> None:
        queued.append(path)
        print(f"queued {path}")

    # The daemon's own intake, unstarted: the same checks and enqueueing as its scans.
    Intake(config, _open_queue(config)).scan(absolute(args.path) if args.path else None, queued_one)
    print(f"{len(queued)} file(s) queued", file=sys.stderr)
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    count = _open_queue(config).retry(absolute(args.path) if args.path else None, all_failed=args.all_failed)
    print(f"{count} job(s) queued again")
    return EXIT_OK if count else EXIT_FAILED


def cmd_forget(args: argparse.Namespace) -> int:
    from daemon.subtitles import SidecarLedger

    config = load_config(args.config)
    if SidecarLedger(_open_queue(config)).forget(absolute(args.path)):
        print(f"forgot {args.path}")
        return EXIT_OK
    print(f"subwatch: no job for {args.path}", file=sys.stderr)
    return EXIT_FAILED


def cmd_migrate_db(args: argparse.Namespace) -> int:
    from daemon.queue.engines import shown_url
    from daemon.queue.migrate import migrate

    config = load_config(args.config)
    if not args.to.startswith(("postgresql://", "postgres://")):
        print("subwatch: --to takes a postgresql://user@host/dbname URL", file=sys.stderr)
        return EXIT_FAILED
    done = migrate(config.db_path, args.to, config.node.path_map)
    counts = ", ".join(f"{n} {table}" for table, n in done.rows.items() if n)
    print(f"copied {config.db_path} into {shown_url(args.to)}: {counts or 'nothing (an empty queue)'}")
    print(f"now set database: to that URL in {config.source} and start the daemon")
    return EXIT_OK


# ---------------------------------------------------------------- rewrite


def cmd_rewrite(args: argparse.Namespace) -> int:
    from daemon.datatypes import JobState

    config = load_config(args.config)
    queue = _open_queue(config)
    target = absolute(args.path) if args.path else None
    jobs = [job for job in queue.jobs([JobState.DONE])
            if target is None or job.path == target or target in job.path.parents]
    if not jobs:
        where = f" at or under {target}" if target else ""
        print(f"subwatch: no finished job{where} in {config.queue_shown}", file=sys.stderr)
        return EXIT_FAILED
    failures = 0
    for job in jobs:
        outcome = _rewrite_job(queue, config, job)
        failures += not outcome.ok
        stream = sys.stdout if outcome.ok else sys.stderr
        print(f"{printable(os.fsdecode(job.path))}: {outcome.text}", file=stream)
    return EXIT_FAILED if failures else EXIT_OK


@dataclass(frozen=True)
class _Outcome:
    ok: bool
    text: str  # what happened to one file, for its one line


def _rewrite_job(queue: JobQueue, config: Config, job: Job) -> _Outcome:
    """Given the queue, the config and a done job, write its sidecars again from its stored
    transcript with its folder's current layout rules; return what happened, for one line."""
    from daemon import media, pipeline
    from daemon.subtitles import SidecarLedger

    rules = config.folder_for(job.path)
    if rules is None:
        return _Outcome(False, f"not inside a watched folder of {config.source}; left as it is")
    transcript = queue.transcript_of(job.id)
    if transcript is None:
        return _Outcome(False, "no stored transcript (it was done before subwatch stored them); to "
                        "transcribe it again, delete its subtitles, then `subwatch forget` and "
                        "`subwatch scan` it")
    try:
        prepared = pipeline.reuse(job.path, rules, transcript)
        ledger = SidecarLedger(queue)
        result = pipeline.complete(prepared, transcript, ledger.for_job(job.id))
        if result.note:
            # No speech found: nothing was written, and the job's sidecars, if an earlier run left
            # any, are not removed as stale: they are subtitles, which an empty track is not.
            return _Outcome(True, f"{result.note}; nothing to write")
        queue.set_outputs(job.id, result.outputs)
        removed, left = ledger.remove_stale(job.id, result.outputs + result.kept)
    except media.MediaGone:
        return _Outcome(False, "the file is gone; `subwatch forget` it if it is not coming back")
    except (media.MediaError, OSError, ValueError) as exc:
        return _Outcome(False, f"{exc}; its subtitles were not (all) rewritten")
    parts = [f"rewrote {_names(result.outputs)}" if result.outputs else "rewrote nothing"]
    if result.kept:
        parts.append(f"kept {_names(result.kept)} (not written by subwatch, or edited since)")
    if removed:
        parts.append(f"removed {_names(removed)} (no longer in the layout)")
    if left:
        parts.append(f"left {_names(left)} (no longer in the layout, but edited since subwatch wrote it)")
    return _Outcome(True, "; ".join(parts))


def _names(paths: Sequence[Path]) -> str:
    return ", ".join(printable(os.fsdecode(p.name)) for p in paths)


if __name__ == "__main__":
    sys.exit(main())
