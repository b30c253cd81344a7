"""The status page, /api and /metrics through a real `subwatch run`, after real jobs.

One daemon (real tiny.en weights, greedy) listens on 127.0.0.1 with an API key. Two spoken clips
in the tv folder are transcribed; one in the anime folder fails because that folder's model file
is not there yet. /metrics is parsed with prometheus_client's own parser and checked against the
queue; the page is opened in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
driven by Selenium): it asks for the key, shows the done and failed files and the charts, and its
Retry button, once the missing model is in place, sends the failed file back through the daemon.
Screenshots at phone and desktop width are saved under the test's temp folder.
"""

from __future__ import annotations

import base64
import shutil
import socket
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import Daemon, status, status_cli, wait_for_state, write_config
from tests.media_factory import make_media
from tests.test_daemon_http import free_port

API_KEY = "st4tus-" + "0123456789abcdef" * 2
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@dataclass
class World:
    root: Path
    tv: Path
    anime: Path
    late_model: Path  # the anime folder's model: missing until the Retry test puts it there
    checkpoint: Path
    config: Path
    daemon: Daemon
    url: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_en_checkpoint: Path) -> Iterator[World]:
    root = tmp_path_factory.mktemp("status")
    tv, anime = root / "tv", root / "anime"
    make_media(tv / "Pilot.mkv", speech="The quick brown fox jumps over the lazy dog.", seconds=4)
    make_media(tv / "Finale.mp4", speech="Thank you for watching this show.", seconds=3)
    make_media(anime / "Opening.mkv", speech="Hello there, my friend.", seconds=3)
    late_model = root / "late-models" / "tiny-late.pt"
    port = free_port()
    config = write_config(root / "config.yaml", f"""
        state_dir: {root / "state"}
        defaults: {{model: {tiny_en_checkpoint}, beam_size: 1, device: cpu, settle_seconds: 0.5,
                    language: en, formats: [srt]}}
        folders:
          - path: {tv}
          - path: {anime}
            model: {late_model}
        http:
          listen: 127.0.0.1:{port}
          api_key: "{API_KEY}"
    """)
    daemon = Daemon(config)
    daemon.wait_log("watching 2 folder(s)", timeout=120)
    world = World(root, tv, anime, late_model, tiny_en_checkpoint, config, daemon, f"http://127.0.0.1:{port}")
    for name in ("Pilot.mkv", "Finale.mp4"):
        wait_for_state(config, name, {"done"}, timeout=240)
    wait_for_state(config, "Opening.mkv", {"failed"}, timeout=120)
    yield world
    assert daemon.stop() == 0, daemon.log()
    assert API_KEY not in daemon.log()


def jobs_by_name(world: World) -> dict[str, dict[str, Any]]:
    return {Path(job["path"]).name: job for job in status(world.config)}


def get(world: World, path: str, key: str | None = API_KEY, **kwargs: Any) -> httpx.Response:
    return httpx.get(world.url + path, headers={"X-Api-Key": key} if key else {}, timeout=30, **kwargs)


def post(world: World, path: str, payload: Any, key: str | None = API_KEY, **kwargs: Any) -> httpx.Response:
    headers = {"X-Api-Key": key} if key else {}
    return httpx.post(world.url + path, json=payload, headers={**headers, **kwargs.pop("headers", {})},
                      timeout=60, **kwargs)


# ---------------------------------------------------------------- /metrics


