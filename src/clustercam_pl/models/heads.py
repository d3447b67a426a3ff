"""Heads on the concatenated feature map F' = [patch features; every block's class-to-patch attention]."""

from __future__ import annotations

from torch import Tensor, nn


class LargeFOV(nn.Module):
    """DeepLab-LargeFOV segmentation decoder (reference: ToCo / ClusterCAM `LargeFOV`).

    Two dilated 3x3 convolutions and a 1x1 classifier, all without bias, PyTorch default init
    (the reference's `_init_weights` is never called).
    """

    def __init__(self, in_channels: int, num_outputs: int, width: int = 512, dilation: int = 5):
        super().__init__()
        self.conv6 = nn.Conv2d(in_channels, width, 3, padding=dilation, dilation=dilation, bias=False)
        self.conv7 = nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation, bias=False)
        self.conv8 = nn.Conv2d(width, num_outputs, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C', h, w) -> (B, num_outputs, h, w) (K + 1 label values with background, K without)."""
        return self.conv8(self.relu(self.conv7(self.relu(self.conv6(x)))))
