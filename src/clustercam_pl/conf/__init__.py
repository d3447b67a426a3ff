"""The Hydra configs, a package so that Hydra finds them as pkg://clustercam_pl.conf (console scripts)."""
