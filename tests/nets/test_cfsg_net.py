"""The CFSG network: outputs, switches, gradients, the role of the prototypes, value-path features."""

import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import Attention, CustomResidualAttentionBlock, LayerScale

import usb_cfsg  # noqa: F401
from usb_cfsg.errors import ConfigError
from usb_cfsg.nets import BUILDERS, CFSGNet


def make(text_encoder="clip", **switches):
    torch.manual_seed(0)
    return BUILDERS["clip_tiny"](
        num_classes=4,
        pretrained="none",
        img_size=64,
        head="cfsg",
        num_tuned_blocks=2,
        class_names=["Shirt", "Coat", "Bag", "Sandal"],
        text_encoder=text_encoder,
        **switches,
    )


def test_outputs_shapes_and_ranges():
    net = make()
    out = net(torch.randn(3, 3, 64, 64))
    assert out["logits"].shape == (3, 4) and out["feat"].shape == (3, 64)
    assert out["logits_ova"].shape == (3, 2, 4)
    assert out["relevance"].shape == (3, 16) and out["keep_idx"].shape == (3, 4)  # 4x4 patches, rho 0.25
    torch.testing.assert_close(out["relevance"].sum(1), torch.ones(3))
    assert (out["relevance"] >= 0).all()
    torch.testing.assert_close(out["logits"], (out["logits_coarse"] + out["logits_fine"]) / 2)
    for name in ("ova", "mcm", "glmcm"):
        s = out[f"score_{name}"]
        assert s.shape == (3,) and ((s >= 0) & (s <= 1)).all(), name
    assert "score_fused" not in out  # fused needs ranges fitted on training data: the algorithm computes it
    assert torch.allclose(net(torch.zeros(1, 64), only_fc=True), net.fine_head(torch.zeros(1, 64)))


