"""F5-TTS front end, IntMeanFlow distillation of a tiny F5 DiT, and the one-call synthesis.

Uses the vocab.txt and the English reference clip that ship inside the ``f5-tts`` wheel; the
DiT is tiny and random (built with F5's own class). Nothing downloads.
"""
from __future__ import annotations

from importlib.resources import files

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("f5_tts.model", reason="F5-TTS not installed: pip install -e '.[f5]'")
from f5_tts.model import utils as f5_utils  # noqa: E402
from f5_tts.model.modules import MelSpec  # noqa: E402

from imf.core.checkpoints import load_model  # noqa: E402
from imf.data.f5_text import (F5Dataset, F5Text, estimate_frames, f5_mel, infill_cond, make_collate,  # noqa: E402
                              prompt_text_with_pause, span_mask)
from imf.eval.f5 import F5GriffinLim, speak_f5  # noqa: E402
from imf.flow.objectives import IMFConfig  # noqa: E402
from imf.flow.schedules import epss_f5, uniform  # noqa: E402
from imf.flow.solvers import Guided, sample  # noqa: E402
from imf.models.backbones import F5Backbone, F5Config, f5_model_config, make_student  # noqa: E402
from imf.train.f5 import F5DistillConfig, distill_f5, f5_objective  # noqa: E402
from imf.train.trainer import TrainConfig  # noqa: E402

EXAMPLES = files("f5_tts") / "infer" / "examples"
VOCAB = str(EXAMPLES / "vocab.txt")
REF_WAV = str(EXAMPLES / "basic" / "basic_ref_en.wav")


