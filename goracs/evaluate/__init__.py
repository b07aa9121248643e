"""Evaluation of fine-tuned recommenders: SeqRec (generation + grounding, HR/NDCG) and CTR (AUC, log-loss)."""