def test_closed_head_fine_uses_fine_logits():
    out = make(closed_head="fine")(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(out["logits"], out["logits_fine"])


@pytest.mark.parametrize(
    "switches", [dict(use_sfm=False), dict(use_vsi=False), dict(use_sfm=False, use_vsi=False), dict(sfm_dense="tokens")]
)
def test_ablation_switches_run(switches):
    net = make(**switches)
    out = net(torch.randn(2, 3, 64, 64))
    out["logits"].sum().backward()
    assert out["logits"].shape == (2, 4)
    if not switches.get("use_sfm", True):
        torch.testing.assert_close(out["relevance"], torch.full((2, 16), 1 / 16))


@pytest.mark.parametrize("text_encoder", ["clip", "minilm"])
def test_gradients_reach_exactly_the_trainable_parameters(text_encoder):
    net = make(text_encoder)
    out = net(torch.randn(4, 3, 64, 64))
    loss = (
        torch.nn.functional.cross_entropy(out["logits_coarse"], torch.tensor([0, 1, 2, 3]))
        + torch.nn.functional.cross_entropy(out["logits_fine"], torch.tensor([0, 1, 2, 3]))
        + out["logits_ova"].logsumexp(1).sum()
    )
    loss.backward()
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == trainable
    expected_prefixes = (
        "backbone.visual.transformer.resblocks.2.",
        "backbone.visual.transformer.resblocks.3.",
        "backbone.visual.ln_post",
        "backbone.visual.proj",
        "coarse_head.",
        "fine_head.",
        "vsi.",
        "ova.",
    )
    assert all(
        n.startswith(expected_prefixes + (("text.proj",) if text_encoder == "minilm" else ())) for n in trainable
    )
    for prefix in expected_prefixes:
        assert any(n.startswith(prefix) for n in trainable), prefix
    assert ("text.proj.weight" in trainable) == (text_encoder == "minilm")
    assert not any(n.startswith("backbone.visual.transformer.resblocks.0.") for n in trainable)
    assert "prototypes.mu" in dict(net.named_buffers()) and "text.raw" in dict(net.named_buffers())


def test_fine_branch_depends_on_prototypes_of_topk_classes_only():
    net = make(vsi_topk=2).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        base = net(x)
        top = base["logits_coarse"].topk(2, dim=1).indices[0].tolist()
        other = next(k for k in range(4) if k not in top)
        net.prototypes.update(torch.randn(1, 64), torch.tensor([other]))
        same = net(x)
        net.prototypes.update(torch.randn(1, 64), torch.tensor([top[0]]))
        changed = net(x)
    torch.testing.assert_close(same["logits_fine"], base["logits_fine"])
    assert not torch.allclose(changed["logits_fine"], base["logits_fine"])
    torch.testing.assert_close(changed["logits_coarse"], base["logits_coarse"])  # coarse branch untouched


def test_minilm_text_embeddings_carry_class_semantics():
    net = make("minilm")
    raw = net.text.raw  # MiniLM prompt-ensemble embeddings of Shirt, Coat, Bag, Sandal
    assert raw[0] @ raw[1] > raw[0] @ raw[3]  # a shirt is closer to a coat than to a sandal
    t = net.text()
    offdiag = (t @ t.t()).masked_select(~torch.eye(4, dtype=torch.bool))
    assert offdiag.max() < 0.9  # distinct directions after the learned projection


# ---------------------------------------------------------------- value-path dense features
def _intermediates(net, x):
    """Trunk tokens H, last block input, final tokens projected (g, p), and text, computed step by step."""
    bb = net.backbone
    h = bb.trunk(x)
    tokens, last_in = bb.tuned(h, return_last_input=True)
    z = bb.project(tokens)
    return h, last_in, z[:, 0], z[:, 1:], net.text()


def _value_path_by_hand(bb, last_in):
    """MaskCLIP's value path written out from the last block's weights (no call into the block's modules)."""
    block, W = bb.tuned_blocks[-1], bb.width
    x = F.layer_norm(last_in, (W,), block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)
    v = x @ block.attn.in_proj_weight[2 * W :].t() + block.attn.in_proj_bias[2 * W :]
    o = v @ block.attn.out_proj.weight.t() + block.attn.out_proj.bias
    if isinstance(block.ls_1, LayerScale):
        o = o * block.ls_1.gamma
    post = bb.visual.ln_post
    return F.layer_norm(o, (W,), post.weight, post.bias, post.eps) @ bb.visual.proj


def _self_only_attention(bb, last_in):
    """The same through the block's own attention, each token attending to itself only (softmax = identity)."""
    block = bb.tuned_blocks[-1]
    T = last_in.shape[1]
    mask = torch.full((T, T), float("-inf")).fill_diagonal_(0.0)
    x = block.ln_1(last_in)
    out = block.attn(x, x, x, attn_mask=mask, need_weights=False)[0]
    return bb.project(block.ls_1(out))


def test_value_features_equal_a_direct_computation_through_the_last_block():
    net = make().eval()
    with torch.no_grad():
        _, last_in, _, p, _ = _intermediates(net, torch.randn(2, 3, 64, 64))
        got = net.backbone.value_features(last_in)
        torch.testing.assert_close(got, _value_path_by_hand(net.backbone, last_in), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got, _self_only_attention(net.backbone, last_in), rtol=1e-4, atol=1e-5)
        dense = net.backbone.dense_features(last_in, "value")
    assert got.shape == (2, 17, 64) and dense.shape == (2, 16, 64)  # class token + 4x4 patches; D = 64
    torch.testing.assert_close(dense, got[:, 1:])
    # not the final patch tokens: the value path skips the query-key attention, residual and MLP
    assert not torch.allclose(dense, p, atol=1e-3)


def test_value_features_apply_the_last_blocks_layerscale():
    net = make().eval()
    block = net.backbone.tuned_blocks[-1]
    block.ls_1 = LayerScale(net.backbone.width, 0.5)
    with torch.no_grad():
        block.ls_1.gamma.uniform_(0.1, 2.0)
        _, last_in, *_ = _intermediates(net, torch.randn(2, 3, 64, 64))
        torch.testing.assert_close(
            net.backbone.value_features(last_in), _value_path_by_hand(net.backbone, last_in), rtol=1e-4, atol=1e-5
        )
        torch.testing.assert_close(
            net.backbone.value_features(last_in), _self_only_attention(net.backbone, last_in), rtol=1e-4, atol=1e-5
        )


def test_glmcm_dense_features_are_the_last_block_run_with_self_only_attention():
    """GL-MCM's local features (AtsuMiyai/GL-MCM clip/model.py, commit 8708a08): v = x + out_proj(value(ln_1 x)),
    v = v + mlp(ln_2 v), then ln_post and proj; i.e. the whole block with each token attending to itself."""
    net = make().eval()
    bb = net.backbone
    block = bb.tuned_blocks[-1]
    with torch.no_grad():
        _, last_in, _, p, _ = _intermediates(net, torch.randn(2, 3, 64, 64))
        T = last_in.shape[1]
        mask = torch.full((T, T), float("-inf")).fill_diagonal_(0.0)
        expected = bb.project(block(last_in, attn_mask=mask))[:, 1:]
        got = bb.dense_features(last_in)  # the default kind is glmcm
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bb.dense_features(last_in, "glmcm"), got)
        assert not torch.allclose(got, bb.dense_features(last_in, "value"), atol=1e-3)
        assert not torch.allclose(got, p, atol=1e-3)  # not the final tokens either
    with pytest.raises(ValueError, match="glmcm, value"):
        bb.dense_features(last_in, "tokens")


