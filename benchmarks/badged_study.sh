#!/usr/bin/env bash
# The fine-grained testbed study (docs/results/badged.md): regime, controls and readings on fmnist_badged.
#   bash benchmarks/badged_study.sh [SEEDS...]        (default: seed 0, the screen; "0 1 2" for the 3-seed table)
# Needs the badged demo CLIP (the recipe's defaults: 1,200 steps, p_fine 0.5, 32 px marks):
#   python -m usb_cfsg_tools.demo_clip --recipe badged --out ./saved_models/demo_clip_badged
# Every run is a compare row (same data, split, backbone, prior where named, budget); JOBS runs at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
JOBS=${JOBS:-2}
SEEDS=("${@:-0}")
OUT=${OUT:-saved_models/badged_study}
CFG=config/demo/cfsg_fmnist_badged.yaml
export OMP_WAIT_POLICY=PASSIVE
"$PY" -m usb_cfsg_tools.compare --c "$CFG" --seeds "${SEEDS[@]}" --save_dir "$OUT" --jobs "$JOBS" \
  --algorithms clip_zeroshot fixmatch openmatch cfsg_clip \
  --variants \
    "fixmatch_prior:fixmatch,zs_weight=0.5" \
    "openmatch_prior:openmatch,zs_weight=0.5" \
    "cfsg_zs0:cfsg_clip,zs_weight=0" \
    "cfsg_no_sfm:cfsg_clip,use_sfm=false" \
    "cfsg_no_vsi:cfsg_clip,use_vsi=false" \
    "cfsg_oracle:cfsg_clip,sfm_oracle=mark" \
    "cfsg_random:cfsg_clip,sfm_oracle=random" \
    "cfsg_anti:cfsg_clip,sfm_oracle=anti" \
    "cfsg_no_sfm_zs0:cfsg_clip,use_sfm=false,zs_weight=0" \
    "cfsg_oracle_zs0:cfsg_clip,sfm_oracle=mark,zs_weight=0" \
    "cfsg_scales_clip:cfsg_clip,sfm_scales=clip" \
    "cfsg_contrastive:cfsg_clip,sfm_relevance=contrastive" \
    "cfsg_soft:cfsg_clip,sfm_filter=soft" \
    "cfsg_own_cues:cfsg_clip,vsi_cues=own" \
    "cfsg_labeled_cues:cfsg_clip,vsi_cues=labeled" \
    "cfsg_deep:cfsg_clip,vsi_inject=deep" \
    "cfsg_separate:cfsg_clip,fine_blocks=separate" \
    "cfsg_frozen:cfsg_clip,fine_blocks=frozen" \
    "cfsg_deep_frozen:cfsg_clip,vsi_inject=deep,fine_blocks=frozen" \
    "cfsg_pc07:cfsg_clip,p_cutoff=0.7" \
    "cfsg_no_sfm_pc07:cfsg_clip,use_sfm=false,p_cutoff=0.7" \
    "cfsg_trained_pl:cfsg_clip,pseudo_labels=trained" \
    "cfsg_no_sfm_trained_pl:cfsg_clip,use_sfm=false,pseudo_labels=trained" \
    "cfsg_oracle_trained_pl:cfsg_clip,sfm_oracle=mark,pseudo_labels=trained" \
    "fullysupervised_all:fullysupervised,num_labels=7200" \
    "fullysupervised_all_3000:fullysupervised,num_labels=7200,num_train_iter=3000,num_eval_iter=750"
