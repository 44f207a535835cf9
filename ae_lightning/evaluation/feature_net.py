"""The small classifier whose features the generation metric compares: one per dataset of the MNIST family,
trained once on the CPU with deterministic settings, cached, and checked by the SHA-256 of its weights."""

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ae_lightning.errors import DataError
from ae_lightning.files import atomic_write, folder_lock

#: what training the classifier takes: images, batch size, epochs, learning rate, seed (fixed: part of what
#: the weights' digest stands for)
TRAIN_IMAGES, BATCH_SIZE, EPOCHS, LEARNING_RATE, SEED = 60_000, 250, 2, 2e-3, 0
#: the digest of the weights trained by this code with torch 2.14.1 on an x86-64 CPU (docs/evaluation.md);
#: another build of torch may train different weights, which are then used with a notice
KNOWN_SHA256: dict[str, str] = {
    "MNIST": "39b584f64a2c30a7a077da53c5b21e1df6cd23d780948bb85e4af098fde8c238",
    "FashionMNIST": "6c9586241943fd8d78e6fbd5e6018cf8565470455c7bde87fda4a397522f303e",
}
#: the size of the training file those digests were trained on (a smaller file trains other weights)
KNOWN_TRAIN_SIZE = 60_000


class FeatureNet(nn.Module):
    """A classifier of 28x28 grayscale images in [0, 1]: two stride-2 convolutions (32, 64 channels) and a
    128-unit layer whose activations are the features; `forward` gives the 10 class logits."""

    feature_dim = 128

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, stride=2, padding=1)  # 28 -> 14
        self.conv2 = nn.Conv2d(32, 64, 3, stride=2, padding=1)  # 14 -> 7
        self.hidden = nn.Linear(64 * 7 * 7, self.feature_dim)
        self.classify = nn.Linear(self.feature_dim, num_classes)

    def features(self, images: Tensor) -> Tensor:
        """Images (B, 1, 28, 28) in [0, 1] -> features (B, 128), in float32."""
        x = F.relu(self.conv2(F.relu(self.conv1(images.float()))))
        return F.relu(self.hidden(x.flatten(1)))

    def forward(self, images: Tensor) -> Tensor:
        return self.classify(self.features(images))


class Features(nn.Module):
    """A classifier's features as a network of its own: images (B, 1, 28, 28) in [0, 1] -> (B, 128)."""

    def __init__(self, classifier: FeatureNet) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier.features(images)


def weights_sha256(network: nn.Module) -> str:
    """The SHA-256 of a network's weights: every tensor's name, shape and float32 bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train_feature_net(images: Tensor, labels: Tensor) -> FeatureNet:
    """A classifier trained on uint8 images (N, 1, 28, 28) and their labels (N,): the first TRAIN_IMAGES,
    EPOCHS passes in a seeded order, Adam, one CPU thread, deterministic algorithms (a few seconds)."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        generator = torch.Generator().manual_seed(SEED)
        # a test asks for it under inference mode, where nothing made could be trained
        with torch.inference_mode(False), torch.enable_grad():
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(SEED)
                network = FeatureNet()
            optimizer = torch.optim.Adam(network.parameters(), lr=LEARNING_RATE)
            images, labels = images[:TRAIN_IMAGES].clone(), labels[:TRAIN_IMAGES].long()
            for _ in range(EPOCHS):
                for rows in torch.randperm(len(images), generator=generator).split(BATCH_SIZE):
                    loss = F.cross_entropy(network(images[rows].float() / 255), labels[rows])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    return network.eval().requires_grad_(False)


def load_or_train(folder: Path, dataset: str, images: Tensor, labels: Tensor) -> tuple[FeatureNet, str]:
    """The classifier of `dataset` cached in `folder` (as `classifier-<sha256>.pt`, checked against its name
    when loaded), or trained on `images`, `labels` and cached there; with its digest."""
    with folder_lock(folder):
        for path in sorted(folder.glob("classifier-*.pt")):
            network = FeatureNet()
            network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            digest = weights_sha256(network)
            if path.stem != f"classifier-{digest}":
                raise DataError(
                    f"{path} does not hold the weights its name says (SHA-256 {digest}): delete it, and the "
                    f"{dataset} feature classifier will be trained again"
                )
            return network.eval().requires_grad_(False), digest
        network = train_feature_net(images, labels)
        digest = weights_sha256(network)
        with atomic_write(folder / f"classifier-{digest}.pt") as file:
            torch.save(network.state_dict(), file)
        return network, digest
