"""The one place that builds the built-in models' parts: their tokenizer (a byte-level BPE trained in code on a
corpus, with a ChatML-style chat template whose end of turn `<|im_end|>` is the EOS token) and their Llama
configuration. models.py builds builtin:tiny / builtin:small from them (random init); pretrain.py builds the
pretrained ones (builtin:organism) from them.
"""

from __future__ import annotations

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|im_start|>", "<|im_end|>"]

# name -> LlamaConfig sizes of the models built from random init; vocab_size comes from the tokenizer at run time.
BUILTIN_MODELS: dict[str, dict] = {
    "tiny": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    "small": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2),
}


def train_bpe(texts, vocab_size: int) -> str:
    """A byte-level BPE with the special tokens, trained on `texts` (deterministic, ~0.01 s), as its JSON."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok.to_str()


def chat_tokenizer(tokenizer_json: str):
    """The Hugging Face tokenizer of a trained BPE: pad `<|pad|>`, EOS `<|im_end|>`, no BOS, the chat template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer_json), pad_token="<|pad|>",
                                  eos_token="<|im_end|>", bos_token=None)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def llama_config(tokenizer, max_position_embeddings: int, **sizes):
    """A Llama configuration for `tokenizer` (vocabulary, pad and EOS ids; tied embeddings) with the given sizes
    (hidden_size, num_hidden_layers, ...; num_labels for a scalar head)."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=max_position_embeddings,
                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
                       tie_word_embeddings=True, **sizes)
