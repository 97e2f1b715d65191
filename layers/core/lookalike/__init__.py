"""lookalike: find the original and the lookalikes of a picture.

The data flow, one module each: bytes → :mod:`lookalike.imaging` (a normalised RGB image)
→ :mod:`lookalike.borders` (borders trimmed) → :mod:`lookalike.hashing` (pHash and its
segments) and :mod:`lookalike.embedding` (VGG16 feature vector), gathered by
:mod:`lookalike.signatures` → stores behind :mod:`lookalike.ports` → :mod:`lookalike.services`.
"""

__version__ = "0.1.0"
