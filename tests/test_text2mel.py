"""Text2mel with F5-TTS's DiT (issue 15): F5's infilling loss, the student init, distillation into a student
of another size, the zero-shot evaluation set and its span judges. Tiny random DiTs of F5's own class."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("f5_tts.model", reason="F5-TTS not installed: pip install -e '.[f5]'")
from imf.data.f5_text import infill_cond, span_mask  # noqa: E402
from imf.data.text2mel import CHARS, char_ids, pad_text, t2m_collate  # noqa: E402
from imf.flow.infill import InfillConfig, infill_loss  # noqa: E402
from imf.flow.objectives import IMFConfig  # noqa: E402
from imf.flow.solvers import Guided  # noqa: E402
from imf.models.backbones import F5Backbone, F5Config, make_student  # noqa: E402
from imf.train.f5 import F5DistillConfig, check_student_init, distill_f5, f5_objective  # noqa: E402
from imf.train.trainer import TrainConfig  # noqa: E402

C, V = 8, 12  # mel bins, text vocabulary (phones)
BIG = dict(model_name="text2mel", tokenizer="custom", dim=32, depth=2, heads=2, dim_head=16, mel_dim=C,
           text_num_embeds=V, text_dim=16, conv_layers=1, dropout=0.0)
SMALL = dict(BIG, dim=16, depth=1, dim_head=8, text_dim=8)


def tiny(seed: int = 0, **kw) -> F5Backbone:
    """A tiny F5 DiT with every weight perturbed (F5 zero-initialises its output layers)."""
    torch.manual_seed(seed)
    m = F5Backbone(F5Config(**{**BIG, **kw}))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m.eval()


def batch(b: int = 4, n: int = 20, seed: int = 0) -> dict:
    """A t2m_collate batch of smooth random 'mels' and phone texts of different lengths."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for j in range(b):
        length = n - 3 * j
        z = torch.cumsum(0.3 * torch.randn(C, length, generator=g), dim=1)
        items.append({"id": f"u{j}", "z_1": z, "text": torch.randint(1, V, (4 + j,), generator=g), "sentence": "x",
                      "speaker": j % 2})
    return t2m_collate(items)


def infill_inputs(b=None):
    b = b or batch()
    span = span_mask(b["lengths"], (0.5, 0.8), b["z_1"].shape[-1], torch.Generator().manual_seed(3)) & b["mask"]
    return b, span, infill_cond(b["z_1"], b["text"], b["mask"], span)


# -- F5's infilling loss --------------------------------------------------------------------------
def test_infill_loss_reads_only_the_span():
    """Outside the span, neither the target z_1 nor the model's prediction changes the loss; inside, both do."""
    b, span, cond = infill_inputs()
    out = ~span[:, None].expand_as(b["z_1"])

    def framewise(x, *, t, r=None, cond):  # a per-frame model: frames do not mix
        return 0.5 * x + cond["cond_mel"] + t[:, None, None]

    def loss(model, z_1):
        return infill_loss(model, z_1, cond, span, InfillConfig(), torch.Generator().manual_seed(7))[0].item()

    base = loss(framewise, b["z_1"])
    assert loss(framewise, b["z_1"] + 5.0 * out) == pytest.approx(base, rel=1e-12)
    assert abs(loss(framewise, b["z_1"] + 5.0 * ~out) - base) > 1e-3  # the test can fail
    # the real F5 DiT: whatever it predicts outside the span is not scored
    m = tiny()
    wild = lambda x, **kw: m(x, **kw) + 100.0 * out  # noqa: E731
    assert loss(wild, b["z_1"]) == pytest.approx(loss(m, b["z_1"]), rel=1e-6)
    assert abs(loss(lambda x, **kw: m(x, **kw) + 1.0 * ~out, b["z_1"]) - loss(m, b["z_1"])) > 1e-3


