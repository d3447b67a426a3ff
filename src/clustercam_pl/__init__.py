"""ClusterCAM weakly supervised semantic segmentation in PyTorch Lightning.

Importing the package is cheap and has no side effects; the heavy modules are imported where used.
"""

__version__ = "0.1.0"
