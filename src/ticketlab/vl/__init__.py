"""Vision-and-language tickets (MISSION.md §2) — work in progress for issue 6.

So far: ``benchmark`` generates the seven V+L task families from the scene generator, with answers
derived from the scene records. The UNITER-style model, pre-training objectives, IMP runs and
adversarial training are not built yet.
"""
