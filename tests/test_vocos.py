"""The vocos package inside the workbench: pretrained checkpoints load exactly, the vocoder is the
package's backbone + head, old checkpoints fail with a clear message, and adversarial training
updates both players and resumes exactly."""
import copy

import pytest
import torch
import yaml
from vocos.pretrained import Vocos

from imf.core.checkpoints import CheckpointError, load_model
from imf.core.runtime import atomic_torch_save
from imf.models.vocoder import Vocoder, VocoderConfig, load_pretrained_vocos, load_vocoder
from imf.train.gan import Adversarial, GANConfig
from imf.train.trainer import TrainConfig
from imf.train.vocoder import train_vocoder
from tests.test_vocoder import FakeCorpus, harmonic

# charactr/vocos-mel-24khz's config.yaml (the F5-TTS vocoder), at a test size (dim 512 x 8 there)
PRETRAINED_YAML = {
    "feature_extractor": {"class_path": "vocos.feature_extractors.MelSpectrogramFeatures",
                          "init_args": {"sample_rate": 24000, "n_fft": 1024, "hop_length": 256, "n_mels": 100,
                                        "padding": "center"}},
    "backbone": {"class_path": "vocos.models.VocosBackbone",
                 "init_args": {"input_channels": 100, "dim": 48, "intermediate_dim": 144, "num_layers": 2}},
    "head": {"class_path": "vocos.heads.ISTFTHead",
             "init_args": {"dim": 48, "n_fft": 1024, "hop_length": 256, "padding": "same"}},
}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A Vocos folder saved from the package's own classes with random weights."""
    folder = tmp_path_factory.mktemp("vocos-mel-24khz")
    (folder / "config.yaml").write_text(yaml.safe_dump(PRETRAINED_YAML))
    torch.manual_seed(0)
    ref = Vocos.from_hparams(str(folder / "config.yaml"))
    with torch.no_grad():  # move every weight away from its init (the head's bias is 0 there, layer scales constant)
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save(ref.state_dict(), folder / "pytorch_model.bin")
    return folder, ref.eval()


def test_pretrained_vocos_folder_loads_and_reproduces_the_package_exactly(pretrained):
    folder, ref = pretrained
    ours = load_vocoder(folder)  # a folder with config.yaml + pytorch_model.bin: no download
    assert isinstance(ours, Vocoder) and ours.config.front_end == "vocos" and ours.config.padding == "same"
    wav = 0.3 * harmonic(0.7)[None].repeat(2, 1) * torch.tensor([[1.0], [0.5]])
    with torch.inference_mode():
        feats = ref.feature_extractor(wav)
        assert torch.equal(ours.features(wav), feats)
        assert torch.equal(ours.vocode(feats), ref.decode(feats))
        assert torch.equal(ours.vocode(ours.features(wav)), ref(wav))  # copy synthesis end to end
    assert ours.vocode(feats).shape == (2, feats.shape[-1] * 256)  # "same" padding: T * hop samples


def test_pretrained_folder_errors_name_the_file(pretrained, tmp_path):
    folder, _ = pretrained
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
        (tmp_path / "config.yaml").write_text((folder / "config.yaml").read_text())
        load_pretrained_vocos(tmp_path)
    bad = copy.deepcopy(PRETRAINED_YAML)
    bad["feature_extractor"]["class_path"] = "vocos.feature_extractors.EncodecFeatures"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(bad))
    (tmp_path / "pytorch_model.bin").write_bytes((folder / "pytorch_model.bin").read_bytes())
    with pytest.raises(CheckpointError, match=r"config.yaml.*MelSpectrogramFeatures"):
        load_vocoder(tmp_path)


def test_vocoder_is_the_package_backbone_and_head():
    """Without the magnitude prior the forward is VocosBackbone -> ISTFTHead; with it, the head's
    own arithmetic plus the prior (equal to the plain head when the prior is zero)."""
    torch.manual_seed(0)
    mel = torch.randn(2, 80, 20) - 4
    plain = Vocoder(VocoderConfig(dim=16, n_layers=1, mag_prior=False)).eval()
    assert torch.equal(plain(mel), plain.head(plain.backbone(mel)))
    prior = Vocoder(VocoderConfig(dim=16, n_layers=1)).eval()
    prior.load_state_dict(plain.state_dict())
    prior.mel_pinv.zero_()  # log(clamp(0, 1e-5)): a constant prior log(1e-5)
    with torch.no_grad():
        prior.head.out.bias[:prior.config.n_bins] -= torch.log(torch.tensor(1e-5))
    assert torch.allclose(prior(mel), plain(mel), atol=1e-5)
    assert prior(mel).shape == (2, 19 * 256)