@pytest.mark.parametrize("change", ["custom_block", "custom_attention", "unknown_layerscale"])
def test_another_block_structure_fails_loudly(change):
    net = make()
    bb, W = net.backbone, net.backbone.width
    if change == "custom_block":  # open_clip's other block type (own attention, optional qk-norm)
        bb.visual.transformer.resblocks[-1] = CustomResidualAttentionBlock(W, 2)
        expected = "attn is Attention"
    elif change == "custom_attention":
        bb.tuned_blocks[-1].attn = Attention(W, 2)
        expected = "attn is Attention"
    else:
        bb.tuned_blocks[-1].ls_1 = torch.nn.Linear(W, W)
        expected = "ls_1 is Linear"
    with pytest.raises(ConfigError, match=expected):
        bb.value_features(torch.randn(1, 17, W))
    with pytest.raises(ConfigError, match="ResidualAttentionBlock"):  # the net refuses to be built on it
        CFSGNet(bb, net.text, 4)


# ---------------------------------------------------------------- scores and switches
@pytest.mark.parametrize("glmcm_local", ["glmcm", "value"])
def test_glmcm_is_the_published_score_over_all_patches(glmcm_local):
    net = make(glmcm_local=glmcm_local).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        out = net(x)
        _, last_in, g, _, t = _intermediates(net, x)
        dense = net.backbone.dense_features(last_in, glmcm_local)

    def mcm(feat, temperature):  # max_k softmax_k(cos(feat, t_k) / T)
        return (F.normalize(feat, dim=-1) @ F.normalize(t, dim=-1).t() / temperature).softmax(-1).max(-1).values

    assert net.mcm_temperature == 1.0  # MCM and GL-MCM use T = 1
    expected = 1 - (mcm(g, 1.0) + mcm(dense, 1.0).max(dim=1).values) / 2
    torch.testing.assert_close(out["score_glmcm"], expected)
    torch.testing.assert_close(out["score_mcm"], 1 - mcm(g, 1.0))
    sharp = make(mcm_temperature=0.01, glmcm_local=glmcm_local).eval()
    with torch.no_grad():
        out_sharp = sharp(x)
    torch.testing.assert_close(out_sharp["score_glmcm"], 1 - (mcm(g, 0.01) + mcm(dense, 0.01).max(dim=1).values) / 2)
    torch.testing.assert_close(out_sharp["logits"], out["logits"])  # T changes the scores only


@pytest.mark.parametrize("dense_mode", ["value", "glmcm", "tokens"])
def test_sfm_dense_picks_the_features_of_the_patch_text_affinity(dense_mode):
    net = make(sfm_dense=dense_mode).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = net(x)
        _, last_in, g, p, t = _intermediates(net, x)
        dense = p if dense_mode == "tokens" else net.backbone.dense_features(last_in, dense_mode)
        want = net.sfm(g, p, t, affinity_feat=dense)
        other = net.sfm(
            g, p, t, affinity_feat=net.backbone.dense_features(last_in, "value" if dense_mode != "value" else "glmcm")
        )
    torch.testing.assert_close(out["relevance"], want.relevance)
    assert torch.equal(out["keep_idx"], want.keep_idx)
    torch.testing.assert_close(out["feat_local"], want.local)  # pooled from the final patch tokens either way
    torch.testing.assert_close(out["logits_coarse"], net.coarse_head(want.coarse))
    assert not torch.allclose(out["relevance"], other.relevance)


