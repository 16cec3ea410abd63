"""Corpus curation on datatrove: readers with provenance, language/license/quality/notebook filters, exact and
MinHash near dedup, benchmark decontamination, a quality classifier, JSONL and Megatron .bin/.idx writers.

Entry point: ``tools/curate_corpus.py`` (``megatron_code.curation.pipeline.curate``); see docs/curation.md."""
