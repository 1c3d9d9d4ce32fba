"""The whole-utterance waveform datasets (imf.data.waves) and the one waveform loss (imf.train.wave_losses)."""
import pytest
import torch

from imf.core.config import ConfigError
from imf.models.features import LogMel, MelConfig
from imf.data.tokenizers import PhoneTokenizer
from imf.data.waves import (MelWaveDataset, T2WDataConfig, TokenWaveDataset, collate_waves, generator_batch,
                            mel_segments, pad_stack, segment_frames)
from imf.models.vae import VAEConfig, WaveVAE
from imf.train.wave_losses import T2WLossConfig, VAEObjective, VocoderObjective, WaveLoss, WaveLossConfig
from tests.test_token2wav import SR, STRIDE, VAE_CFG, FakeCorpus
from tests.test_vocoder import FakeCorpus as MelCorpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return FakeCorpus(tmp_path_factory.mktemp("corpus"))


def test_token_wave_items_follow_the_mel_dataset_keys(corpus):
    data = TokenWaveDataset(corpus, "train", PhoneTokenizer(STRIDE), STRIDE, min_frames=20)
    for it in data.items:
        t = it["tokens"].numel()
        assert it["wav"].numel() == t * STRIDE and t == max(-(-it["n_samples"] // STRIDE), 20)
        assert torch.equal(it["wav"][:it["n_samples"]], corpus.load_wav(it["id"]))
        assert torch.all(it["wav"][it["n_samples"]:] == 0)
        assert isinstance(it["speaker"], int) and it["speaker"] == corpus.speaker_id(it["id"][0])
    picked = TokenWaveDataset(corpus, "train", PhoneTokenizer(STRIDE), STRIDE, ids=["b_1", "a_2"])
    assert [it["id"] for it in picked] == ["b_1", "a_2"] and picked.index == {"b_1": 0, "a_2": 1}
    assert len(TokenWaveDataset(corpus, "train", PhoneTokenizer(STRIDE), STRIDE, max_utts=2)) == 2
    with pytest.raises(KeyError):
        TokenWaveDataset(corpus, "train", PhoneTokenizer(STRIDE), STRIDE, ids=["nope"])
    with pytest.raises(ValueError, match="no utterances"):
        TokenWaveDataset(corpus, "test", PhoneTokenizer(STRIDE), STRIDE)


def test_collate_keeps_lists_and_generator_batch_crops_aligned(corpus):
    data = TokenWaveDataset(corpus, "train", PhoneTokenizer(STRIDE), STRIDE).attach_latents(WaveVAE(VAE_CFG))
    batch = collate_waves([data[4], data[0], data[2]])
    assert batch["ids"] == ["b_1", "a_0", "a_2"] and set(batch) == {"ids", "wav", "n_samples", "tokens", "speaker",
                                                                    "text", "latent"}
    with pytest.raises(ValueError, match="empty"):
        collate_waves([])
    cfg = T2WDataConfig(seg_frames=4, max_frames=10, prompt_frames=5)
    b = generator_batch(data, batch, cfg, torch.Generator().manual_seed(3))
    assert b["z_1"].shape == (3, 8, 10) and b["cond"]["prompt"].shape == (3, 8, 5)
    for i, f in enumerate(b["starts"].tolist()):  # the crop and its tokens come from the same frames
        assert torch.equal(b["z_1"][i], batch["latent"][i][:, f:f + 10])
        assert torch.equal(b["cond"]["tokens"][i], batch["tokens"][i][f:f + 10])
    again = generator_batch(data, batch, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(again["z_1"], b["z_1"]) and torch.equal(again["cond"]["prompt"], b["cond"]["prompt"])
    out, mask = pad_stack([torch.ones(2, 3), torch.ones(2, 5)])
    assert out.shape == (2, 2, 5) and mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    # a deterministic prompt (eval sets) is another utterance of the same speaker, from frame 0
    p, pid = data.prompt(0, 5, None)
    assert pid != "a_0" and pid.startswith("a_") and torch.equal(p, data[data.index[pid]]["latent"][:, :5])


def test_mel_wave_dataset_pads_short_utterances():
    corpus = MelCorpus(n=2, seconds=0.3)
    hop = MelConfig().hop_length
    data = MelWaveDataset(corpus, min_samples=8000)
    for it in data:
        assert it["wav"].numel() == max(8000, it["n_samples"]) and it["mel"].shape == (80, 1 + it["wav"].numel() // hop)
        assert torch.allclose(it["mel"], LogMel()(it["wav"]))
    mel, wav = mel_segments(collate_waves(data.items), 10, hop, torch.Generator().manual_seed(0))
    assert mel.shape == (2, 80, 11) and wav.shape == (2, 10 * hop)
    assert segment_frames(0.5, MelConfig()) == round(0.5 * 16000 / hop)


# -- the one waveform loss ----------------------------------------------------------------------
def _tone(n=8000, f=220.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / SR
    return (0.1 * torch.sin(2 * torch.pi * f * t) + 0.003 * torch.randn(n, generator=g))[None]


def test_wave_loss_is_zero_on_the_target_and_weights_its_terms():
    wav = _tone()
    same = WaveLoss()(wav, wav)
    assert same["mel_l1"] == 0 and same["mrstft"].abs() < 1e-6
    other = WaveLoss()(_tone(f=330.0, seed=1), wav)
    assert other["mel_l1"] > 0.1 and other["mrstft"] > 0.1
    weighted = WaveLoss(WaveLossConfig(mel_weight=2.0, stft_weight=0.5))(_tone(f=330.0, seed=1), wav)
    assert weighted["loss"] == pytest.approx(float(2.0 * other["mel_l1"] + 0.5 * other["mrstft"]), rel=1e-6)


def test_loss_configs_name_the_bad_parameter():
    with pytest.raises(ConfigError, match="win_lengths"):
        WaveLossConfig(win_lengths=(240, 600, 4096))
    with pytest.raises(ConfigError, match="kl_weight"):
        T2WLossConfig(kl_weight=-1.0)
    assert T2WLossConfig().to_dict().keys() == WaveLossConfig().to_dict().keys() | {"kl_weight"}


def test_objectives_share_the_wave_loss():
    corpus = MelCorpus(n=2, seconds=0.6)
    hop = MelConfig().hop_length
    batch = collate_waves(MelWaveDataset(corpus).items)
    model = lambda mel: torch.zeros(mel.shape[0], (mel.shape[-1] - 1) * hop)  # noqa: E731
    loss, logs = VocoderObjective(MelConfig(), 8)(model, batch, torch.Generator().manual_seed(5))
    _, wav = mel_segments(batch, 8, hop, torch.Generator().manual_seed(5))
    assert loss.item() == pytest.approx(WaveLoss()(torch.zeros_like(wav), wav)["loss"].item())
    assert set(logs) == {"loss", "mel_l1", "mrstft"}
    vae = WaveVAE(VAEConfig(latent_dim=4, enc_dim=8, enc_layers=1, dec_dim=8, dec_low_layers=1, dec_layers=1))
    wav_batch = {"ids": ["x", "y"], "wav": [_tone(3 * STRIDE)[0], _tone(4 * STRIDE, seed=2)[0]]}
    loss, logs = VAEObjective(T2WLossConfig(kl_weight=0.5), 2)(vae, wav_batch, torch.Generator().manual_seed(0))
    assert logs["loss"] == pytest.approx(logs["mel_l1"] + logs["mrstft"] + 0.5 * logs["kl"], rel=1e-5)