def test_infill_loss_drops_conditions_as_f5_and_shards_add_up():
    b, span, cond = infill_inputs()
    seen = {}

    def spy(x, *, t, r=None, cond):
        seen.update(cond)
        return torch.zeros_like(x)

    infill_loss(spy, b["z_1"], cond, span, InfillConfig(p_audio_drop=0.0, p_cond_drop=0.0), torch.Generator())
    assert not seen["drop"].any() and not seen["drop_audio"].any()
    g = torch.Generator().manual_seed(0)
    drops = [infill_loss(spy, b["z_1"], cond, span, InfillConfig(p_audio_drop=0.3, p_cond_drop=0.2), g) and
             (seen["drop_audio"].float().mean().item(), seen["drop"].float().mean().item()) for _ in range(300)]
    audio, both = np.mean(drops, axis=0)
    assert abs(audio - 0.3) < 0.05 and abs(both - 0.2) < 0.05
    m = tiny()
    whole = infill_loss(m, b["z_1"], cond, span, InfillConfig(), torch.Generator().manual_seed(1))[0]
    parts = [infill_loss(m, b["z_1"], cond, span, InfillConfig(), torch.Generator().manual_seed(1), rows=slice(s, s + 2))[0]
             for s in (0, 2)]
    assert sum(p.item() for p in parts) == pytest.approx(whole.item(), rel=1e-5)


# -- the student --------------------------------------------------------------------------------------
def test_text2mel_student_equals_its_init_model_exactly():
    """The fresh student of a text2mel DiT equals it bit for bit at r = t (and any r); a student initialised
    from a SMALLER model equals that model, not the teacher."""
    b, span, cond = infill_inputs()
    x, t = torch.randn(b["z_1"].shape), torch.rand(b["z_1"].shape[0])
    for model in (tiny(), tiny(1, **SMALL)):
        student = make_student(model)
        v = model(x, t=t, cond=cond)
        assert torch.equal(student(x, t=t, r=t, cond=cond), v) and torch.equal(student(x, t=t, cond=cond), v)
        assert torch.equal(student(x, t=t, r=torch.ones_like(t), cond=cond), v)
    big, small = tiny(), tiny(1, **SMALL)
    assert torch.equal(make_student(check_student_init(big, small))(x, t=t, r=t, cond=cond), small(x, t=t, cond=cond))
    with pytest.raises(ValueError, match="text_num_embeds"):
        check_student_init(big, tiny(2, **dict(SMALL, text_num_embeds=V + 1)))
    with pytest.raises(TypeError, match="not a student"):
        check_student_init(big, make_student(small))


