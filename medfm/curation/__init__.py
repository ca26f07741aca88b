"""Curation before pre-training: removing near-duplicate slices and tiles (issue 14).

After Wolf et al. 2024, "Less is More: Selective Reduction of CT Data for Self-Supervised
Pre-Training of Deep Learning Models with Contrastive Learning Improves Downstream
Classification Performance" (Computers in Biology and Medicine 183:109242), which drops, in
each CT volume, the slices whose 64-bit dHash lies within Hamming distance 6 of a kept slice,
and compares SSIM, mutual information, deep-embedding similarity and every n-th slice.

- :mod:`medfm.curation.hashing`: dHash, bit-identical to ``imagehash.dhash``; Hamming distance.
- :mod:`medfm.curation.similarity`: SSIM, normalised mutual information, cosine similarity.
- :mod:`medfm.curation.reduce`: the rules within one volume (the paper's scope).
- :mod:`medfm.curation.index`: the same greedy rule over a whole dataset, through an index.
"""
