"""Vision-and-language tickets (MISSION.md §2).

``benchmark`` generates the seven task families from scene records; ``features`` gives region or
patch features; ``text`` the compact-vocabulary tokenizer; ``tasks`` registers the ``vl_*`` tasks;
``model`` the UNITER-style backbone and the task heads, ``hf_backbones`` ViLT and VisualBERT;
``pretraining`` MLM + ITM + MRM; ``adversarial`` VILLA; ``metrics`` retrieval R@k; ``study`` and
``study_report`` the whole study.
"""