def test_use_sfm_false_pools_all_patches_and_classifies_the_global_feature():
    net = make(use_sfm=False).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = net(x)
        _, _, g, p, _ = _intermediates(net, x)
    torch.testing.assert_close(out["feat_local"], p.mean(dim=1))
    torch.testing.assert_close(out["logits_coarse"], net.coarse_head(g))
    assert out["keep_idx"].shape == (2, 16)
    with torch.no_grad():
        on = make(use_sfm=True).eval()(x)  # same seed, same weights: only the switch differs
    assert not torch.allclose(on["logits_coarse"], out["logits_coarse"])
    torch.testing.assert_close(on["feat_global"], out["feat_global"])


def test_use_vsi_false_runs_the_fine_branch_without_cues():
    net = make(use_vsi=False).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = net(x)
        h, _, _, _, _ = _intermediates(net, x)
        bb = net.backbone
        kept = torch.gather(h[:, 1:], 1, out["keep_idx"].unsqueeze(-1).expand(-1, -1, h.shape[-1]))
        z_f = bb.project(bb.tuned(torch.cat([h[:, :1], kept], dim=1))[:, :1])[:, 0]
        torch.testing.assert_close(out["feat"], z_f)
        net.prototypes.update(torch.randn(4, 64), torch.arange(4))  # prototypes are unused without VSI
        torch.testing.assert_close(net(x)["logits_fine"], out["logits_fine"])
        on = make(use_vsi=True).eval()(x)
    assert not torch.allclose(on["logits_fine"], out["logits_fine"])
    torch.testing.assert_close(on["logits_coarse"], out["logits_coarse"])  # the coarse branch is unaffected


def test_sfm_posterior_scale_and_ova_bias_reach_the_modules():
    x = torch.randn(2, 3, 64, 64)
    default, soft = make().eval(), make(sfm_posterior_scale=1.0, ova_bias=True).eval()
    assert default.sfm.logit_scale == 100.0 and soft.sfm.logit_scale == 1.0
    assert default.ova.fc.bias is None and soft.ova.fc.bias is not None  # OpenMatch's head has no bias
    with torch.no_grad():
        _, _, g, _, t = _intermediates(default, x)
        torch.testing.assert_close(
            default.sfm.class_posterior(g, t), (100 * F.normalize(g, dim=-1) @ F.normalize(t, dim=-1).t()).softmax(-1)
        )
        assert not torch.allclose(default(x)["relevance"], soft(x)["relevance"])
    with pytest.raises(ConfigError, match="sfm_posterior_scale"):
        make(sfm_posterior_scale=0.0)
    with pytest.raises(ConfigError, match="mcm_temperature"):
        make(mcm_temperature=-1.0)


def test_cosine_head_weights_are_out_of_weight_decay_in_usbs_optimizer():
    from semilearn.core.utils import get_optimizer

    net = make()
    opt = get_optimizer(net, "AdamW", lr=1e-3, weight_decay=0.05)
    decay_of = {id(p): group["weight_decay"] for group in opt.param_groups for p in group["params"]}
    params = dict(net.named_parameters())
    for name in ("coarse_head.weight", "fine_head.weight", "vsi.type_embedding"):
        assert decay_of[id(params[name])] == 0.0, name
    for name in ("ova.fc.weight", "vsi.proj.weight", "backbone.visual.proj"):
        assert decay_of[id(params[name])] == 0.05, name


def test_zs_weight_zero_builds_no_reference_and_keeps_the_checkpoint_keys():
    net = make()
    assert net.zero_shot is None and "logits_zs" not in net(torch.randn(1, 3, 64, 64))
    assert not any(k.startswith("zero_shot.") for k in net.state_dict())


@pytest.mark.parametrize("weight", [0.5, 1.0])
def test_zs_weight_mixes_the_frozen_zero_shot_classifier_into_the_closed_logits(weight):
    net = make(zs_weight=weight).eval()
    x = torch.randn(3, 3, 64, 64)
    out = net(x)
    # at construction the reference equals the net: CLIP's zero-shot classifier on the heads' scale 30
    zs = 30.0 * F.normalize(out["feat_global"].float(), dim=-1) @ net.text_embeddings().float().t()
    torch.testing.assert_close(out["logits_zs"], zs, atol=1e-4, rtol=1e-4)
    trained = (out["logits_coarse"] + out["logits_fine"]) / 2
    torch.testing.assert_close(out["logits"], (1 - weight) * trained + weight * out["logits_zs"])
    if weight == 1.0:
        torch.testing.assert_close(out["logits"], out["logits_zs"])


