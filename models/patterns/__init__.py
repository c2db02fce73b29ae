"""Attention patterns for training and prefill, one module each; models/attention.py holds the registry."""