class ListData(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_distillation_into_a_smaller_student_lowers_its_loss(tmp_path):
    teacher, small = tiny(0), tiny(1, **SMALL)
    b = batch(6, 24)
    items = [{"id": b["ids"][j], "z_1": b["z_1"][j, :, : b["lengths"][j]], "text": b["text"][j][b["text"][j] >= 0],
              "sentence": "x", "speaker": 0} for j in range(6)]
    guided, imf = Guided(teacher, 3.0), IMFConfig(teacher_nfe=4, cfg_scale=3.0, p_instant=0.2, p_full=0.2)
    objective = f5_objective(guided, imf, F5DistillConfig())

    def fixed_loss(student):
        student.eval()
        with torch.no_grad():
            return float(np.mean([objective(student, b, torch.Generator().manual_seed(s))[0].item() for s in range(4)]))

    before = fixed_loss(make_student(small))
    trainer, summary = distill_f5(teacher, ListData(items), t2m_collate, tmp_path / "run",
                                  TrainConfig(steps=30, batch_size=6, lr=3e-3, warmup=3, ema_decay=0.0, ckpt_every=30,
                                              log_every=5, threads=1), imf, F5DistillConfig(), progress=False,
                                  student_init=small, student_init_ref="small.pt")
    after = fixed_loss(trainer.model)
    assert after < 0.8 * before, (before, after)
    assert trainer.model.config.dim == SMALL["dim"] and trainer.model.config.mean_flow
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert state["config"]["student_init"] == "small.pt" and state["model_config"]["dim"] == SMALL["dim"]


# -- data and evaluation helpers --------------------------------------------------------------------
def test_char_ids_and_padding():
    assert char_ids("Hi, Bob!").tolist() == [CHARS.index(c) for c in "hi, bob!"]
    assert char_ids("a#b").tolist() == [CHARS.index("a"), CHARS.index("b")]
    p = pad_text([torch.tensor([1, 2]), torch.tensor([3])])
    assert p.tolist() == [[1, 2], [3, -1]]
    b = batch(3, 10)
    assert b["z_1"].shape == (3, C, 10) and b["mask"].sum(1).tolist() == [10, 7, 4] and (b["text"][0, 4:] == -1).all()


def test_span_judges_vocode_exactly_the_generated_span():
    """The target sits after the prompt: SpanJudges vocode the masked frames, wherever they are."""
    from imf.eval.evalset import EvalSet
    from imf.eval.text2mel import SpanJudges

    class Identity:
        def denormalize(self, x):
            return x

    class FirstBin:  # 'vocodes' a mel (1, C, T) to its first bin (1, T)
        def vocode(self, mel):
            return mel[:, 0, :]

    x = torch.arange(2 * C * 6, dtype=torch.float32).reshape(2, C, 6) / 100
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    es = EvalSet(["a", "b"], x, mask, {}, torch.zeros_like(x), Identity())
    wavs = SpanJudges(FirstBin(), [])
    out = wavs.wavs(es, x)
    assert torch.equal(out[0], x[0, 0, 2:5]) and torch.equal(out[1], x[1, 0, 1:6])


def test_o3s_is_skipped_with_a_negative_budget():
    """08's O3S_EVALS = -1 runs no search (the notebook's O3S cell stays one call)."""
    from imf.runs.text2mel import text2mel_o3s

    assert text2mel_o3s(None, None, max_evals=-1) is None


# -- the alignment check --------------------------------------------------------------------------
def _alignment_set(n: int = 6, t: int = 10):
    """An EvalSet of ``n`` utterances with phone texts of different sums, and the Text2MelDataset stand-in that
    :func:`imf.eval.text2mel.with_text_of` reads (texts by id; prompts without text)."""
    import types

    from imf.eval.evalset import EvalSet

    texts = {f"u{i}": torch.tensor([1 + i, 2 * i + 1]) for i in range(n)} | {"p": torch.tensor([], dtype=torch.long)}
    data = types.SimpleNamespace(cfg=types.SimpleNamespace(text="phone"), item=lambda ident: {"text": texts[ident]})
    ids = [f"u{i}" for i in range(n)]
    mask = torch.ones(n, t, dtype=torch.bool)
    cond = {"text": pad_text([texts[i] for i in ids]), "mask": mask}
    z_0 = torch.randn(n, C, t, generator=torch.Generator().manual_seed(0))
    corpus = types.SimpleNamespace(denormalize=lambda x: x)
    return EvalSet(ids, torch.zeros(n, C, t), mask, cond, z_0, corpus, [f"text {i}" for i in range(n)],
                   prompt_ids=["p"] * n), data


def test_alignment_check_separates_a_text_blind_model_from_one_that_follows_its_text():
    """A model that ignores the text: text_effect exactly 0, the noise moves it ("noise"). A model whose output is a
    function of its text alone (v = (m(text) - x) / (1 - t), so x(1) = m exactly): noise_effect 0, "text"."""
    from imf.flow import schedules
    from imf.runs.text2mel import alignment_of

    es, data = _alignment_set()
    blind = lambda x, *, t, r=None, cond: -x  # noqa: E731

    def follows(x, *, t, r=None, cond):
        m = 0.1 * cond["text"].clamp(min=0).sum(1).float()[:, None, None]
        return (m - x) / (1 - t.view(-1, 1, 1)).clamp(min=1e-3)

    grid = schedules.uniform(4)
    a = alignment_of(blind, es, data, grid)
    assert list(a["text given"]) == ["true", "shuffled", "shuffled"]
    assert a.text_effect.iloc[1] == 0.0 and a.noise_effect.iloc[1] > 0 and a.text_vs_noise.iloc[1] == "noise"
    b = alignment_of(follows, es, data, grid)
    sums = torch.tensor([float(texts.sum()) for texts in (torch.tensor([1 + i, 2 * i + 1]) for i in range(6))])
    expected = (0.1 * (sums - sums.roll(-1))).abs().mean().item()  # each target given the next one's text
    assert b.noise_effect.iloc[1] == pytest.approx(0.0, abs=1e-5) and b.text_vs_noise.iloc[1] == "text"
    assert b.text_effect.iloc[1] == pytest.approx(expected, rel=1e-4)
