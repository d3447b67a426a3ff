"""The library halves of the batch commands (`evaluate`, `export_labels`, `predict`, `sweep`): plain
arguments, no Hydra. Each command's entry point (`clustercam_pl.<command>`) reads a config and calls one."""
