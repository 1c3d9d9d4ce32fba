"""Concrete networks. Nothing here imports training, evaluation or sampling code.

Every network registers itself with :mod:`imf.core.checkpoints` so that
``imf.core.checkpoints.load_model(path)`` rebuilds it from a checkpoint alone.
"""
from imf.core.checkpoints import MODELS, build_model, register
from imf.models import backbones  # noqa: F401  (registers the foreign-backbone adapters; f5_tts loads lazily)
from imf.models.dit import DiT1D, DiTConfig
from imf.models.student import freeze, init_time_mix, student_from_teacher
from imf.models.token2mel import Token2Mel, Token2MelConfig
from imf.models.token2wav import Token2Wav, Token2WavConfig
from imf.models.vae import VAEConfig, WaveVAE
from imf.models.vocoder import GriffinLim, Vocoder, VocoderConfig, load_vocoder

for _cls, _cfg in ((Token2Mel, Token2MelConfig), (Vocoder, VocoderConfig), (WaveVAE, VAEConfig),
                   (DiT1D, DiTConfig), (Token2Wav, Token2WavConfig)):
    register(_cfg)(_cls)

__all__ = ["MODELS", "build_model", "DiT1D", "DiTConfig", "freeze", "init_time_mix", "student_from_teacher",
           "Token2Mel", "Token2MelConfig", "Token2Wav", "Token2WavConfig", "VAEConfig", "WaveVAE", "GriffinLim",
           "Vocoder", "VocoderConfig", "load_vocoder"]
