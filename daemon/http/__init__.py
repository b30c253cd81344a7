"""The daemon's HTTP side: what Bazarr, Sonarr, Radarr and the media servers talk to."""
