"""CAM post-processing: pixel-adaptive refinement (``par``), pseudo labels (``pseudo_label``) and
dense CRF (``crf``). Import the submodules directly; this package re-exports nothing heavy."""