def tiny_teacher(seed: int = 0) -> F5Backbone:
    cfg = f5_model_config("F5TTS_v1_Base", VOCAB, dim=32, depth=2, heads=2, dim_head=16, text_dim=16, conv_layers=1)
    torch.manual_seed(seed)
    m = F5Backbone(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval().requires_grad_(False)


def test_model_configs_come_from_the_installed_package():
    base = f5_model_config("F5TTS_v1_Base", VOCAB)
    assert (base.dim, base.depth, base.heads, base.ff_mult, base.text_dim, base.conv_layers) == (1024, 22, 16, 2, 512, 4)
    assert base.text_num_embeds == 2545 and base.vocab == VOCAB and base.mel_dim == 100 and base.hop_length == 256
    small = f5_model_config("F5TTS_Small", VOCAB)
    assert (small.dim, small.depth, small.heads, small.pe_attn_head, small.text_mask_padding) == (768, 18, 12, 1, False)
    with pytest.raises(FileNotFoundError, match="F5TTS_Huge"):
        f5_model_config("F5TTS_Huge", VOCAB)


def test_text_and_mel_front_end_are_f5s():
    tok = F5Text(VOCAB)
    texts = ["Some call me nature.", "hi"]
    ids = tok.ids(texts)
    char_map, _ = f5_utils.get_tokenizer(VOCAB, "custom")
    assert torch.equal(ids, f5_utils.list_str_to_idx(f5_utils.convert_char_to_pinyin(texts), char_map))
    assert ids.shape == (2, 20) and (ids[1, 2:] == -1).all()
    wav, sr = sf.read(REF_WAV, dtype="float32")
    assert sr == 24000
    mel = f5_mel(torch.from_numpy(wav), sr)
    torch.testing.assert_close(mel, MelSpec(mel_spec_type="vocos")(torch.from_numpy(wav)[None])[0])
    assert mel.shape == (100, 1 + len(wav) // 256)
    assert prompt_text_with_pause("Some text") == "Some text.  " and prompt_text_with_pause("你好。") == "你好。"
    assert estimate_frames(100, "abcdefghij", "x" * 20) == 300 and estimate_frames(100, "ab", "x") == 100 + 166


def test_span_mask_covers_the_asked_fraction():
    lengths = torch.tensor([100, 60, 37])
    m = span_mask(lengths, (0.7, 1.0), 100, torch.Generator().manual_seed(0))
    frac = m.sum(1) / lengths
    assert m.shape == (3, 100) and ((frac >= 0.69) & (frac <= 1.0)).all()
    assert not (m & ~(torch.arange(100)[None] < lengths[:, None])).any()  # inside each utterance
    for row in m:  # one contiguous span
        idx = torch.nonzero(row).flatten()
        assert idx.numel() == 0 or (idx[-1] - idx[0] + 1) == idx.numel()


def _write_clips(tmp_path, n: int = 6):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        sec = 0.35 + 0.05 * i
        t = np.arange(int(24000 * sec)) / 24000
        f0 = 120 + 20 * i
        wav = 0.3 * np.sin(2 * np.pi * f0 * t * (1 + 0.1 * t)) + 0.01 * rng.standard_normal(t.shape)
        sf.write(tmp_path / f"{i}.wav", wav.astype(np.float32), 24000)
        rows.append(f"{i}.wav,word number {i}")
    (tmp_path / "train.csv").write_text("audio_path,text\n" + "\n".join(rows) + "\n")
    return tmp_path / "train.csv"


def _fixed_loss(student, teacher, batch, seeds=range(4)) -> float:
    obj = f5_objective(teacher, IMFConfig(teacher_nfe=4, cfg_scale=3.0))
    student.eval()
    with torch.no_grad():
        return float(np.mean([obj(student, batch, torch.Generator().manual_seed(s))[0].item() for s in seeds]))


def test_tiny_intmeanflow_distillation_lowers_its_loss_and_samples_at_1_2_3_nfe(tmp_path):
    teacher = tiny_teacher()
    data = F5Dataset.from_manifest(_write_clips(tmp_path), teacher.config)
    collate = make_collate(F5Text(VOCAB))
    batch = collate([data[i] for i in range(len(data))])
    guided = Guided(teacher, 3.0)
    before = _fixed_loss(make_student(teacher), guided, batch)
    imf = IMFConfig(teacher_nfe=4, cfg_scale=3.0, p_instant=0.2, p_full=0.2)
    trainer, summary = distill_f5(teacher, data, collate, tmp_path / "run",
                                  TrainConfig(steps=40, batch_size=6, lr=3e-3, warmup=5, ema_decay=0.0,
                                              ckpt_every=40, log_every=5, threads=1),
                                  imf, F5DistillConfig(), progress=False)
    after = _fixed_loss(trainer.model, guided, batch)
    assert after < 0.8 * before, (before, after)
    # the checkpoint: F5's DiT keys + W, a config naming the F5 model and vocab; loads with our loader
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert set(state["model"]) == set(teacher.state_dict()) | {"time_mix.weight"}
    assert state["model_config"]["model_name"] == "F5TTS_v1_Base" and state["model_config"]["vocab"] == VOCAB
    student = load_model(tmp_path / "run" / "checkpoints" / "last.pt")
    assert isinstance(student, F5Backbone) and student.config.mean_flow
    # the student samples at 1/2/3 NFE, and its 1-step output moved towards the guided teacher
    cond = infill_cond(batch["z_1"], batch["text"], batch["mask"],
                       span_mask(batch["lengths"], (0.7, 1.0), batch["z_1"].shape[-1], torch.Generator().manual_seed(9)))
    z_0 = torch.randn(batch["z_1"].shape, generator=torch.Generator().manual_seed(5))
    ref, _ = sample(guided, z_0, epss_f5(16), cond)
    fresh = make_student(teacher)
    for nfe in (1, 2, 3):
        x, calls = sample(student, z_0, uniform(nfe), cond)
        assert calls == nfe and x.shape == z_0.shape and torch.isfinite(x).all()
    d_new = (sample(student, z_0, uniform(1), cond)[0] - ref)[:, :, batch["mask"][0]].pow(2).mean()
    d_old = (sample(fresh, z_0, uniform(1), cond)[0] - ref)[:, :, batch["mask"][0]].pow(2).mean()
    assert d_new < d_old, (d_new, d_old)


def test_speak_f5_one_call(tmp_path):
    teacher = tiny_teacher()
    student = make_student(teacher).eval()
    for model, nfe in ((student, 1), (student, 3), (teacher, 2)):
        with pytest.warns(UserWarning, match="griffin-lim"):
            out = speak_f5(model, "Hello there, world.", REF_WAV, "Some call me nature.", nfe=nfe, seed=1)
        assert out.sample_rate == 24000 and out.wav.dim() == 1 and torch.isfinite(out.wav).all()
        assert out.wav.numel() == (out.mel.shape[-1] - 1) * 256 and out.info["nfe"] == nfe
        assert out.info["vocoder"].startswith("griffin-lim")
        assert out.info["model_calls"] == nfe
        assert out.info["guidance"].startswith("none" if model is student else "w = 3 (F5 cfg_strength s = w - 1 = 2)")
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
        speak_f5(student, "Hi.", REF_WAV, "Some call me nature.", vocoder=tmp_path)


def test_griffin_lim_inverts_f5s_mel():
    wav, sr = sf.read(REF_WAV, dtype="float32", frames=24000)
    mel = f5_mel(torch.from_numpy(wav), sr)[None]
    out = F5GriffinLim(F5Config())(mel)
    again = f5_mel(out[0], sr)
    assert out.shape == (1, (mel.shape[-1] - 1) * 256)
    assert (again[:, 2:-2] - mel[0, :, 2:-2]).abs().mean() < 0.5  # log-mel error of a 64-iteration Griffin-Lim


def test_speak_f5_with_a_local_vocos_checkpoint(tmp_path):
    """A Vocos folder (config.yaml + pytorch_model.bin, the layout of charactr/vocos-mel-24khz), tiny and random."""
    import warnings

    from vocos import Vocos

    (tmp_path / "config.yaml").write_text(
        "feature_extractor:\n  class_path: vocos.feature_extractors.MelSpectrogramFeatures\n"
        "  init_args: {sample_rate: 24000, n_fft: 1024, hop_length: 256, n_mels: 100, padding: center}\n"
        "backbone:\n  class_path: vocos.models.VocosBackbone\n"
        "  init_args: {input_channels: 100, dim: 16, intermediate_dim: 32, num_layers: 1}\n"
        "head:\n  class_path: vocos.heads.ISTFTHead\n  init_args: {dim: 16, n_fft: 1024, hop_length: 256, padding: center}\n")
    torch.save(Vocos.from_hparams(str(tmp_path / "config.yaml")).state_dict(), tmp_path / "pytorch_model.bin")
    student = make_student(tiny_teacher()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Griffin-Lim warning
        out = speak_f5(student, "Hello there, world.", REF_WAV, "Some call me nature.", nfe=2, vocoder=tmp_path)
    assert out.info["vocoder"] == f"vocos ({tmp_path})"
    assert out.wav.numel() == (out.mel.shape[-1] - 1) * 256 and torch.isfinite(out.wav).all()


def test_sweeps_and_o3s_run_unchanged_on_f5_models(tmp_path):
    from imf.eval.f5 import make_f5_eval_set
    from imf.eval.sweep import grid_metric, nfe_sweep
    from imf.eval.systems import System
    from imf.flow.o3s import O3SConfig, o3s_search

    teacher = tiny_teacher()
    student = make_student(teacher).eval()
    data = F5Dataset.from_manifest(_write_clips(tmp_path), teacher.config)
    es = make_f5_eval_set(data, make_collate(F5Text(VOCAB)), n=4)
    f5_teacher = System("teacher (w=3, F5 s=2)", Guided(teacher, 3.0), schedule="custom",
                        grids={k: epss_f5(k) for k in (7, 16)})
    table, _ = nfe_sweep(es, [(f5_teacher, 7), (System("student", student), 1), (System("student", student), 2)],
                         reference=(f5_teacher, 16), progress=False)
    assert list(table.nfe) == [7, 1, 2] and table.dist_ref.notna().all() and (table.dist_ref > 0).all()
    ref = nfe_sweep(es, [(f5_teacher, 16)], progress=False, keep=True)[1][(f5_teacher.name, 16)]
    res = o3s_search(grid_metric(student, es, "neg_dist_ref", reference=ref), uniform(2),
                     O3SConfig(max_evals=6, ternary_iters=3), progress=False)
    assert res.best_score >= res.init_score


def test_command_line_recipe_from_a_safetensors_checkpoint(tmp_path):
    """``python -m imf.train.f5`` on a released-format checkpoint: a resumable run whose student loads back."""
    from safetensors.torch import save_file

    from imf.train.f5 import main

    teacher = tiny_teacher()
    save_file({f"ema_model.transformer.{k}": v.contiguous() for k, v in teacher.state_dict().items()},
              str(tmp_path / "model.safetensors"))
    manifest = _write_clips(tmp_path)
    args = ["--checkpoint", str(tmp_path / "model.safetensors"), "--vocab", VOCAB, "--manifest", str(manifest),
            "--run-dir", str(tmp_path / "run"), "--steps", "2", "--batch-size", "3", "--teacher-nfe", "2",
            "--device", "cpu", "--set", "dim=32", "--set", "depth=2", "--set", "heads=2", "--set", "dim_head=16",
            "--set", "text_dim=16", "--set", "conv_layers=1"]
    summary = main(args)
    assert summary["steps"] == 2
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert state["config"]["imf"]["cfg_scale"] == 3.0 and state["config"]["f5_cfg_strength"] == 2.0
    assert load_model(tmp_path / "run" / "checkpoints" / "last.pt").config.depth == 2
    assert main(args[:-2] + ["--set", "conv_layers=1", "--steps", "3"])["resumed_from"] == 2


def test_f5_objective_shards_add_up_to_the_whole_batch(tmp_path):
    """Data parallel / accumulation: shards of the batch (spans drawn for the whole batch) sum to its loss and logs."""
    teacher = tiny_teacher()
    data = F5Dataset.from_manifest(_write_clips(tmp_path), teacher.config)
    batch = make_collate(F5Text(VOCAB))([data[i] for i in range(len(data))])
    student = make_student(teacher)
    objective = f5_objective(Guided(teacher, 3.0), IMFConfig(teacher_nfe=4, cfg_scale=3.0), F5DistillConfig())
    whole, logs = objective(student, batch, torch.Generator().manual_seed(2))
    b = batch["z_1"].shape[0]
    parts = [objective(student, batch, torch.Generator().manual_seed(2), rows=slice(s, s + 2)) for s in range(0, b, 2)]
    assert sum(p[0].item() for p in parts) == pytest.approx(whole.item(), rel=1e-5)
    for k in ("loss", "span_frac", "teacher_rows", "mean_substeps"):
        assert sum(p[1][k] for p in parts) == pytest.approx(logs[k], rel=1e-5), k
