"""Replays: screen recordings to MP4 (ffmpeg x11grab), stored by the daemon and served."""