def test_old_hand_written_vocoder_checkpoint_fails_clearly(tmp_path):
    """A checkpoint of the class this one replaced (ConvNeXt ``blocks.*``, kernel_size in its config)."""
    old = {"model_class": "Vocoder", "model_config": {"n_mels": 80, "dim": 8, "n_layers": 1, "kernel_size": 7},
           "model": {"embed.weight": torch.zeros(1), "blocks.0.dwconv.weight": torch.zeros(1)}}
    old["ema"] = old["model"]
    path = tmp_path / "checkpoints" / "last.pt"
    atomic_torch_save(old, path)
    for load in (lambda: load_vocoder(tmp_path), lambda: load_model(path)):
        with pytest.raises(CheckpointError, match=r"last\.pt.*old hand-written vocoder.*re-run notebooks/00_vocoder"):
            load()


# -- adversarial training --------------------------------------------------------------------------
GAN = GANConfig(enabled=True, periods=(2,), fft_sizes=(128,))  # the package's classes, one sub-discriminator each
TINY = VocoderConfig(dim=16, n_layers=1, intermediate_dim=32)


def test_adversarial_step_updates_generator_and_discriminators():
    torch.manual_seed(0)
    gen = torch.nn.Linear(8, 8)
    adv = Adversarial(GAN, TrainConfig(lr=1e-3, warmup=1))
    d_before = copy.deepcopy(adv.state_dict())
    y = torch.randn(2, 8 * 128)
    y_hat = gen(torch.randn(2, 128, 8)).reshape(2, -1)
    loss, logs = adv(y, y_hat)
    assert {"d_loss", "g_adv", "g_fm"} <= set(logs) and loss.dim() == 0
    changed = [k for k, v in adv.state_dict().items() if v.is_floating_point() and not torch.equal(v, d_before[k])]
    assert changed, "the discriminators did not move"
    assert all(p.grad is None for p in adv.parameters())  # the discriminator step cleaned up after itself
    loss.backward()
    assert gen.weight.grad is not None and gen.weight.grad.abs().sum() > 0  # the generator gets the GAN gradient
    assert all(p.grad is None for p in adv.parameters())  # ... and the discriminators none of it
    assert adv.step == 1


def test_adversarial_start_step_delays_the_terms():
    adv = Adversarial(GAN.replace(start_step=1), TrainConfig())
    before = copy.deepcopy(adv.state_dict())
    loss, logs = adv(torch.randn(1, 512), torch.randn(1, 512))
    assert float(loss) == 0.0 and logs == {} and all(torch.equal(v, before[k]) for k, v in adv.state_dict().items())


def test_gan_vocoder_trains_and_a_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    corpus = FakeCorpus(n=4, seconds=0.4)
    cfg = TrainConfig(steps=4, batch_size=2, lr=2e-3, warmup=1, ema_decay=0.5, ckpt_every=2, log_every=1, seed=0,
                      threads=1)
    full, _ = train_vocoder(corpus, tmp_path / "full", TINY, cfg, seg_seconds=0.08, progress=False, gan_cfg=GAN)
    assert {"d_loss", "g_adv", "g_fm", "mel_l1"} <= set(full.history[-1])
    forward = Adversarial.forward

    def killed_at_step_3(self, y, y_hat):  # the process dies in the 3rd step, after the step-2 checkpoint
        if self.step == 2:
            raise KeyboardInterrupt("simulated kill")
        return forward(self, y, y_hat)

    with monkeypatch.context() as m:
        m.setattr(Adversarial, "forward", killed_at_step_3)
        with pytest.raises(KeyboardInterrupt):
            train_vocoder(corpus, tmp_path / "cut", TINY, cfg, seg_seconds=0.08, progress=False, gan_cfg=GAN)
    resumed, summary = train_vocoder(corpus, tmp_path / "cut", TINY, cfg, seg_seconds=0.08, progress=False,
                                     gan_cfg=GAN)
    assert summary["resumed_from"] == 2
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=False)
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    da, db = a["objective"]["discriminators"], b["objective"]["discriminators"]
    assert all(torch.equal(da[k], db[k]) for k in da)
    assert a["objective"]["step"] == b["objective"]["step"] == 4
    assert [h["d_loss"] for h in full.history] == [h["d_loss"] for h in resumed.history]
    v = load_vocoder(tmp_path / "full")  # the GAN-trained generator loads like any other
    assert torch.equal(v.vocode(corpus.load_mel("u0")), full.ema.eval().vocode(corpus.load_mel("u0")))
