"""From attention to pseudo labels: settings (``config``), ClusterCAMs and the pseudo-label step
(``generate``), pixel-adaptive refinement (``par``) and the background thresholds (``refine``).
Import the submodules directly; this package re-exports nothing."""
