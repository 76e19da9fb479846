"""The seed's MLP VAE: encoder 784-H-(mu, logvar), decoder z-H-784, ReLU hidden layers."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from variants.likelihoods import DEFAULT_GAUSSIAN_VARIANCE, make_likelihood

DATA_DIM = 784


class VAE(nn.Module):
    """q(z|x) = N(mu(x), diag exp(logvar(x))), p(z) = N(0, I), p(x|z) from ``likelihood``.

    ``encode(x)`` takes x of shape [B, 784] in [0, 1] and returns (mu, logvar); ``decode(z)`` returns
    the decoder's parameters (logits for Bernoulli, the mean for Gaussian).
    """

    def __init__(
        self,
        latent: int = 20,
        hidden: int = 400,
        decoder: str = "bernoulli",
        gaussian_variance: float = DEFAULT_GAUSSIAN_VARIANCE,
        learn_variance: bool = False,
    ) -> None:
        super().__init__()
        # What the module is, for whoever loads it back from MLflow (nothing here reads it).
        self.config = {"latent": latent, "hidden": hidden, "decoder": decoder,
                       "gaussian_variance": gaussian_variance, "learn_variance": learn_variance}
        self.latent = latent
        self.fc1 = nn.Linear(DATA_DIM, hidden)
        # The seed's fc21 (mu) and fc22 (logvar) as one layer: one GEMM instead of two, same init law.
        self.fc2 = nn.Linear(hidden, 2 * latent)
        self.fc3 = nn.Linear(latent, hidden)
        self.fc4 = nn.Linear(hidden, DATA_DIM)
        self.likelihood = make_likelihood(decoder, gaussian_variance, learn_variance)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # .float(): under bfloat16 autocast the layers run in bf16 but the losses are summed in fp32
        mu, logvar = self.fc2(F.relu(self.fc1(x))).float().chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        return self.likelihood.params(self.fc4(F.relu(self.fc3(z))).float())

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction's decoder parameters at the posterior mean (deterministic)."""
        mu, _ = self.encode(x)
        return self.decode(mu)

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [*self.fc1.parameters(), *self.fc2.parameters()]

    def decoder_parameters(self) -> list[nn.Parameter]:
        return [p for p in [*self.fc3.parameters(), *self.fc4.parameters(), *self.likelihood.parameters()]
                if p.requires_grad]
