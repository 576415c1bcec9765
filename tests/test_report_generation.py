"""Report drafting over MELP's caption decoder, on both text paths (the authors' causal tower with the
multimodal decoder, and the bidirectional one with its own decoder): the search against the decoder's own
argmax, beams, EOS, the length limit and repetition guard, seeds, batching, an export round trip, objectives
without a decoder, bad options. The end-to-end proof: a tiny model trained to write three reports drafts exactly
those reports."""

from __future__ import annotations

import pytest
import torch

from models.factory import create_model
from models.model import ECGTextModel
from models.report_generation import DraftOptions, NoCaptionDecoder, draft_limit, suppressed_token_ids

TRAINING_STEPS = 120


@pytest.fixture(scope="module", params=[True, False], ids=["causal", "bidirectional"])
def causal(request) -> bool:
    """MELP's text path: `text.causal`."""
    return request.param


@pytest.fixture(scope="module")
def random_model(causal) -> ECGTextModel:
    torch.manual_seed(0)
    model, _ = create_model("tiny", objective="melp", overrides={"text.causal": causal})
    return model.eval()


@pytest.fixture(scope="module")
def ecgs() -> tuple[torch.Tensor, torch.Tensor]:
    """Three random 12-lead signals [3, 12, 5000] and their lead masks (the last record lacks V6)."""
    generator = torch.Generator().manual_seed(1)
    lead_mask = torch.ones(3, 12, dtype=torch.bool)
    lead_mask[2, 11] = False
    return torch.randn(3, 12, 5000, generator=generator), lead_mask


@pytest.fixture(scope="module")
def trained(shard_batch, causal) -> tuple[ECGTextModel, torch.Tensor, torch.Tensor, list[str]]:
    """A tiny MELP model whose caption decoder has learned three synthetic reports (teacher-forced, token loss;
    the ECG tower frozen as initialised, in eval mode so no lead is dropped): (model, signal, lead_mask, reports).
    On one thread: the same result whatever the machine's thread count, and on a busy 2-core machine ~4 s
    against ~100 s with two (measured)."""
    signal, lead_mask, reports = (part[:3] for part in shard_batch)
    torch.manual_seed(0)
    model, _ = create_model("tiny", objective="melp", overrides={"text.causal": causal})
    model.ecg.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    batch = model.collate(signal, lead_mask, reports)
    model.train()
    model.ecg.eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(TRAINING_STEPS):
            optimizer.zero_grad()
            model(batch)["token_loss"].backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), torch.as_tensor(signal).float(), torch.as_tensor(lead_mask), list(reports)


def argmax_drafts(model: ECGTextModel, signal: torch.Tensor, lead_mask: torch.Tensor, max_tokens: int):
    """Greedy decoding written out: feed the start token, append the decoder's most likely token (never a
    special one but the end token) until the end token or max_tokens. Returns per ECG (drafted ids, sum of their
    log-probabilities)."""
    text, caption = model.text, model.objective.caption
    drafts = []
    with torch.no_grad():
        for i in range(signal.shape[0]):
            context = caption.ecg_context(model.ecg(signal[i : i + 1], lead_mask[i : i + 1]).tokens)
            ids, logprob = [text.report_start_id], 0.0
            while len(ids) <= max_tokens and ids[-1] != text.report_end_id:
                prefix = torch.tensor([ids])
                logits = caption.prefix_logits(text, prefix, torch.ones_like(prefix), context)[0, -1]  # [V]
                allowed = logits.clone()
                allowed[suppressed_token_ids(text)] = -torch.inf
                token = int(allowed.argmax())
                logprob += float(logits.log_softmax(dim=-1)[token])
                ids.append(token)
            drafts.append((ids[1:], logprob))
    return drafts


def test_greedy_drafts_what_the_decoder_predicts(random_model, ecgs):
    signal, lead_mask = ecgs
    drafts = random_model.generate_reports(signal, lead_mask, DraftOptions(max_tokens=6, no_repeat_ngram_size=0))
    tokenizer = random_model.text.tokenizer
    for draft, (ids, logprob) in zip(drafts, argmax_drafts(random_model, signal, lead_mask, 6), strict=True):
        assert draft.text == tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)
        assert draft.tokens == len(ids) == 6
        assert draft.logprob == pytest.approx(logprob, abs=1e-4)


def test_beam_search_scores_at_least_greedy(random_model, ecgs):
    """Two tokens deep, beam search examines every continuation of the greedy first token (it is among the
    beams), so its best draft scores at least greedy's per token (the library's length normalisation)."""
    signal, lead_mask = ecgs
    greedy = random_model.generate_reports(signal, lead_mask, DraftOptions(max_tokens=2))
    beam = random_model.generate_reports(signal, lead_mask, DraftOptions(max_tokens=2, num_beams=4))
    for g, b in zip(greedy, beam, strict=True):
        assert b.logprob / b.tokens >= g.logprob / g.tokens - 1e-5


