"""Data-level tickets for ViTs (Shen et al., IJCAI 2023): token reduction, patch tickets, students.

``tokens`` holds the algorithm as pure tensor functions; ``vit`` is the adapter that runs a
Hugging Face ViT with token reduction or on a subset of patches (ToMe-style: the pre-trained
checkpoint loads unchanged, the forward pass is re-composed from its modules).
"""
