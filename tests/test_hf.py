import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (BertConfig, BertModel, GPT2Config, GPT2LMHeadModel,  # noqa: E402
                          LlamaConfig, LlamaForCausalLM)

from qgfd_pyg.hf import patch_model, unpatch_model  # noqa: E402

VOCAB = 40


def gpt2():
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=VOCAB, n_positions=64,
                        bos_token_id=0, eos_token_id=1, pad_token_id=0)
    return GPT2LMHeadModel(config).eval()


def llama_gqa():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, bos_token_id=0, eos_token_id=1,
                         pad_token_id=0)
    return LlamaForCausalLM(config).eval()


def bert():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    return BertModel(config, add_pooling_layer=False).eval()


def batch(length=12):
    ids = torch.randint(2, VOCAB, (2, length))
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, :3] = 0  # left padding in the second row
    return ids, mask


@pytest.mark.parametrize("make", [gpt2, llama_gqa, bert], ids=["gpt2", "llama-gqa", "bert"])
def test_alpha_zero_reproduces_the_model_and_alpha_changes_it(make):
    model = make()
    ids, mask = batch()
    read = (lambda out: out.logits) if hasattr(model, "lm_head") else \
        (lambda out: out.last_hidden_state)
    with torch.no_grad():
        original = read(model(ids, attention_mask=mask))
        patch_model(model, alpha=0.0)
        torch.testing.assert_close(read(model(ids, attention_mask=mask)), original,
                                   atol=1e-5, rtol=1e-5)
        unpatch_model(model)
        patch_model(model, alpha=0.85, steps=4, k=3)
        changed = read(model(ids, attention_mask=mask))
        assert torch.isfinite(changed[mask.bool()]).all()
        assert not torch.allclose(changed, original, atol=1e-4)
        unpatch_model(model)
        assert model.config._attn_implementation == "sdpa"
        torch.testing.assert_close(read(model(ids, attention_mask=mask)), original)


@pytest.mark.parametrize("make", [gpt2, llama_gqa], ids=["gpt2", "llama-gqa"])
def test_no_future_token_leaks_into_earlier_logits(make):
    model = patch_model(make(), alpha=0.9, steps=6, k=4)
    ids, mask = batch(16)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
        for j in (4, 9):
            changed = ids.clone()
            changed[:, j + 1:] = torch.randint(2, VOCAB, (2, 16 - j - 1))
            other = model(changed, attention_mask=mask).logits
            torch.testing.assert_close(other[:, :j + 1], logits[:, :j + 1], atol=1e-5, rtol=0)
            assert not torch.allclose(other[:, j + 1:], logits[:, j + 1:])


@pytest.mark.parametrize("make", [gpt2, llama_gqa], ids=["gpt2", "llama-gqa"])
def test_generate_with_and_without_cache_agree(make):
    model = patch_model(make(), alpha=0.85, steps=4, k=3)
    ids = torch.randint(2, VOCAB, (1, 7))
    kwargs = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        cached = model.generate(ids, use_cache=True, **kwargs)
        uncached = model.generate(ids, use_cache=False, **kwargs)
    assert cached.shape == (1, 15)
    assert torch.equal(cached, uncached)


def test_bert_padding_does_not_influence_real_tokens():
    model = patch_model(bert(), alpha=0.85, steps=4, k=3)
    ids, mask = batch()
    with torch.no_grad():
        out = model(ids, attention_mask=mask).last_hidden_state
        other_ids = ids.clone()
        other_ids[1, :3] = torch.randint(2, VOCAB, (3,))  # only padded positions change
        out2 = model(other_ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(out2[1, 3:], out[1, 3:], atol=1e-5, rtol=0)


def test_layers_option_and_errors():
    model = gpt2()
    patch_model(model, alpha=0.5, layers=[1])
    attentions = [block.attn for block in model.transformer.h]
    assert not hasattr(attentions[0], "qgfd_options")
    assert attentions[1].qgfd_options["alpha"] == 0.5
    with pytest.raises(ValueError, match="already"):
        patch_model(model)
    unpatch_model(model)
    with pytest.raises(ValueError, match="not patched"):
        unpatch_model(model)
    with pytest.raises(ValueError, match="do not exist"):
        patch_model(model, layers=[5])
    with pytest.raises(ValueError, match="alpha"):
        patch_model(model, alpha=3.0)
    with pytest.raises(ValueError, match="PreTrainedModel"):
        patch_model(torch.nn.Linear(2, 2))
    model._supports_attention_backend = False  # a model that does not use the interface
    with pytest.raises(ValueError, match="AttentionInterface"):
        patch_model(model)


def test_gradients_flow_through_patched_model():
    model = patch_model(gpt2().train(), alpha=0.8, steps=3, k=3)
    ids, mask = batch()
    model(ids, attention_mask=mask, labels=ids).loss.backward()
    grads = [p.grad for name, p in model.named_parameters() if "attn.c_attn" in name]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("options", [dict(metric="cosine"), dict(temperature=0.25),
                                     dict(tol=1e-2, steps=40, alpha=0.95)],
                         ids=["cosine", "temperature", "tol"])
def test_options_reach_the_attention_against_the_dense_reference(options, monkeypatch):
    """Every patch_model option changes what the patched layers compute: their outputs equal
    the dense p-form with that option (kNN metric / temperature, early stop)."""
    import math

    import qgfd_pyg.hf as hf
    from qgfd_pyg import knn_transition
    from qgfd_pyg.reference import pform, steps_until

    model = gpt2()
    settings = {"alpha": 0.85, "steps": 4, "k": 3, "metric": "dot", "temperature": 1.0,
                "tol": None, **options}
    patch_model(model, **settings)
    calls = []

    def recording(module, query, key, value, attention_mask, **kwargs):
        out = hf.qgfd_attention_function(module, query, key, value, attention_mask, **kwargs)
        calls.append((query, key, value, kwargs.get("scaling"), out[0]))
        return out

    transformers.AttentionInterface.register(hf.KEY, recording)
    try:
        with torch.no_grad():
            model(torch.randint(2, VOCAB, (2, 10)))
    finally:
        hf.register()
    assert len(calls) == 2  # both layers
    for query, key, value, scaling, out in calls:
        B, H, L, d = query.shape
        blocked = torch.ones(L, L, dtype=torch.bool).triu(1)
        scale = scaling if scaling is not None else 1 / math.sqrt(d)
        p0 = torch.softmax((query.double() @ key.double().mT * scale).masked_fill(
            blocked, float("-inf")), -1)
        P = torch.stack([torch.stack([
            knn_transition(key[b, h], settings["k"], settings["metric"],
                           settings["temperature"], causal=True).to_dense().double()
            for h in range(H)]) for b in range(B)])
        steps = settings["steps"]
        if settings["tol"] is not None:
            steps = steps_until(value.reshape(B * H, L, d), P.view(B * H, L, L),
                                settings["alpha"], steps, settings["tol"])
            assert steps < settings["steps"]
        expected = pform(p0, P, settings["alpha"], steps) @ value.double()
        torch.testing.assert_close(out.double(), expected.transpose(1, 2), atol=1e-5, rtol=0)