def test_zero_shot_reference_stays_frozen_while_the_tuned_blocks_train():
    net = make(zs_weight=0.5)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        before = net(x)["logits_zs"]
    assert len(net.zero_shot.tail.visual.transformer.resblocks) == 2  # only the tuned blocks are copied
    assert not any(p.requires_grad for p in net.zero_shot.tail.parameters())
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        out = net(x)
        F.cross_entropy(out["logits"], torch.tensor([0, 1, 2, 3])).backward()
        assert all(p.grad is None for p in net.zero_shot.tail.parameters())
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        after = net(x)
    torch.testing.assert_close(after["logits_zs"], before)
    trained, frozen = net.backbone.visual.transformer.resblocks[2], net.zero_shot.tail.visual.transformer.resblocks[0]
    assert not torch.equal(trained.mlp.c_fc.weight, frozen.mlp.c_fc.weight)  # the net did train


def test_zero_shot_reference_round_trips_through_a_checkpoint():
    net = make(zs_weight=0.5)
    with torch.no_grad():
        for p in net.zero_shot.tail.parameters():
            p.add_(0.01 * torch.randn_like(p))  # a reference that differs from the (re-)initialised copy
    x = torch.randn(2, 3, 64, 64)
    other = make(zs_weight=0.5)
    other.load_state_dict(net.state_dict())
    torch.testing.assert_close(other.eval()(x)["logits_zs"], net.eval()(x)["logits_zs"])
    assert "zero_shot.text" in net.state_dict()
    # a checkpoint of the previous release (zs_tail.*, zs_text) loads into the same prior
    legacy = {
        (k.replace("zero_shot.tail.", "zs_tail.") if k.startswith("zero_shot.tail.") else k): v
        for k, v in net.state_dict().items()
    }
    legacy["zs_text"] = legacy.pop("zero_shot.text")
    third = make(zs_weight=0.5)
    third.load_state_dict(legacy)
    torch.testing.assert_close(third.eval()(x)["logits_zs"], net.eval()(x)["logits_zs"])


@pytest.mark.parametrize("weight", [-0.1, 1.5])
def test_zs_weight_outside_the_unit_interval_is_a_config_error(weight):
    with pytest.raises(ConfigError, match=r"zs_weight must be in \[0, 1\]"):
        make(zs_weight=weight)


def test_fine_tokens_all_shows_every_patch_to_the_fine_branch():
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        # without VSI the fine branch depends only on its tokens: all patches = the no-SFM fine branch
        all_tokens = make(use_vsi=False, fine_tokens="all").eval()(x)
        no_sfm = make(use_vsi=False, use_sfm=False).eval()(x)
        kept = make(use_vsi=False).eval()(x)
    torch.testing.assert_close(all_tokens["logits_fine"], no_sfm["logits_fine"])
    assert not torch.allclose(all_tokens["logits_fine"], kept["logits_fine"])
    # the SFM still shapes the coarse branch and still reports its kept patches
    torch.testing.assert_close(all_tokens["logits_coarse"], kept["logits_coarse"])
    assert torch.equal(all_tokens["keep_idx"], kept["keep_idx"])
    with pytest.raises(ConfigError, match="fine_tokens must be kept or all"):
        make(fine_tokens="some")


def test_sfm_oracle_keeps_the_patches_showing_the_mark():
    net = make(sfm_oracle="mark", input_mean=(0.5, 0.5, 0.5), input_std=(0.5, 0.5, 0.5)).eval()
    x = torch.zeros(2, 3, 64, 64)  # gray (0.5 before normalisation)
    x[0, :, 48:64, 0:16] = torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1)  # red in patch 12
    x[1, :, 0:16, 16:32] = torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1)  # red in patch 1
    keep = net(x)["keep_idx"]
    assert keep[0, 0] == 12 and keep[1, 0] == 1
    anti = make(sfm_oracle="anti", input_mean=(0.5,) * 3, input_std=(0.5,) * 3).eval()
    keep = anti(x)["keep_idx"]
    assert 12 not in keep[0].tolist() and 1 not in keep[1].tolist()
    with pytest.raises(ConfigError, match="sfm_oracle"):
        make(sfm_oracle="mark")  # no input normalisation to undo


