"""PyTorch twins of fmnist_jax.models, for the speed comparison in benchmarks/bench.py only.

Same architectures, layer for layer: `ConvNet` is Conv 32 3x3 (padding 1) -> ReLU -> MaxPool 2
-> Dropout -> Conv 64 3x3 -> ReLU -> MaxPool 2 -> Dropout -> Dense 128 -> ReLU -> Dense 10;
`MLP` is 784 -> 512 -> ReLU -> Dropout -> 10; `LinearRegression` is one Linear with one output.
Inputs are NHWC like the JAX side (a permute to NCHW is part of the model, as it would be for a
PyTorch user holding the same arrays); the flatten after the convolutions goes in NHWC order
too, so the Dense layer sees the same feature order as Flax's. Initialisation is PyTorch's
default (it does not change the speed).
"""

import torch
from torch import nn


class ConvNet(nn.Module):
    def __init__(self, num_classes: int = 10, dropout_rate: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(dropout_rate)
        self.fc1 = nn.Linear(7 * 7 * 64, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW
        x = self.dropout(self.pool(torch.relu(self.conv1(x))))
        x = self.dropout(self.pool(torch.relu(self.conv2(x))))
        x = x.permute(0, 2, 3, 1).flatten(1)  # flatten in NHWC order, as Flax does
        return self.fc2(torch.relu(self.fc1(x)))


class MLP(nn.Module):
    def __init__(self, hidden_size: int = 512, num_classes: int = 10, dropout_rate: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, hidden_size)
        self.dropout = nn.Dropout(dropout_rate)
        self.fc2 = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.fc2(self.dropout(torch.relu(self.fc1(x))))


class LinearRegression(nn.Module):
    def __init__(self, num_features: int):
        super().__init__()
        self.linear = nn.Linear(num_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))[:, 0]


def create_model(config, num_features: int = 28 * 28) -> nn.Module:
    """The twin of `fmnist_jax.models.create_model(config)`."""
    if config.model == "linear_regression":
        return LinearRegression(num_features)
    if config.model == "mlp":
        if config.activation != "relu":
            raise ValueError("the PyTorch twin of the MLP is ReLU only")
        return MLP(config.hidden_size, config.num_classes, config.dropout_rate)
    if config.model == "cnn":
        return ConvNet(config.num_classes, config.dropout_rate)
    raise ValueError(f"unknown model {config.model!r}")


def create_optimizer(config, params) -> torch.optim.Optimizer:
    """The twin of `fmnist_jax.steps.create_optimizer` (optax's Adam defaults equal PyTorch's:
    b1 0.9, b2 0.999, eps 1e-8 outside the square root)."""
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.learning_rate)
    momentum = config.optimizer_kwargs.get("momentum") or 0.0
    return torch.optim.SGD(params, lr=config.learning_rate, momentum=momentum)


def loss_fn(outputs: torch.Tensor, targets: torch.Tensor, regression: bool) -> torch.Tensor:
    """Mean squared error or mean softmax cross-entropy, as fmnist_jax.train computes them."""
    if regression:
        return torch.mean(torch.square(outputs - targets))
    return nn.functional.cross_entropy(outputs, targets)
