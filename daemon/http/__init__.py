"""The daemon's HTTP side, inside `subwatch run` when the config has an `http:` section.

- `app`: the Starlette application: the API key gate (and the page's cookie), /healthz, the
  hooks, and Bazarr's routes;
- `hooks`: Sonarr, Radarr, Jellyfin, Plex and Emby telling subwatch about new files;
- `bazarr`: whisper-asr-webservice's /asr and /detect-language (daemon.asr decodes them);
- `page`: the status page at / (Jinja2 templates in `templates/`, inline SVG charts);
- `api`: /api/jobs (`subwatch status --json`'s JSON), /api/retry, /api/forget, /api/rescan;
- `metrics`: Prometheus' /metrics, computed from the queue database on each scrape;
- `snapshot`: what the page and /metrics read outside the queue (GPU memory, the work now);
- `server`: uvicorn on a thread of its own, started and stopped by the service.
"""

from daemon.http.app import build_app
from daemon.http.context import DaemonView, HttpContext
from daemon.http.server import HttpServer

__all__ = ["DaemonView", "HttpContext", "HttpServer", "build_app"]
