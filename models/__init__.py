"""ECG and text towers with the MELP, C-MELT and METS objectives.

    from models.factory import create_model           # model + tokenizer from a name, file or export
    from models.model import ECGTextModel              # the two-tower model, save/from_pretrained
    from models.zero_shot import build_zero_shot_classifier, zero_shot_scores

config.py (typed dataclasses, configs/*.json) · ecg_tower.py · text_tower.py + causal_layout.py (MELP's
causal text rows) · poolers.py · losses.py + distributed.py (contrastive losses with cross-rank gather) ·
objectives/ (MELP, its stage 1, C-MELT, METS), multimodal_decoder.py (MELP's token level, the authors'),
caption_decoder.py (the same over a bidirectional tower), beat_alignment.py + report_sentences.py (MELP's
beat level), report_generation.py (drafting
reports with the caption decoder through transformers' generate) · cmelt.py + n3s.py (C-MELT,
its N3S negatives and report bank) · masked_language_modeling.py · model.py · factory.py · zero_shot.py ·
evidence.py (captum's integrated gradients of a zero-shot score: lead ranking and top time segments). Nothing is imported here, so `import models.config` stays light.
"""
