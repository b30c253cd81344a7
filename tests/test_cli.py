"""The command line as a user meets it: real `python -m daemon` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import srt

from daemon import __version__, pipeline, subtitles
from daemon.config import load_config
from daemon.datatypes import Cue, JobResult, Segment, Transcript, Word
from daemon.queue import JobQueue
from tests.harness import REPO, Daemon, subwatch, write_config
from tests.media_factory import duration_of, make_media
from tests.said import assert_cues_on_speech, assert_says, media_speech, srt_cues
from tests.test_subtitles_cues import assert_cues_ok


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "config.yaml", f"""
        state_dir: {tmp_path / "state"}
        folders:
          - path: {tmp_path / "media"}
            language: de
          - path: {tmp_path / "anime"}
            language: ja
            task: translate
            prompt: "Naruto, Sasuke"
    """)


COMMANDS = ["run", "transcribe", "status", "check-config", "scan", "retry", "forget", "rewrite"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    done = subwatch(command, "--help")
    assert done.returncode == 0 and done.stdout.startswith(f"usage: subwatch {command}")


def test_version_and_usage_errors() -> None:
    assert subwatch("--version").stdout.strip() == f"subwatch {__version__}"
    done = subwatch("frobnicate")
    assert done.returncode == 2 and "invalid choice: 'frobnicate'" in done.stderr


def test_check_config_prints_effective_rules(config: Path, tmp_path: Path) -> None:
    done = subwatch("check-config", "--config", str(config))
    assert done.returncode == 0, done.stderr
    anime = done.stdout.split(str(tmp_path / "anime"))[1]
    assert "does not exist yet" in anime
    assert "  language: ja\n" in anime and "  task: translate\n" in anime
    assert "  prompt: Naruto, Sasuke\n" in anime and "  model: turbo\n" in anime
    assert "  engine: auto\n" in done.stdout.split(str(tmp_path / "media"))[0]  # top level, before folders


def test_config_error_is_one_reason_and_exit_78(tmp_path: Path) -> None:
    bad = write_config(tmp_path / "bad.yaml", "folders:\n  - path: /x\n    langauge: en\n")
    done = subwatch("run", "--config", str(bad))
    assert done.returncode == 78
    assert done.stderr == (f"subwatch: config error: {bad}: at 'folders[0].langauge': unknown key; "
                           "did you mean 'language'?\n")


def test_status_json_lists_jobs(config: Path, tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    (media / "a.mkv").write_bytes(b"a" * 100)
    (media / "b.mkv").write_bytes(b"b" * 100)
    queue = JobQueue(tmp_path / "state" / "jobs.sqlite3")
    a = queue.enqueue(media / "a.mkv", media).job
    queue.enqueue(media / "b.mkv", media)
    queue.claim()
    queue.finish(a.id, JobResult("de", None, 61.0, 3.0, outputs=(media / "a.de.srt",)))
    queue.close()
    jobs = json.loads(subwatch("status", "--json", "--config", str(config)).stdout)
    assert [(Path(j["path"]).name, j["state"], j["attempts"], j["language"], j["outputs"], j["error"])
            for j in jobs] == [("a.mkv", "done", 1, "de", [str(media / "a.de.srt")], None),
                               ("b.mkv", "pending", 0, None, [], None)]
    text = subwatch("status", "--config", str(config), "--state", "pending").stdout
    assert text.strip() == f"pending   0  {media / 'b.mkv'}"


def test_status_of_a_fresh_install_is_empty(config: Path) -> None:
    done = subwatch("status", "--json", "--config", str(config))
    assert done.returncode == 0 and json.loads(done.stdout) == []


def test_retry_and_forget(config: Path, tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    (media / "a.mkv").write_bytes(b"a" * 100)
    queue = JobQueue(tmp_path / "state" / "jobs.sqlite3")
    job = queue.enqueue(media / "a.mkv", media).job
    queue.claim()
    queue.fail(job.id, "no audio stream", permanent=True)
    assert subwatch("retry", "--all-failed", "--config", str(config)).stdout == "1 job(s) queued again\n"
    assert queue.get(job.id).state.value == "pending" and queue.get(job.id).attempts == 0
    assert subwatch("retry", "--all-failed", "--config", str(config)).returncode == 1
    assert subwatch("forget", str(media / "a.mkv"), "--config", str(config)).returncode == 0
    assert queue.find(media / "a.mkv") is None
    missing = subwatch("forget", str(media / "a.mkv"), "--config", str(config))
    assert missing.returncode == 1 and missing.stderr == f"subwatch: no job for {media / 'a.mkv'}\n"


def test_scan_queues_media_without_subtitles(config: Path, tmp_path: Path) -> None:
    media = tmp_path / "media"
    make_media(media / "new.mkv", seconds=1)
    make_media(media / "has.mkv", seconds=1)
    (media / "has.de.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nHallo\n")
    done = subwatch("scan", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"queued {media / 'new.mkv'}\n"
    queue = JobQueue(tmp_path / "state" / "jobs.sqlite3")
    assert [j.path.name for j in queue.jobs()] == ["new.mkv"]
    assert subwatch("scan", "--config", str(config)).stdout == ""  # nothing twice


def test_transcribe_one_shot_writes_sidecars(tmp_path: Path, tiny_en_checkpoint: Path) -> None:
    # espeak's robot "Hello" is a coin toss for tiny.en ("The low" at beam 5 even in float32); this
    # sentence reads word for word in every engine and precision
    video = make_media(tmp_path / "Clip (2020).mp4", speech="Good morning from the command line.", seconds=3)
    done = subwatch("transcribe", str(video), "--model", str(tiny_en_checkpoint), "--language", "en",
                    "--beam-size", "1", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    srt_path, vtt_path = tmp_path / "Clip (2020).en.srt", tmp_path / "Clip (2020).en.vtt"
    assert done.stdout.splitlines() == [str(srt_path), str(vtt_path)]
    assert "Clip (2020).mp4: done  en  0:00:03 in" in done.stderr
    parsed = list(srt.parse(srt_path.read_text()))
    cues = [Cue(c.start.total_seconds(), c.end.total_seconds(), tuple(c.content.split("\n"))) for c in parsed]
    # Every cue of the written file keeps the subtitle limits (lines, length, duration, speed, gaps).
    assert_cues_ok(cues, media=duration_of(video))
    assert_says(srt_path, "good morning from the command line")
    assert_says(vtt_path, "good morning from the command line")
    assert_cues_on_speech(srt_cues(srt_path), [media_speech(video)])
    # A second run keeps what is there unless asked to overwrite.
    srt_path.write_text("1\n00:00:00,000 --> 00:00:01,000\nmine\n")
    again = subwatch("transcribe", str(video), "--model", str(tiny_en_checkpoint), "--language", "en",
                     "--beam-size", "1", "--device", "cpu")
    assert again.returncode == 0 and srt_path.read_text().endswith("mine\n")
    assert "skipped: already has en subtitles" in again.stderr


def test_transcribe_reports_bad_files_and_exits_1(tmp_path: Path, tiny_en_checkpoint: Path) -> None:
    empty = tmp_path / "empty.mkv"
    empty.write_bytes(b"")
    done = subwatch("transcribe", str(empty), "--model", str(tiny_en_checkpoint), "--device", "cpu")
    assert done.returncode == 1
    assert done.stderr.strip().endswith(f"{empty}: the file is empty (0 bytes)")


def test_transcribe_takes_a_relative_model_folder(tmp_path: Path) -> None:
    """--model ../folder is a path (it has a "/"), made absolute: the error names the folder in full."""
    video = make_media(tmp_path / "clip.mkv", speech="Which model is this?", seconds=2)
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"")
    relative = os.path.relpath(folder, REPO)  # subwatch runs in REPO
    assert not relative.startswith("/")
    done = subwatch("transcribe", str(video), "--model", relative, "--device", "cpu")
    assert done.returncode == 1
    assert done.stderr.strip().endswith(
        f"{video}: model folder {folder} holds no Whisper model: expected model.bin and config.json (a "
        "faster-whisper / CTranslate2 model), or config.json and model.safetensors (a Hugging Face "
        "transformers Whisper model); point `model:` at such a folder, a .pt checkpoint or a Whisper name"
    ), done.stderr


def test_transcribe_rejects_bad_flag_values(tmp_path: Path) -> None:
    done = subwatch("transcribe", str(tmp_path / "x.mkv"), "--language", "jp")
    assert done.returncode == 1
    assert "--language: unknown language 'jp'; did you mean 'ja'?" in done.stderr


def test_transcribe_flags_build_rules_as_the_config_would(config: Path, tmp_path: Path) -> None:
    """`subwatch transcribe`'s flags are folder keys written over the file's folder (or the defaults)."""
    from daemon.cli import _one_shot_rules, build_parser

    flags = "--model base --language auto --beam-size 1 --device cpu --formats srt".split()
    args = build_parser().parse_args(["transcribe", "x.mkv", *flags])
    same = write_config(tmp_path / "same.yaml", f"""
        state_dir: {tmp_path / "state"}
        folders:
          - path: {tmp_path / "anime"}
            language: auto
            task: translate
            prompt: "Naruto, Sasuke"
            model: base
            beam_size: 1
            device: cpu
            formats: [srt]
    """)
    film = tmp_path / "anime" / "Film.mkv"
    assert _one_shot_rules(film, load_config(config), args) == load_config(same).folder_for(film)
    loose = tmp_path / "elsewhere" / "Clip.mkv"  # in no watched folder: the defaults, and the flags
    plain = write_config(tmp_path / "plain.yaml", f"""
        folders:
          - path: {loose.parent}
            language: auto
            model: base
            beam_size: 1
            device: cpu
            formats: [srt]
    """)
    assert _one_shot_rules(loose, None, args) == load_config(plain).folder_for(loose)


# ---------------------------------------------------------------- rewrite

SAID = ("Every subtitle line here was laid out for forty two columns and will be laid out again "
        "for fewer without the model")


def said_transcript() -> Transcript:
    words = SAID.split()
    step = 5.0 / len(words)
    timed = tuple(Word(0.2 + i * step, 0.2 + (i + 0.8) * step, f" {w}", 0.9) for i, w in enumerate(words))
    return Transcript((Segment(timed[0].start, timed[-1].end, f" {SAID}", timed),), "en", None, 6.0,
                      speech_seconds=5.0, uncovered_seconds=1.25)


def layout_config(tmp_path: Path, media: Path, layout: str) -> Path:
    """A config whose model does not exist: `rewrite` must never need one."""
    return write_config(tmp_path / "config.yaml", f"""
        state_dir: {tmp_path / "state"}
        defaults: {{model: {tmp_path / "no-such-model.pt"}, language: en}}
        folders: [{{path: {media}, {layout}}}]
    """)


def finished_by_the_daemon(config: Path, film: Path) -> int:
    """Finish `film`'s job as the daemon does (the real pipeline and queue), from SAID; return its id."""
    rules = load_config(config).folder_for(film)
    queue = JobQueue(load_config(config).db_path)
    job = queue.enqueue(film, rules.path).job
    queue.claim()

    ledger = subtitles.SidecarLedger(queue)
    result = pipeline.complete(pipeline.prepare(film, rules, ledger.owns), said_transcript(),
                               ledger.for_job(job.id))
    queue.finish(job.id, result)
    queue.close()
    return job.id