def test_metrics_match_the_queue_after_real_jobs(world: World) -> None:
    assert get(world, "/metrics", key=None).status_code == 401
    assert get(world, "/metrics", key="wrong").status_code == 401
    answer = get(world, "/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=")
    families = {f.name: f for f in text_string_to_metric_families(answer.text)}
    assert set(families) == {
        "subwatch_jobs", "subwatch_jobs_finished", "subwatch_media_seconds", "subwatch_speech_seconds",
        "subwatch_job_duration_seconds", "subwatch_realtime_factor", "subwatch_queue_oldest_pending_seconds",
        "subwatch_model_loaded", "subwatch_gpu_memory_bytes", "subwatch_media_server_notifications",
        "subwatch_node_up", "subwatch_node_running_jobs",
    }
    kinds = {name: f.type for name, f in families.items()}
    assert kinds == {
        "subwatch_jobs": "gauge", "subwatch_jobs_finished": "counter", "subwatch_media_seconds": "counter",
        "subwatch_speech_seconds": "counter", "subwatch_job_duration_seconds": "histogram",
        "subwatch_realtime_factor": "histogram", "subwatch_queue_oldest_pending_seconds": "gauge",
        "subwatch_model_loaded": "gauge", "subwatch_gpu_memory_bytes": "gauge",
        "subwatch_media_server_notifications": "counter",
        "subwatch_node_up": "gauge", "subwatch_node_running_jobs": "gauge",
    }

    def samples(name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {tuple(sorted(s.labels.items())): s.value for f in families.values() for s in f.samples
                if s.name == name}

    jobs = status(world.config)
    done = [j for j in jobs if j["state"] == "done"]
    assert len(done) == 2 and [j["state"] for j in jobs].count("failed") == 1
    assert samples("subwatch_jobs") == {
        (("state", "pending"),): 0, (("state", "running"),): 0, (("state", "done"),): 2,
        (("state", "failed"),): 1, (("state", "skipped"),): 0}
    assert samples("subwatch_jobs_finished_total") == {
        (("outcome", "done"),): 2, (("outcome", "failed"),): 1, (("outcome", "skipped"),): 0}
    media = sum(j["media_duration"] for j in done)
    assert media > 6 and samples("subwatch_media_seconds_total")[()] == pytest.approx(media)
    speech = sum(j["speech_seconds"] for j in done)
    assert speech > 1 and samples("subwatch_speech_seconds_total")[()] == pytest.approx(speech)
    elapsed = [j["elapsed"] for j in done]
    assert samples("subwatch_job_duration_seconds_count")[()] == 2
    assert samples("subwatch_job_duration_seconds_sum")[()] == pytest.approx(sum(elapsed))
    buckets = samples("subwatch_job_duration_seconds_bucket")
    assert buckets[(("le", "+Inf"),)] == 2
    assert buckets[(("le", "1.0"),)] == sum(e <= 1 for e in elapsed)
    assert buckets[(("le", "14400.0"),)] == 2  # buckets reach hours
    factors = [j["media_duration"] / j["elapsed"] for j in done]
    assert samples("subwatch_realtime_factor_count")[()] == 2
    assert samples("subwatch_realtime_factor_sum")[()] == pytest.approx(sum(factors))
    assert samples("subwatch_realtime_factor_bucket")[(("le", "+Inf"),)] == 2
    assert samples("subwatch_queue_oldest_pending_seconds")[()] == 0
    # The model is named by its file name (no paths in labels); it stays loaded between jobs.
    assert samples("subwatch_model_loaded") == {(("device", "cpu"), ("model", world.checkpoint.name)): 1}
    assert str(world.root) not in answer.text
    assert samples("subwatch_gpu_memory_bytes") == {}  # CPU only: no card in use
    assert samples("subwatch_media_server_notifications_total") == {}  # no media servers configured
    node = socket.gethostname()  # node.name's default
    assert samples("subwatch_node_up") == {(("node", node),): 1}
    assert samples("subwatch_node_running_jobs") == {(("node", node),): 0}


# ---------------------------------------------------------------- /api


def test_api_jobs_is_status_json_and_actions_need_the_key(world: World) -> None:
    assert get(world, "/api/jobs", key=None).status_code == 401
    assert get(world, "/api/jobs").json() == status_cli(world.config)
    failed = get(world, "/api/jobs?state=failed").json()
    assert [Path(j["path"]).name for j in failed] == ["Opening.mkv"]
    assert "late.pt" in failed[0]["error"]
    opening = failed[0]["path"]
    before = jobs_by_name(world)
    for path, body in (("/api/retry", {"path": opening}), ("/api/retry", {"all_failed": True}),
                       ("/api/forget", {"path": opening}), ("/api/rescan", {})):
        assert post(world, path, body, key=None).status_code == 401, path
        assert post(world, path, body, key="wrong").status_code == 401, path
        assert post(world, f"{path}?apikey=wrong", body, key=None).status_code == 401, path
    assert jobs_by_name(world) == before
    # The key is right, but the request says it comes from another site's page: refused.
    cookie = {"subwatch_key": login_cookie(world)}
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        refused = httpx.post(world.url + "/api/retry", data={"all_failed": "true"}, headers=headers,
                             cookies=cookie, timeout=30)
        assert refused.status_code == 403, headers
    assert jobs_by_name(world) == before
    # Rescan and retry with the key; retry of a path with no failed job says so.
    assert post(world, "/api/rescan", {"path": str(world.tv)}).json() == {"queued": []}
    assert post(world, "/api/rescan", {"path": "/nowhere"}).status_code == 422
    missing = post(world, "/api/retry", {"path": str(world.tv / "Pilot.mkv")})
    assert missing.status_code == 404 and "no failed job" in missing.json()["error"]
    assert jobs_by_name(world) == before


def login_cookie(world: World) -> str:
    """Return the page's cookie as `POST /key` sets it."""
    answer = httpx.post(world.url + "/key", data={"apikey": API_KEY}, timeout=30)
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    set_cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=strict" in set_cookie
    assert API_KEY.lower() not in set_cookie  # derived from the key, not the key
    return answer.cookies["subwatch_key"]


# ---------------------------------------------------------------- the page in a real browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip(f"no {CHROMIUM} or {CHROMEDRIVER}: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def click_and_load(driver: Any, selector: str) -> None:
    """Click the button at `selector` (a form's) and wait until the page it leads to has loaded."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # The old page is marked by a script global, which a new document does not have. Selenium's
    # staleness_of asks about the old <html> element instead, and Chromium's driver sometimes answers
    # "Node with given id does not belong to the document" rather than "stale" (SeleniumHQ/selenium#15401).
    driver.execute_script("window.subwatchOldPage = true")
    driver.find_element(By.CSS_SELECTOR, selector).click()
    WebDriverWait(driver, 30, ignored_exceptions=(WebDriverException,)).until(
        lambda d: d.execute_script("return window.subwatchOldPage === undefined"
                                   " && document.readyState === 'complete'"))


def screenshot(driver: Any, width: int, path: Path) -> None:
    """Save the whole page as it looks `width` CSS pixels wide (a phone: mobile emulation)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": 800, "deviceScaleFactor": 1, "mobile": width < 600})
    height = driver.execute_script("return document.documentElement.scrollHeight")
    shot = driver.execute_cdp_cmd("Page.captureScreenshot",
                                  {"format": "png", "captureBeyondViewport": True,
                                   "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.stat().st_size > 10_000


def test_the_page_in_a_real_browser(world: World, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    # Opened without the key, the page asks for it; a wrong one is refused.
    driver.get(world.url + "/")
    assert driver.find_element(By.ID, "key-prompt").is_displayed()
    driver.find_element(By.ID, "apikey").send_keys("not-the-key")
    click_and_load(driver, "#key-prompt button")
    assert driver.find_element(By.ID, "wrong-key").text == "That is not the key."
    driver.find_element(By.ID, "apikey").send_keys(API_KEY)
    click_and_load(driver, "#key-prompt button")
    cookie = driver.get_cookie("subwatch_key")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert driver.execute_script("return document.cookie") == ""  # no script of the page can read it

    # The done files with their language, length and sidecars; the failure with its reason.
    done = {row.find_element(By.CSS_SELECTOR, "td").text.splitlines()[0]: row.text
            for row in driver.find_elements(By.CSS_SELECTOR, "#done tr.done-job")}
    assert set(done) == {"Pilot.mkv", "Finale.mp4"}
    jobs = jobs_by_name(world)
    for name, text in done.items():
        assert "en" in text.split() and Path(jobs[name]["outputs"][0]).name in text.split()
        assert jobs[name]["outputs"][0].endswith(".srt")
    failed = driver.find_elements(By.CSS_SELECTOR, "#failed tr.failed-job")
    assert [row.find_element(By.CSS_SELECTOR, ".name").text for row in failed] == ["Opening.mkv"]
    reason = failed[0].find_element(By.CSS_SELECTOR, ".reason").text
    assert reason == jobs["Opening.mkv"]["error"].splitlines()[0] and "tiny-late.pt" in reason
    folders = {row.find_element(By.CSS_SELECTOR, "td").text.splitlines()[0]: row.text.split("Rescan")[-1]
               for row in driver.find_elements(By.CSS_SELECTOR, "#folders tr.folder")}
    assert set(folders) == {str(world.tv), str(world.anime)}
    assert folders[str(world.tv)].split()[:3] == ["2", "0", "0"]  # done, failed, pending
    assert folders[str(world.anime)].split()[:3] == ["0", "1", "0"]
    assert world.checkpoint.name in driver.find_element(By.ID, "models").text

    # The charts are drawn: today's bar holds the media done today; one bar per done job's speed.
    media_hours = sum(j["media_duration"] for j in jobs.values() if j["state"] == "done") / 3600
    days = driver.find_elements(By.CSS_SELECTOR, "#chart-days rect.day")
    assert len(days) == 30
    values = [float(bar.get_attribute("data-value")) for bar in days]
    assert values[-1] == pytest.approx(media_hours, abs=1e-4) and sum(values[:-1]) == 0
    assert float(days[-1].get_attribute("height")) > 0
    speeds = driver.find_elements(By.CSS_SELECTOR, "#chart-speed rect.speed")
    assert len(speeds) == 2 and all(float(bar.get_attribute("height")) > 0 for bar in speeds)
    expected = sorted(j["media_duration"] / j["elapsed"] for j in jobs.values() if j["state"] == "done")
    drawn = sorted(float(bar.get_attribute("data-value")) for bar in speeds)
    assert drawn == pytest.approx(expected, rel=1e-2)

    # Readable on a phone: nothing wider than the screen; then both widths as artifacts.
    driver.set_window_size(390, 844)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
    driver.refresh()
    wide = driver.execute_script(  # named in the failure, if any
        "return [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 391)"
        ".map(e => `${e.tagName}#${e.id}.${e.className}`)")
    assert driver.execute_script("return document.documentElement.scrollWidth") <= 390, wide
    screenshot(driver, 390, tmp_path / "status-phone-390.png")
    screenshot(driver, 1280, tmp_path / "status-desktop-1280.png")
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    # The model turns up; Retry sends the failed file back through the daemon, and it is done.
    world.late_model.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(world.checkpoint, world.late_model)
    click_and_load(driver, "#failed tr.failed-job button.retry")
    assert driver.find_element(By.ID, "said").text == "1 job queued again"
    db = sqlite3.connect(world.root / "state" / "jobs.sqlite3")
    try:
        state, error = db.execute("SELECT state, error FROM jobs WHERE CAST(path AS TEXT) LIKE '%Opening.mkv'"
                                  ).fetchone()
    finally:
        db.close()
    assert state in ("pending", "running", "done") and error is None
    job = wait_for_state(world.config, "Opening.mkv", {"done", "failed"}, timeout=180)
    assert job["state"] == "done" and job["outputs"][0].endswith("Opening.en.srt")
    driver.refresh()
    assert driver.find_elements(By.CSS_SELECTOR, "#failed tr.failed-job") == []
    assert "Opening.mkv" in driver.find_element(By.ID, "done").text
