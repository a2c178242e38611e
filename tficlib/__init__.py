"""tficlib: text-focused image compression for OCR, reproducible.

Reproduces three papers in ordered notebooks:

1. Della Fiore et al., *TFIC: End-to-End Text-Focused Image Compression for
   Coding for Machines* (EUSIPCO 2025): hyperprior codec, MSE pretraining,
   then rate + γ·OCR fine-tuning through a frozen recognizer.
2. Lai, Tran, Koishida, *Learned Image Compression with Text Quality
   Enhancement*: the text logit loss J(x, x̂).
3. Della Fiore et al., *End-to-End Semantic Preservation in Text-Aware Image
   Compression Systems*: DnCNN dequantization of extreme JPEG and OCR-guided
   refinement.

Modules are imported lazily by the notebooks (``from tficlib import codec``) so
that ``import tficlib`` stays cheap.
"""

__version__ = "0.1.0"