def test_a_trained_decoder_drafts_its_reports_and_stops_at_eos(trained):
    model, signal, lead_mask, reports = trained
    for options in (DraftOptions(), DraftOptions(num_beams=4)):
        drafts = model.generate_reports(signal, lead_mask, options)
        assert [d.text for d in drafts] == reports
    for draft, report, single in zip(drafts, reports, range(3), strict=True):
        words = model.text.tokenizer(report, add_special_tokens=False)["input_ids"]
        assert draft.tokens == len(words) + 1  # the end token counted, the start token not
        assert draft.tokens < draft_limit(model)  # stopped by EOS, not by the limit
        with torch.no_grad():  # the decoder's own teacher-forced loss on the report is the draft's mean -log p
            batch = model.collate(signal[single : single + 1], lead_mask[single : single + 1], [report])
            loss = model(batch)["token_loss"]
        assert -draft.logprob / draft.tokens == pytest.approx(float(loss), rel=1e-4)


def test_max_tokens_bounds_the_draft(trained):
    model, signal, lead_mask, reports = trained
    drafts = model.generate_reports(signal, lead_mask, DraftOptions(max_tokens=3))
    tokenizer = model.text.tokenizer
    for draft, report in zip(drafts, reports, strict=True):
        first_three = tokenizer(report, add_special_tokens=False)["input_ids"][:3]
        assert draft.tokens == 3 and draft.text == tokenizer.decode(first_three)
    limit = draft_limit(model)
    assert limit == model.config.text.max_length - (2 if model.config.text.causal else 1)  # [BOS] and [CLS] spent
    with pytest.raises(ValueError, match=rf"max_tokens {limit + 1} exceeds .* {limit}"):
        model.generate_reports(signal, lead_mask, DraftOptions(max_tokens=limit + 1))


def repeated_word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Word n-grams seen twice. A repeated word n-gram holds a repeated token n-gram (each word is a run of
    whole tokens), so a draft free of repeated token n-grams has none."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return {gram for gram in grams if grams.count(gram) > 1}


def test_no_repeat_ngram_size_holds(random_model, ecgs):
    signal, lead_mask = ecgs
    unguarded = random_model.generate_reports(signal, lead_mask, DraftOptions(24, no_repeat_ngram_size=0))
    assert any(repeated_word_ngrams(d.text, 1) for d in unguarded)  # an untrained decoder repeats itself
    guarded = random_model.generate_reports(signal, lead_mask, DraftOptions(24, no_repeat_ngram_size=1))
    assert not any(repeated_word_ngrams(d.text, 1) for d in guarded)
    assert all(d.tokens == 24 for d in guarded)


def test_sampling_is_reproducible_for_a_seed_and_leaves_the_global_rng_alone(random_model, ecgs):
    signal, lead_mask = ecgs
    state = torch.random.get_rng_state()
    first, again = (
        random_model.generate_reports(signal, lead_mask, DraftOptions(6, do_sample=True, seed=7)) for _ in "ab"
    )
    other = random_model.generate_reports(signal, lead_mask, DraftOptions(6, do_sample=True, seed=8))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert first == again
    assert [d.text for d in first] != [d.text for d in other]  # ~30,000 near-equally likely tokens per step


@pytest.mark.parametrize("num_beams", [1, 3])
def test_a_batch_drafts_as_its_records_alone(random_model, ecgs, num_beams):
    signal, lead_mask = ecgs
    options = DraftOptions(max_tokens=5, num_beams=num_beams)
    batch = random_model.generate_reports(signal, lead_mask, options)
    singles = [random_model.generate_reports(signal[i : i + 1], lead_mask[i : i + 1], options)[0] for i in range(3)]
    assert [d.text for d in batch] == [d.text for d in singles]
    assert [d.logprob for d in batch] == pytest.approx([d.logprob for d in singles], abs=1e-4)
    assert random_model.generate_reports(signal[:0], lead_mask[:0], options) == []


def test_an_export_drafts_as_the_model_did(trained, tmp_path):
    model, signal, lead_mask, _ = trained
    model.save_pretrained(tmp_path)
    loaded = ECGTextModel.from_pretrained(tmp_path).eval()
    assert loaded.drafts_reports
    for options in (DraftOptions(), DraftOptions(num_beams=3)):
        drafts, before = loaded.generate_reports(signal, None, options), model.generate_reports(signal, None, options)
        assert [d.text for d in drafts] == [d.text for d in before]
        assert [d.logprob for d in drafts] == pytest.approx([d.logprob for d in before], abs=1e-5)


@pytest.mark.parametrize("objective", ["cmelt", "mets", "melp-lm"])
def test_exports_without_a_caption_decoder_say_so(objective, ecgs, tmp_path):
    model, _ = create_model("tiny", objective=objective)
    model.save_pretrained(tmp_path)
    loaded = ECGTextModel.from_pretrained(tmp_path).eval()
    assert not loaded.drafts_reports
    with pytest.raises(NoCaptionDecoder, match=rf"objective '{objective}' trains no caption decoder.*MELP export"):
        loaded.generate_reports(*ecgs)


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_tokens", -1),
        ("max_tokens", 2.5),
        ("num_beams", 0),
        ("no_repeat_ngram_size", -1),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", float("nan")),
        ("temperature", -1.0),
        ("do_sample", "yes"),
        ("seed", -1),
        ("seed", True),
    ],
)
def test_bad_options_name_their_field(field, value):
    with pytest.raises(ValueError, match=rf"DraftOptions\.{field} "):
        DraftOptions(**{field: value})
