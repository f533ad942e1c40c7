"""Build a model of the project from its config node (``configs/model/*.yaml``).

One builder per model name in :data:`MODEL_BUILDERS`; a builder takes the config mapping and
returns a :class:`PretextModel`. Add a model by registering its builder here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from labelfree.models.autoencoder import AutoEncoder, MNISTDecoder, MNISTEncoder
from labelfree.models.base import PretextModel
from labelfree.models.classifier import Classifier
from labelfree.models.gru import TextGRUAutoEncoder
from labelfree.models.lstm import LSTMAutoEncoder
from labelfree.models.pretext import make_perturbation
from labelfree.models.prior import PriorRegularised
from labelfree.models.simclr import make_simclr
from labelfree.models.vae import BetaTCVAE, BetaVAE, BurgessDecoder, BurgessEncoder
from labelfree.models.vgae import VGAE
from labelfree.priors import AttributionPrior

ARCHITECTURES: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {"mnist_conv": (MNISTEncoder, MNISTDecoder)}


def _perturbation(config: Mapping[str, Any]) -> nn.Module:
    return make_perturbation(str(config.get("pretext", "reconstruction")), **dict(config.get("perturbation") or {}))


def _required(config: Mapping[str, Any], **casts: Callable[[Any], Any]) -> dict[str, Any]:
    """``{key: cast(config[key])}`` for every ``key=cast``: the required settings of a builder, converted."""
    return {key: cast(config[key]) for key, cast in casts.items()}


def _architecture(config: Mapping[str, Any]) -> tuple[type[nn.Module], type[nn.Module]]:
    architecture = config.get("architecture")
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"Unknown architecture {architecture!r} for model {config.get('name')!r}; accepted: {sorted(ARCHITECTURES)}"
        )
    return ARCHITECTURES[architecture]


def build_autoencoder(config: Mapping[str, Any]) -> PretextModel:
    """Convolutional autoencoder (keys: architecture, latent_dim, pretext, perturbation)."""
    encoder_cls, decoder_cls = _architecture(config)
    latent_dim = int(config["latent_dim"])
    return AutoEncoder(encoder_cls(latent_dim), decoder_cls(latent_dim), _perturbation(config))


def build_lstm_autoencoder(config: Mapping[str, Any]) -> PretextModel:
    """The ECG5000 LSTM autoencoder (keys: sequence_length, n_channels, hidden_size, latent_dim)."""
    sizes = _required(config, sequence_length=int, n_channels=int, hidden_size=int, latent_dim=int)
    return LSTMAutoEncoder(**sizes, perturbation=_perturbation(config))


def build_text_gru_autoencoder(config: Mapping[str, Any]) -> PretextModel:
    """The GRU encoder-decoder of token ids (keys: vocab_size, embedding_dim, hidden_size, teacher_forcing)."""
    return TextGRUAutoEncoder(**_required(config, vocab_size=int, embedding_dim=int, hidden_size=int,
                                          teacher_forcing=float))


def build_simclr(config: Mapping[str, Any]) -> PretextModel:
    """SimCLR on a CIFAR ResNet-18 (keys: width, hidden_dim, projection_dim, temperature, augmentation)."""
    return make_simclr(
        **_required(config, width=int, hidden_dim=int, projection_dim=int, temperature=float),
        head_batchnorm=bool(config.get("head_batchnorm", False)),
        augmentation=dict(config.get("augmentation") or {}),
    )


def build_classifier(config: Mapping[str, Any]) -> PretextModel:
    """The encoder of ``architecture`` with a linear head and cross-entropy (keys: architecture, latent_dim, n_classes)."""
    encoder_cls, _ = _architecture(config)
    latent_dim = int(config["latent_dim"])
    return Classifier(encoder_cls(latent_dim), latent_dim, int(config["n_classes"]))


def _burgess_pair(config: Mapping[str, Any]) -> tuple[BurgessEncoder, BurgessDecoder]:
    """Burgess et al. encoder and decoder (keys: latent_dim, image_size, n_channels, hidden_channels,
    kernel_size, hidden_dim, base_size)."""
    keys = ("image_size", "n_channels", "hidden_channels", "kernel_size", "hidden_dim", "base_size")
    sizes = {key: int(config[key]) for key in keys if config.get(key) is not None}
    latent_dim = int(config["latent_dim"])
    return BurgessEncoder(latent_dim, **sizes), BurgessDecoder(latent_dim, **sizes)


def build_beta_vae(config: Mapping[str, Any]) -> PretextModel:
    """beta-VAE on the Burgess architecture (keys: beta and those of :func:`_burgess_pair`)."""
    return BetaVAE(*_burgess_pair(config), beta=float(config["beta"]))


def build_tc_vae(config: Mapping[str, Any]) -> PretextModel:
    """beta-TCVAE on the Burgess architecture (keys: beta, alpha, gamma, estimator, dataset_size and those of
    :func:`_burgess_pair`). ``dataset_size`` (N of the minibatch estimator) is set by the disvae protocol."""
    if config.get("dataset_size") is None:
        raise ValueError(
            "model tc_vae needs model.dataset_size (N, the number of training examples of its minibatch "
            "estimator); the disvae protocol sets it from the training split, elsewhere set it explicitly"
        )
    return BetaTCVAE(
        *_burgess_pair(config), dataset_size=int(config["dataset_size"]), beta=float(config["beta"]),
        alpha=float(config.get("alpha", 1.0)), gamma=float(config.get("gamma", 1.0)),
        estimator=str(config.get("estimator", "mss")),
    )


def build_vgae(config: Mapping[str, Any]) -> PretextModel:
    """The variational graph autoencoder on GCN layers (keys: n_features, hidden_dim, latent_dim); its graph is
    bound from the data splits (:meth:`VGAE.bind_data`)."""
    return VGAE(**_required(config, n_features=int, hidden_dim=int, latent_dim=int))


#: ``model.name`` -> builder.
MODEL_BUILDERS: dict[str, Callable[[Mapping[str, Any]], PretextModel]] = {
    "autoencoder": build_autoencoder,
    "lstm_autoencoder": build_lstm_autoencoder,
    "simclr": build_simclr,
    "classifier": build_classifier,
    "beta_vae": build_beta_vae,
    "tc_vae": build_tc_vae,
    "text_gru_autoencoder": build_text_gru_autoencoder,
    "vgae": build_vgae,
}


def build_model(config: Mapping[str, Any]) -> PretextModel:
    """The model described by ``config`` (``config['name']`` selects the builder).

    A ``prior`` node with a weight > 0 wraps it in :class:`~labelfree.models.prior.PriorRegularised` (an
    attribution prior in the training loss, :class:`~labelfree.priors.AttributionPrior`); weight 0 (or no node)
    gives exactly the plain model.
    """
    name = config.get("name")
    if name not in MODEL_BUILDERS:
        raise ValueError(f"Unknown model {name!r}; accepted: {sorted(MODEL_BUILDERS)}")
    model = MODEL_BUILDERS[name](config)
    prior = config.get("prior")
    if prior is not None:
        prior = AttributionPrior.from_config(prior)
        if prior.weight > 0:
            return PriorRegularised(model, prior)
    return model
