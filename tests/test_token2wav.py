"""Token2Wav: the waveform VAE, 25 Hz tokens, the DiT-1D generator, the training stages, the
refinements (decoder-only fine-tuning keeps the generator frozen bit for bit) and the table's rows."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from imf.core.checkpoints import build_model, load_model
from imf.models.features import MelConfig
from imf.data.tokenizers import PhoneTokenizer, resample_labels
from imf.data.waves import T2WDataConfig, TokenWaveDataset, collate_waves, generator_batch
from imf.eval.evalset import make_latent_eval_set
from imf.eval.speed import rtf_table
from imf.eval.systems import System, synthesize, waveforms
from imf.eval.token2wav import build_systems
from imf.flow import schedules
from imf.flow.objectives import CFMConfig, IMFConfig, MeanFlowConfig, cfm_loss, intmeanflow_loss, meanflow_loss
from imf.flow.solvers import Guided
from imf.models import student_from_teacher
from imf.models.dit import DiT1D, DiTConfig
from imf.models.token2wav import Token2Wav, Token2WavConfig
from imf.models.vae import VAEConfig, WaveVAE, pad_to_stride
from imf.train import token2wav as T
from imf.train.trainer import TrainConfig
from imf.train.wave_losses import RefineObjective, T2WLossConfig, VAEObjective
from tests.helpers import Counting, jvp_and_finite_differences

SR, STRIDE = 16000, 640
VAE_CFG = VAEConfig(latent_dim=8, enc_dim=16, enc_layers=1, dec_dim=16, dec_low_layers=1, dec_layers=1)
DIT_CFG = DiTConfig(latent_dim=8, n_tokens=12, dim=32, n_layers=2, n_heads=2, token_layers=1, prompt_layers=1)
DATA_CFG = T2WDataConfig(seg_frames=6, max_frames=16, prompt_frames=8)


class FakeCorpus:
    """The corpus interface the Token2Wav stages use: 2 speakers x 3 utterances of tones."""

    def __init__(self, root):
        self.root, self.sample_rate, self.mel_config, self.n_tokens = root, SR, MelConfig(), 12
        self.speakers = ["a", "b"]
        rng = np.random.default_rng(0)
        self.wavs, rows = {}, []
        for s, f0 in ((0, 150.0), (1, 230.0)):
            for j in range(3):
                n = int(SR * (0.5 + 0.1 * j)) + 37 * j  # not a multiple of the stride
                t = np.arange(n) / SR
                wav = 0.1 * np.sin(2 * np.pi * f0 * (1 + 0.2 * j) * t) + 0.003 * rng.standard_normal(n)
                ident = f"{self.speakers[s]}_{j}"
                self.wavs[ident] = torch.tensor(wav, dtype=torch.float32)
                rows.append({"id": ident, "speaker": self.speakers[s], "text": "a b", "split": "train", "n_samples": n})
        self.manifest = pd.DataFrame(rows)

    def split(self, name):
        return self.manifest[self.manifest.split == name]

    def row(self, ident):
        return self.manifest.set_index("id").loc[ident]

    def load_wav(self, ident):
        return self.wavs[ident]

    def tokens(self, ident):
        n = 1 + self.wavs[ident].numel() // self.mel_config.hop_length
        return (torch.arange(n) // 7) % (self.n_tokens - 1) + 1

    def speaker_id(self, name):
        return self.speakers.index(name)


def train_cfg(steps=3, **kw):
    return TrainConfig(**{**dict(steps=steps, batch_size=4, lr=2e-3, warmup=1, ema_decay=0.5, ckpt_every=2,
                                 log_every=1, threads=1), **kw})


def randomized(model, scale=0.05, seed=0):
    """Perturb zero-initialised heads so outputs are non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def cond_of(b, n, tp=6, seed=0, latent_dim=8):
    g = torch.Generator().manual_seed(seed)
    return {"tokens": torch.randint(1, 12, (b, n), generator=g), "mask": torch.ones(b, n, dtype=torch.bool),
            "prompt": torch.randn(b, latent_dim, tp, generator=g), "prompt_mask": torch.ones(b, tp, dtype=torch.bool)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    corpus = FakeCorpus(tmp_path_factory.mktemp("corpus"))
    torch.manual_seed(0)
    d = TokenWaveDataset(corpus, "train", PhoneTokenizer(STRIDE), STRIDE, min_frames=DATA_CFG.seg_frames)
    return d.attach_latents(WaveVAE(VAE_CFG))


# -- the VAE ----------------------------------------------------------------------------------
@pytest.mark.parametrize("up", [4, 1])
def test_vae_shapes_and_25_hz_latent_rate(up):
    cfg = VAE_CFG.replace(up=up)
    vae = WaveVAE(cfg).eval()
    assert cfg.stride == 640 and cfg.frame_rate == 25.0 and cfg.hop_out * up == 640
    n = 7 * STRIDE
    mu, logvar = vae.encode(torch.randn(2, n))
    assert mu.shape == logvar.shape == (2, 8, n // 640)
    assert vae.decode(mu).shape == (2, n)
    wav_hat, mu2, _ = vae(torch.randn(3, 2 * STRIDE))
    assert wav_hat.shape == (3, 2 * STRIDE) and mu2.shape == (3, 8, 2)
    with pytest.raises(ValueError, match="multiple of 640"):
        vae.encode(torch.randn(1, n + 1))
    assert pad_to_stride(torch.zeros(1, n + 1), STRIDE).shape[-1] == 8 * STRIDE
    assert vae.reconstruct(torch.randn(n + 5)).shape == (n + 5,)


def test_latent_normalisation_round_trip():
    vae = WaveVAE(VAE_CFG)
    vae.set_latent_stats(torch.arange(8.0), torch.linspace(0.5, 2, 8))
    mu = torch.randn(2, 8, 5)
    assert torch.allclose(vae.denormalize(vae.normalize(mu)), mu, atol=1e-6)
    assert torch.allclose(vae.normalize(mu)[:, 3], (mu[:, 3] - 3.0) / vae.latent_std[3])


# -- tokens -----------------------------------------------------------------------------------
def test_tokens_resampled_to_25_hz_by_majority():
    # 62.5 Hz frames (hop 256): frame k is centred on sample 256 k; a 25 Hz frame (hop 640) holds 2-3 of them
    labels = np.array([1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3])
    out = resample_labels(labels, 256, 640, 4)
    # window 0: frames 0,1,2 -> 1; window 1 (640..1280): frames 3,4 -> 2; window 2 (1280..1920): 5,6,7 -> 2;
    # window 3 (1920..2560): frames 8,9 -> 3
    assert out.tolist() == [1, 2, 2, 3]
    # a tie takes the frame nearest the window centre (sample 320 -> frame 1); past the end repeats the last
    assert resample_labels(np.array([5, 6, 7]), 256, 640, 3).tolist() == [6, 7, 7]


def test_tokenizer_gives_one_token_per_latent_frame(data):
    for it in data.items:
        n = it["n_samples"]
        assert it["wav"].numel() % STRIDE == 0 and it["wav"].numel() >= n
        assert it["tokens"].shape == (it["wav"].numel() // STRIDE,) == (it["latent"].shape[-1],)
        assert it["tokens"].dtype == torch.long and int(it["tokens"].min()) >= 1
    assert PhoneTokenizer(STRIDE).tokens(data.corpus, "a_0").numel() == math.ceil(data.items[0]["n_samples"] / STRIDE)


# -- the DiT ------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_dit_fresh_student_equals_teacher_bit_for_bit(seed):
    torch.manual_seed(seed)
    teacher = randomized(DiT1D(DIT_CFG), seed=seed)
    student = student_from_teacher(teacher)
    assert set(student.state_dict()) - set(teacher.state_dict()) == {"time_mix.weight"}
    b, n = 3, 9
    cond = cond_of(b, n, seed=seed)
    cond["mask"][0, 6:] = False
    x, t = torch.randn(b, 8, n), torch.rand(b)
    v = teacher(x, t=t, cond=cond)
    for r in (None, t, t + torch.rand(b) * (1 - t), torch.ones(b)):  # any r in [t, 1]
        assert torch.equal(student(x, t=t, r=r, cond=cond), v)
    cond["drop"] = torch.tensor([True, False, True])
    assert torch.equal(student(x, t=t, r=t + torch.rand(b) * (1 - t), cond=cond), teacher(x, t=t, cond=cond))


def test_dit_padding_and_sdpa():
    torch.manual_seed(0)
    m = randomized(DiT1D(DIT_CFG.replace(mean_flow=True)))
    b, n = 2, 10
    cond = cond_of(b, n)
    cond["mask"][1, 7:] = False
    x, t = torch.randn(b, 8, n), torch.rand(b)
    r = t + torch.rand(b) * (1 - t)  # a student's r lies in [t, 1]
    u = m(x, t=t, r=r, cond=cond)
    assert u.shape == (b, 8, n) and torch.all(u[1, :, 7:] == 0)
    x2 = x.clone()
    x2[1, :, 7:] = 50.0  # padded frames do not leak into valid ones
    assert torch.allclose(m(x2, t=t, r=r, cond=cond), u, atol=1e-5)
    sdpa = DiT1D(m.config.replace(attn_impl="sdpa"))
    sdpa.load_state_dict(m.state_dict())
    assert torch.allclose(sdpa(x, t=t, r=r, cond=cond), u, atol=1e-5)


def test_dit_jvp_matches_finite_differences_float64():
    """MeanFlow's total derivative du/dt = v . d_z u + d_t u (one forward-mode JVP through the
    DiT's explicit attention, padding mask included) equals central differences along (v, 1)."""
    torch.manual_seed(0)
    m = randomized(DiT1D(DIT_CFG.replace(mean_flow=True))).double()
    b, n = 2, 10
    cond = cond_of(b, n)
    cond["mask"][1, 7:] = False
    cond["prompt"] = cond["prompt"].double()
    dudt, fd = jvp_and_finite_differences(m, cond, 8, b, n)
    assert fd.abs().max() > 1e-3  # a non-trivial derivative
    assert torch.allclose(dudt, fd, rtol=1e-5, atol=1e-7)


# -- a tiny training step of each stage lowers its loss (fixed batch, fixed noise) ---------------
def _fit_fixed(params, loss_fn, steps=6, lr=3e-3):
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn(torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], loss_fn(torch.Generator().manual_seed(0)).item()


def test_each_stage_lowers_its_loss_on_a_fixed_batch(data):
    items = data.items[:4]
    torch.manual_seed(0)
    vae = WaveVAE(VAE_CFG)
    batch = collate_waves(items)
    vae_obj = VAEObjective(T2WLossConfig(), DATA_CFG.seg_frames)
    before, after = _fit_fixed(list(vae.parameters()), lambda g: vae_obj(vae, batch, g)[0])
    assert after < before, ("vae", before, after)

    fm = DiT1D(DIT_CFG)
    fm_loss = lambda g: (lambda b: cfm_loss(fm, b["z_1"], b["cond"], b["cond"]["mask"], CFMConfig(), g)[0])(
        generator_batch(data, batch, DATA_CFG, g))
    before, after = _fit_fixed(list(fm.parameters()), fm_loss)
    assert after < before, ("fm", before, after)

    mf = DiT1D(DIT_CFG.replace(mean_flow=True))
    mf_cfg = MeanFlowConfig(adaptive_p=0.0)  # plain MSE: the adaptive weight makes the loss ~1 by design
    mf_loss = lambda g: (lambda b: meanflow_loss(mf, b["z_1"], b["cond"], b["cond"]["mask"], mf_cfg, g)[0])(
        generator_batch(data, batch, DATA_CFG, g))
    before, after = _fit_fixed(list(mf.parameters()), mf_loss)
    assert after < before, ("meanflow", before, after)

    teacher = randomized(DiT1D(DIT_CFG)).eval().requires_grad_(False)
    student = student_from_teacher(teacher)
    guided = Guided(teacher, 2.0)
    imf_loss = lambda g: (lambda b: intmeanflow_loss(student, guided, b["z_1"], b["cond"], b["cond"]["mask"],
                                                     IMFConfig(teacher_nfe=4), g)[0])(generator_batch(data, batch, DATA_CFG, g))
    before, after = _fit_fixed(list(student.parameters()), imf_loss)
    assert after < before, ("imf", before, after)

    for joint in (False, True):
        system = Token2Wav.from_parts(vae, randomized(DiT1D(DIT_CFG.replace(mean_flow=True)), seed=3))
        params = system.vae.decoder_parameters() + (list(system.generator.parameters()) if joint else [])
        obj = RefineObjective(data, T2WLossConfig(), DATA_CFG, joint=joint)
        before, after = _fit_fixed(params, lambda g: obj(system, batch, g)[0], lr=1e-3)
        assert after < before, ("joint" if joint else "decoder", before, after)


# -- one step is one generator call ---------------------------------------------------------------
def test_one_step_generation_calls_the_generator_once(data):
    torch.manual_seed(0)
    system = Token2Wav.from_parts(WaveVAE(VAE_CFG), randomized(DiT1D(DIT_CFG.replace(mean_flow=True)))).eval()
    es = make_latent_eval_set(data, 3, prompt_frames=DATA_CFG.prompt_frames)
    counting = Counting(system.generator)
    wav = synthesize(System("mf", counting, decode=system.decode), es.z_0, schedules.uniform(1), es.cond)
    assert counting.calls == 1 and wav.shape == (3, es.z_0.shape[-1] * STRIDE)
    # and equals the differentiable one-step path
    with torch.no_grad():
        x = system.one_step(es.z_0, es.cond) * es.cond["mask"][:, None]
        assert torch.allclose(system.decode(x), wav, atol=1e-5)
    counting.calls = 0
    fm = System("fm", Guided(counting, 2.0), decode=system.decode)
    wavs = waveforms([(fm, 10)], es)
    assert counting.calls == 10 and [w.numel() for w in wavs["fm"]] == es.n_samples


def test_latent_eval_set_is_one_eval_set_with_real_audio(data):
    es = make_latent_eval_set(data, 4, seed=7, prompt_frames=DATA_CFG.prompt_frames)
    again = make_latent_eval_set(data, 4, seed=7, prompt_frames=DATA_CFG.prompt_frames)
    assert torch.equal(es.z_0, again.z_0) and es.ids == again.ids  # deterministic from its seed
    assert es.z_1.shape == es.z_0.shape == (4, 8, es.mask.shape[1]) and torch.all(es.z_0[~es.mask[:, None].expand_as(es.z_0)] == 0)
    for i, ident in enumerate(es.ids):
        it = data[data.index[ident]]
        n = it["latent"].shape[-1]
        assert torch.equal(es.z_1[i, :, :n], it["latent"]) and int(es.mask[i].sum()) == n
        assert es.n_samples[i] == it["n_samples"] and torch.equal(es.wavs[i], it["wav"])
        assert data[data.index[es.prompt_ids[i]]]["speaker"] == it["speaker"] == int(es.speakers[i])
        assert es.prompt_ids[i] != ident  # another utterance of the same speaker
    assert es.audio_seconds == pytest.approx(sum(es.n_samples) / SR)
    sub = es.subset([2, 0])
    assert sub.ids == [es.ids[2], es.ids[0]] and sub.n_samples == [es.n_samples[2], es.n_samples[0]]
    assert sub.wavs[0] is es.wavs[2]
    with pytest.raises(ValueError, match="no mels"):
        es.real_logmel()


# -- the stages through the trainer: resumable runs, frozen generator in decoder-only FT -------------
def test_stages_end_to_end_and_decoder_ft_keeps_the_generator_bit_for_bit(data, tmp_path):
    corpus = data.corpus
    tr, _ = T.train_vae(corpus, tmp_path / "vae", VAE_CFG, train_cfg(), data_cfg=DATA_CFG, data=data, progress=False)
    vae = load_model(tmp_path / "vae/checkpoints/last.pt")
    assert isinstance(vae, WaveVAE) and not torch.equal(vae.latent_std, torch.ones(8))
    data.attach_latents(vae)
    lat = torch.cat([it["latent"] for it in data.items], -1)
    assert lat.mean(-1).abs().max() < 1e-3 and (lat.std(-1) - 1).abs().max() < 0.05  # standardised

    T.train_generator(data, tmp_path / "fm", "fm", DIT_CFG, train_cfg(), data_cfg=DATA_CFG, progress=False)
    # latents of another VAE cannot resume the run (the run records which VAE encoded its latents)
    data.attach_latents(WaveVAE(VAE_CFG))
    with pytest.raises(ValueError, match="different config"):
        T.train_generator(data, tmp_path / "fm", "fm", DIT_CFG, train_cfg(), data_cfg=DATA_CFG, progress=False)
    data.attach_latents(vae)
    T.train_generator(data, tmp_path / "mf", "meanflow", DIT_CFG, train_cfg(), mf_cfg=MeanFlowConfig(),
                      data_cfg=DATA_CFG, progress=False)
    T.distill_generator(data, tmp_path / "fm/checkpoints/last.pt", tmp_path / "imf", train_cfg(),
                        IMFConfig(teacher_nfe=2), DATA_CFG, progress=False)
    mf = load_model(tmp_path / "mf/checkpoints/last.pt")
    assert mf.config.mean_flow and load_model(tmp_path / "imf/checkpoints/last.pt").config.mean_flow

    trainer, summary = T.finetune_decoder(data, tmp_path / "vae/checkpoints/last.pt", tmp_path / "mf/checkpoints/last.pt",
                                          tmp_path / "decft", train_cfg(4), data_cfg=DATA_CFG, progress=False)
    assert summary["steps"] == 4
    ft = load_model(tmp_path / "decft/checkpoints/last.pt")
    assert isinstance(ft, Token2Wav)
    for name, system in (("model", trainer.model), ("ema", trainer.ema), ("checkpoint", ft)):
        for k, v in mf.state_dict().items():
            assert torch.equal(system.generator.state_dict()[k], v), (name, k)
        enc = {k: v for k, v in vae.state_dict().items() if k.startswith("enc")}
        assert all(torch.equal(system.vae.state_dict()[k], v) for k, v in enc.items()), name
    assert not torch.equal(ft.vae.head.out.weight, vae.head.out.weight)  # the decoder did train

    T.finetune_joint(data, tmp_path / "decft/checkpoints/last.pt", tmp_path / "joint", train_cfg(3, lr=1e-4),
                     data_cfg=DATA_CFG, progress=False)
    joint = load_model(tmp_path / "joint/checkpoints/last.pt")
    assert not torch.equal(joint.generator.proj_out.weight, mf.proj_out.weight)  # the generator moved too
    assert torch.equal(joint.vae.enc_in.weight, vae.enc_in.weight)  # the encoder did not

    # resuming a finished run trains nothing more; a checkpoint rebuilds its model alone
    _, again = T.finetune_decoder(data, tmp_path / "vae/checkpoints/last.pt", tmp_path / "mf/checkpoints/last.pt",
                                  tmp_path / "decft", train_cfg(4), data_cfg=DATA_CFG, progress=False)
    assert again["resumed_from"] == 4 and again["steps_this_session"] == 0
    state = torch.load(tmp_path / "joint/checkpoints/last.pt", weights_only=False)
    assert isinstance(build_model(state["model_class"], state["model_config"]), Token2Wav)
    assert Token2WavConfig.from_dict(state["model_config"]).vae == VAE_CFG

    # the table's rows, synthesis and RTF on the eval set
    es = make_latent_eval_set(data, 2, prompt_frames=DATA_CFG.prompt_frames)
    points = build_systems(T.checkpoints({n: tmp_path / n for n in ("vae", "fm", "mf", "imf")}
                                         | {"mf_decft": tmp_path / "decft", "mf_joint": tmp_path / "joint"}))
    assert [nfe for _, nfe in points] == [0, 10, 1, 1, 1, 1]
    wavs = waveforms(points, es)
    assert all(len(w) == 2 and [x.numel() for x in w] == es.n_samples for w in wavs.values())
    # the oracle row reconstructs the real audio through the VAE, no sampling (the longest
    # utterance has no batch padding, so it matches the VAE's own reconstruction)
    i = max(range(2), key=lambda k: es.n_samples[k])
    assert points[0][0].model is None and torch.allclose(
        wavs["VAE oracle"][i], vae.reconstruct(es.wavs[i][:es.n_samples[i]]).clamp(-1, 1), atol=1e-5)
    rtf = rtf_table(points, es, repeats=1, reference="FM 10-step")
    assert list(rtf["system"]) == [s.name for s, _ in points] and list(rtf["nfe"]) == [0, 10, 1, 1, 1, 1]
    assert (rtf["total_s"] > 0).all() and rtf["flow_s"].isna().tolist() == [True] + [False] * 5
    assert rtf.loc[1, "speedup_e2e"] == 1.0 and rtf.loc[2, "speedup_e2e"] == pytest.approx(
        rtf.loc[1, "total_s"] / rtf.loc[2, "total_s"])
