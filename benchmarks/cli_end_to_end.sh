#!/usr/bin/env bash
# Issue "training subpackage", done-when: pre-train on the MNI 2009a white-matter boundary, fine-tune
# on the AFIDs T1w template for a few hundred CPU steps, evaluate on randomly deformed copies, all
# from the CLI; compare with an (almost) untrained model. Usage: bash benchmarks/cli_end_to_end.sh [WORK]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="$(cd .. && pwd)/shared/data"
WORK="${1:-/tmp/dglandmark-e2e}"
rm -rf "$WORK" && mkdir -p "$WORK"
printf 'image,label\n%s,%s\n' "$DATA/mni-icbm152-2009a/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz" \
    "$DATA/mni-icbm152-2009a/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz" > "$WORK/seg.csv"
printf 'image,landmarks\n%s,%s\n' "$DATA/afids-mni2009c/tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz" \
    "$DATA/afids-mni2009c/tpl-MNI152NLin2009cAsym_res-01_desc-groundtruth_afids.fcsv" > "$WORK/train.csv"
# small network and grid so that it runs in minutes on 2 CPU cores (same shapes as the coarse stage)
printf 'base_width = 16\ndepth = 3\nblocks_per_stage = 1\ngrid_size = 64\n' > "$WORK/small.toml"
python scripts/make_test_domains.py --out "$WORK/deformed" --cases 4 --seed 1000 > /dev/null

time dglandmark-train pretrain --data "$WORK/seg.csv" --labels ">127" --target boundary --loss mix \
    --max-dist 5 --protocol afids32 --config "$WORK/small.toml" --max-steps 100 --out "$WORK/pretrain"
time dglandmark-train finetune --data "$WORK/train.csv" --protocol afids32 --init "$WORK/pretrain/model.safetensors" \
    --max-steps 300 --out "$WORK/finetune"
dglandmark-train finetune --data "$WORK/train.csv" --protocol afids32 --max-steps 1 --out "$WORK/untrained"
dglandmark-train evaluate --model "$WORK/finetune/model.safetensors" --data "$WORK/deformed" --out "$WORK/eval"
dglandmark-train evaluate --model "$WORK/untrained/model.safetensors" --data "$WORK/deformed" --out "$WORK/eval-untrained"
python - "$WORK" <<'PY'
import json, sys
w = sys.argv[1]
for name in ("eval", "eval-untrained"):
    m = json.load(open(f"{w}/{name}/metrics.json"))
    o = m.get("overall", m)
    print(name, {k: o[k] for k in o if k in ("mre_mm", "median_mm", "sdr_2mm", "sdr_4mm", "failures")})
PY
