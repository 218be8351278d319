"""`SmallCNNTorch`: the plain `torch.nn` twin of `SmallCNN`; its state_dict keys are what the
converter maps from, and it is the reference the JAX model is tested against."""

import torch
from torch import nn


class SmallCNNTorch(nn.Module):
    """The torch twin of `zoo.models.SmallCNN` (same layers, same names, same numerics)."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        drop_rate: float = 0.25,
        bn_momentum: float = 0.3,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64, momentum=bn_momentum)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(128, momentum=bn_momentum)
        self.pool1, self.pool2, self.pool3 = nn.MaxPool2d(2), nn.MaxPool2d(2), nn.MaxPool2d(2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(128, num_classes) if num_classes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(torch.relu(self.bn1(self.conv1(x))))
        x = self.pool2(torch.relu(self.bn2(self.conv2(x))))
        x = self.pool3(torch.relu(self.bn3(self.conv3(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(self.dropout(x))