def lines_of(path: Path) -> list[str]:
    return [line for cue in srt.parse(path.read_text(encoding="utf-8")) for line in cue.content.split("\n")]


def test_rewrite_lays_out_anew_and_leaves_edited_subtitles_alone(tmp_path: Path) -> None:
    media = tmp_path / "media"
    film = make_media(media / "Film.mkv", seconds=6)
    config = layout_config(tmp_path, media, "max_line_chars: 42")
    finished_by_the_daemon(config, film)
    srt_path, vtt_path = media / "Film.en.srt", media / "Film.en.vtt"
    assert max(map(len, lines_of(srt_path))) > 20
    [job] = json.loads(subwatch("status", "--json", "--config", str(config)).stdout)
    assert (job["speech_seconds"], job["uncovered_seconds"]) == (5.0, 1.25)
    assert subwatch("status", "--config", str(config)).stdout.endswith("· speech 5 s, 1 s uncovered\n")

    layout_config(tmp_path, media, "max_line_chars: 20")
    done = subwatch("rewrite", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{film}: rewrote Film.en.srt, Film.en.vtt\n"
    assert max(map(len, lines_of(srt_path))) <= 20 and " ".join(lines_of(srt_path)) == SAID
    vtt_lines = [ln for ln in vtt_path.read_text().split("\n\n", 1)[1].splitlines() if "-->" not in ln]
    assert vtt_path.read_text().startswith("WEBVTT") and max(map(len, vtt_lines)) <= 20

    # The user fixes the SubRip by hand; then a new name (sdh) and line length.
    mine = "1\n00:00:01,000 --> 00:00:02,000\nFixed by hand\n"
    srt_path.write_text(mine)
    layout_config(tmp_path, media, "max_line_chars: 30, sdh: true")
    done = subwatch("rewrite", str(media), "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stdout == (f"{film}: rewrote Film.en.sdh.srt, Film.en.sdh.vtt; removed Film.en.vtt "
                           "(no longer in the layout); left Film.en.srt (no longer in the layout, but "
                           "edited since subwatch wrote it)\n")
    assert srt_path.read_text() == mine and not vtt_path.exists()
    assert " ".join(lines_of(media / "Film.en.sdh.srt")) == SAID
    assert max(map(len, lines_of(media / "Film.en.sdh.srt"))) <= 30

    # Edited under the new name too: kept and said so; the WebVTT beside it is still rewritten.
    sdh = media / "Film.en.sdh.srt"
    sdh.write_text(mine)
    done = subwatch("rewrite", str(film), "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stdout == (f"{film}: rewrote Film.en.sdh.vtt; kept Film.en.sdh.srt (not written by subwatch, "
                           "or edited since)\n")
    assert sdh.read_text() == mine
    [job] = json.loads(subwatch("status", "--json", "--config", str(config)).stdout)
    assert job["outputs"] == [str(media / "Film.en.sdh.vtt")] and job["state"] == "done"


def test_rewrite_reports_what_it_cannot_do_and_exits_1(tmp_path: Path) -> None:
    media = tmp_path / "media"
    config = layout_config(tmp_path, media, "max_line_chars: 42")
    nothing = subwatch("rewrite", "--config", str(config))
    assert nothing.returncode == 1 and nothing.stderr.startswith("subwatch: no finished job in ")
    old = make_media(media / "Old.mkv", seconds=2)
    queue = JobQueue(load_config(config).db_path)
    job = queue.enqueue(old, media).job
    queue.claim()
    queue.finish(job.id, JobResult("en", None, 2.0, 1.0, outputs=(media / "Old.en.srt",)))  # no transcript
    queue.close()
    done = subwatch("rewrite", str(old), "--config", str(config))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith(f"{old}: no stored transcript")
    assert "`subwatch forget`" in done.stderr and "`subwatch scan`" in done.stderr
    elsewhere = subwatch("rewrite", str(tmp_path / "elsewhere"), "--config", str(config))
    assert elsewhere.returncode == 1
    assert elsewhere.stderr.startswith(f"subwatch: no finished job at or under {tmp_path / 'elsewhere'}")


# ---------------------------------------------------------------- the host: secrets on disk, descriptors

API_KEY = "k3y-0f-the-http-side-abcdef-0123456789"
TOKEN, PASSWORD = "jellyfin-t0ken-123456", "s3cret-mail-pass"


def secret_config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "config.yaml", f"""
        state_dir: {tmp_path / "state"}
        notify: {{urls: ["mailto://me:{PASSWORD}@mail.example.com"]}}
        http: {{listen: "127.0.0.1:9000", api_key: "{API_KEY}"}}
        media_servers: [{{kind: jellyfin, url: "http://127.0.0.1:8096", token: "{TOKEN}"}}]
        folders:
          - path: {tmp_path / "media"}
            notify: {{urls: ["ntfys://ntfy.sh/private-topic"]}}
    """)


def owner_of(path: Path) -> str:
    import grp
    import pwd

    info = path.stat()
    return f"{pwd.getpwuid(info.st_uid).pw_name}:{grp.getgrgid(info.st_gid).gr_name}"


def test_check_config_warns_when_every_user_can_read_its_secrets(tmp_path: Path) -> None:
    config = secret_config(tmp_path)
    config.chmod(0o644)
    done = subwatch("check-config", "--config", str(config))
    # Valid, so still 0; the warning goes to stderr, and no secret anywhere.
    assert done.returncode == 0 and done.stdout.startswith(f"{config}: OK\n")
    assert done.stderr == (
        f"subwatch: warning: {config} is readable by every user of this machine (mode 0644, owner "
        f"{owner_of(config)}) and holds http.api_key, 1 media server token(s), 2 notify URL(s): make it "
        f"readable by root and the subwatch group only with `chmod 0640 {config} && chown root:subwatch "
        f"{config}`\n")
    for secret in (API_KEY, TOKEN, PASSWORD, "private-topic"):
        assert secret not in done.stdout + done.stderr
    # Others' read bit alone counts.
    config.chmod(0o604)
    assert "(mode 0604, owner" in subwatch("check-config", "--config", str(config)).stderr
    for private in (0o640, 0o600, 0o660):
        config.chmod(private)
        quiet = subwatch("check-config", "--config", str(config))
        assert quiet.returncode == 0 and quiet.stderr == "", oct(private)


def test_check_config_is_quiet_about_a_readable_config_without_secrets(config: Path) -> None:
    config.chmod(0o644)
    done = subwatch("check-config", "--config", str(config))
    assert done.returncode == 0 and done.stderr == ""


RAISE = """
import resource
from daemon.hostcheck import raise_nofile_limit
print(raise_nofile_limit())
print(resource.getrlimit(resource.RLIMIT_NOFILE))
"""


def test_raise_nofile_limit_takes_the_soft_limit_to_the_hard_one() -> None:
    import resource

    def low() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096))

    done = subprocess.run([sys.executable, "-c", RAISE], cwd=REPO, capture_output=True, text=True,
                          timeout=60, preexec_fn=low)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "NofileLimit(before=256, soft=4096, hard=4096, error=None)", "(4096, 4096)"]


def open_files_limit(pid: int) -> tuple[int, int]:
    """Return (soft, hard) of `Max open files` in /proc/PID/limits."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no open files limit for {pid}")


def test_subwatch_run_raises_its_limit_and_warns_about_a_readable_config(
    tmp_path: Path, spawn: Callable[..., Daemon]
) -> None:
    import resource

    config = write_config(tmp_path / "config.yaml", f"""
        state_dir: {tmp_path / "state"}
        log_level: debug
        notify: {{urls: ["json://127.0.0.1:9/{TOKEN}"]}}
        folders: [{{path: {tmp_path / "media"}, create_if_missing: true}}]
    """)
    config.chmod(0o644)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 512:
        pytest.skip(f"the hard limit on open files ({hard}) leaves nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # inherited by the daemon started now
    try:
        daemon = spawn(config)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    daemon.wait_log("watching 1 folder(s)")
    assert open_files_limit(daemon.process.pid) == (hard, hard)
    assert f"open files: soft limit {hard} (was 256, hard {hard})" in daemon.log()
    assert f"{config} is readable by every user of this machine (mode 0644" in daemon.log()
    assert TOKEN not in daemon.log()
    assert daemon.stop() == 0, daemon.log()
