"""The llama2.c tokenizer on the Llama-2 vocabulary against the sentencepiece package on the
paper's prompts (llama2.c's score-ordered merging reproduces SentencePiece BPE on this text)."""
import csv

import pytest

import qinterp
from conftest import SHARED

import sentencepiece as spm


def test_matches_sentencepiece_on_paper_prompts():
    sp = spm.SentencePieceProcessor(model_file=str(SHARED / "fixtures/llama2-tokenizer/tokenizer.model"))
    tok = qinterp.load_tokenizer(SHARED / "fixtures/llama2-tokenizer/tokenizer.bin")
    n = 0
    for name in ("boolq", "piqa", "toxicity", "hellaswag"):
        with open(SHARED / "datasets/paper1" / f"{name}.csv", newline="") as f:
            for i, row in enumerate(csv.DictReader(f)):
                if i >= 150:
                    break
                assert tok.encode(row["prompt"]) == [1] + sp.encode(row["prompt"]), (name, i)
                n += 1
    assert n == 600