def test_sfm_scales_clip_takes_the_checkpoints_logit_scale_and_keeps_it_in_the_state():
    net = make(sfm_scales="clip")
    scale = float(net.sfm_clip_scale)
    assert scale == pytest.approx(1 / 0.07, rel=1e-4)  # open_clip's initial logit scale (a random init here)
    net(torch.randn(1, 3, 64, 64))
    assert net.sfm.logit_scale == pytest.approx(scale) and net.sfm.temperature == pytest.approx(1 / scale)
    state = net.state_dict()
    state["sfm_clip_scale"] = torch.tensor(5.0)  # a checkpoint trained on a CLIP with logit scale 5
    other = make(sfm_scales="clip")
    other.load_state_dict(state)
    other(torch.randn(1, 3, 64, 64))
    assert other.sfm.logit_scale == 5.0 and other.sfm.temperature == 0.2
    assert "sfm_clip_scale" not in make().state_dict()  # fixed scales: checkpoints keep their keys


def test_vsi_own_cues_come_from_each_images_local_feature():
    net = make(vsi_cues="own").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = net(x)["logits_fine"]
        net.prototypes.update(torch.randn(8, 64), torch.arange(4).repeat(2), torch.ones(8, dtype=torch.bool))
        after = net(x)["logits_fine"]
    torch.testing.assert_close(before, after)  # prototypes play no part
    torch.manual_seed(1)
    h = net.backbone.trunk(x)
    own = torch.randn(2, 64)
    cues, topk = net.vsi(torch.randn(2, 4), net.prototypes.get(), net.text(), own=own)
    manual = net.vsi.proj(
        torch.cat([F.normalize(own, dim=-1)[:, None].expand(-1, 3, -1), F.normalize(net.text(), dim=-1)[topk]], -1)
    )
    torch.testing.assert_close(cues, manual + net.vsi.type_embedding)
    assert h.shape[0] == 2


def test_key_bias_is_a_soft_token_filter():
    bb = make().backbone.eval()
    h = bb.trunk(torch.randn(2, 3, 64, 64))
    zero = torch.zeros(2, h.shape[1])
    with torch.no_grad():
        torch.testing.assert_close(bb.tuned_until_last(h, zero), bb.tuned_until_last(h))
        # a very negative bias on patches 5.. hides them: the other tokens' outputs equal a run without them
        drop = zero.clone()
        drop[:, 5:] = -1e4
        state = bb.last_block_state(bb.tuned_until_last(h, drop))
        hidden = bb.last_block_queries(state, key_bias=drop)
        short = bb.last_block_queries(bb.last_block_state(bb.tuned_until_last(h[:, :5])))
        torch.testing.assert_close(hidden, short, atol=1e-4, rtol=1e-4)


def test_sfm_filter_soft_shows_every_patch_and_trains_the_relevance():
    net = make(sfm_filter="soft")
    x = torch.randn(2, 3, 64, 64)
    out = net(x)
    assert out["keep_idx"].shape == (2, 4)  # the SFM still selects (coarse branch, localization)
    out["logits_fine"].sum().backward()
    # the fine loss reaches the blocks that make the relevance only through the attention bias:
    # with the hard filter the kept patches are indices, so the relevance gets no gradient from it
    relevance_grad = net.sfm  # no parameters: check the dense features' block instead
    assert relevance_grad is not None
    soft_grad = net.backbone.tuned_blocks[-1].attn.in_proj_weight.grad.clone()
    hard = make(fine_tokens="all")
    hard.load_state_dict(net.state_dict())
    hard(x)["logits_fine"].sum().backward()
    assert not torch.allclose(soft_grad, hard.backbone.tuned_blocks[-1].attn.in_proj_weight.grad)
    with pytest.raises(ConfigError, match="sfm_filter"):
        make(sfm_filter="soft", use_sfm=False)


def _grads(net, prefix):
    return [p.grad for n, p in net.named_parameters() if n.startswith(prefix) and p.requires_grad]


@pytest.mark.parametrize("fine_blocks", ["separate", "frozen"])
def test_fine_blocks_copy_the_pretrained_blocks_and_give_the_same_outputs_at_construction(fine_blocks):
    shared, copied = make().eval(), make(fine_blocks=fine_blocks).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = shared(x), copied(x)
    for key in ("logits", "logits_fine", "logits_ova", "logits_coarse"):
        torch.testing.assert_close(a[key], b[key])
    for block, copy_ in zip(copied.backbone.tuned_blocks, copied.fine_backbone.tuned_blocks):
        assert block is not copy_ and torch.equal(block.mlp.c_fc.weight, copy_.mlp.c_fc.weight)
    assert copied.fine_backbone.visual.ln_post is not copied.backbone.visual.ln_post
    assert "fine_backbone" not in dict(shared.named_children())  # the default adds no parameters


