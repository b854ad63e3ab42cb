"""Evaluation: caption metrics (BLEU, METEOR, ROUGE-L, CIDEr-D), captioning a split, and every
figure."""
