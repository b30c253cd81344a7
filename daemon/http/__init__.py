"""The daemon's HTTP side, inside `subwatch run` when the config has an `http:` section.

- `app`: the Starlette application: the API key gate, /healthz, the hooks, and Bazarr's
  routes;
- `hooks`: Sonarr, Radarr, Jellyfin, Plex and Emby telling subwatch about new files;
- `bazarr`: whisper-asr-webservice's /asr and /detect-language (daemon.asr decodes them);
- `server`: uvicorn on a thread of its own, started and stopped by the service.
"""

from daemon.http.app import HttpContext, build_app
from daemon.http.server import HttpServer

__all__ = ["HttpContext", "HttpServer", "build_app"]
