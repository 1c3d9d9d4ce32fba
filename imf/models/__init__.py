"""Concrete models. Nothing here imports training code."""
from .student import freeze, student_from_teacher
from .token2mel import Token2Mel, Token2MelConfig
from .vocoder import GriffinLim, Vocoder, VocoderConfig, load_vocoder

MODELS = {"Token2Mel": (Token2Mel, Token2MelConfig), "Vocoder": (Vocoder, VocoderConfig)}


def build_model(name: str, config: dict):
    """Rebuild a model from the class name and config dict stored in a checkpoint."""
    if name not in MODELS:
        raise KeyError(f"unknown model class {name!r}; known: {sorted(MODELS)}")
    cls, cfg_cls = MODELS[name]
    return cls(cfg_cls.from_dict(config))


# Token2Wav (one-step token -> waveform in a VAE latent space)
from .dit import DiT1D, DiTConfig, Token2Wav, Token2WavConfig  # noqa: E402
from .vae import VAEConfig, WaveVAE  # noqa: E402

MODELS.update({"WaveVAE": (WaveVAE, VAEConfig), "DiT1D": (DiT1D, DiTConfig), "Token2Wav": (Token2Wav, Token2WavConfig)})