def test_fine_blocks_separate_trains_its_copy_from_the_fine_loss_only():
    net = make(fine_blocks="separate")
    x = torch.randn(2, 3, 64, 64)
    net(x)["logits_fine"].sum().backward()
    assert all(g is None for g in _grads(net, "backbone.visual.transformer"))  # the coarse branch's blocks
    assert all(g is not None and g.abs().sum() > 0 for g in _grads(net, "fine_backbone.visual.transformer"))
    net.zero_grad(set_to_none=True)
    net(x)["logits_coarse"].sum().backward()
    assert all(g is None for g in _grads(net, "fine_backbone."))
    assert all(g is not None for g in _grads(net, "backbone.visual.transformer"))


def test_fine_blocks_frozen_lets_only_the_cues_and_heads_learn_from_the_fine_loss():
    net = make(fine_blocks="frozen", vsi_inject="deep")
    assert not any(p.requires_grad for p in net.fine_backbone.parameters())
    before = {k: v.clone() for k, v in net.fine_backbone.state_dict().items()}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1.0)
    out = net(torch.randn(2, 3, 64, 64))
    (out["logits_fine"].logsumexp(1) + out["logits_ova"].sum((1, 2))).sum().backward()
    for name in ("vsi.proj.weight", "vsi.deep.0.weight", "vsi.type_embedding", "fine_head.weight", "ova.fc.weight"):
        assert net.get_parameter(name).grad.abs().sum() > 0, name
    assert all(g is None for g in _grads(net, "backbone."))
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in net.fine_backbone.state_dict().items())


def test_deep_prompts_replace_the_cue_positions_before_every_later_block():
    bb = BUILDERS["clip_tiny"](
        num_classes=4, pretrained="none", img_size=64, head="cfsg", num_tuned_blocks=3,
        class_names=["a", "b", "c", "d"], text_encoder="clip",
    ).backbone.eval()  # fmt: skip
    h = bb.trunk(torch.randn(2, 3, 64, 64))
    p1, p2 = torch.randn(2, 2, bb.width), torch.randn(2, 2, bb.width)
    blocks = bb.tuned_blocks
    with torch.no_grad():
        x = bb._run(blocks[:1], h)
        x = bb._run(blocks[1:2], torch.cat([x[:, :-2], p1], 1))
        manual = torch.cat([x[:, :-2], p2], 1)
        torch.testing.assert_close(bb.tuned_until_last(h, prompts=(p1, p2)), manual)
        torch.testing.assert_close(bb.tuned_until_last(h, prompts=()), bb.tuned_until_last(h))
    with pytest.raises(ValueError, match="3 deep prompts for 2 blocks"):
        bb.tuned_until_last(h, prompts=(p1, p2, p1))


def test_vsi_inject_deep_gives_every_tuned_block_its_own_cues():
    net = make(vsi_inject="deep")
    assert len(net.vsi.deep) == 1  # 2 tuned blocks: the input's cues and the last block's
    x = torch.randn(2, 3, 64, 64)
    out = net(x)
    out["logits_fine"].sum().backward()
    assert net.vsi.deep[0].weight.grad.abs().sum() > 0 and net.vsi.proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        net.vsi.deep[0].weight.add_(torch.randn_like(net.vsi.deep[0].weight))  # (a constant: LayerNorm removes it)
        assert not torch.allclose(net(x)["logits_fine"], out["logits_fine"])
    assert len(make().vsi.deep) == 0  # input: the cues enter the first tuned block only


@pytest.mark.parametrize(
    "switches,match",
    [
        (dict(vsi_inject="deep", use_vsi=False), "needs use_vsi"),
        (dict(vsi_inject="every"), "vsi_inject must be one of input, deep"),
        (dict(fine_blocks="copy"), "fine_blocks must be one of shared, separate, frozen"),
        (dict(fine_blocks="separate", zs_weight=0.5, zs_mode="weights"), "zs_mode: weights merges"),
    ],
)
def test_vsi_inject_and_fine_blocks_reject_what_cannot_work(switches, match):
    with pytest.raises(ConfigError, match=match):
        make(**switches)
