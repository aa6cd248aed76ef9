#!/usr/bin/env bash
# The commands a user runs first, in the environment at $1 (a venv): a zoo checkpoint is converted
# (its BatchNorms must all fold), exported to ONNX and verified.
set -euo pipefail
BIN="$1/bin"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
ARCH=(--arch acb_resnet18 --arch-kwargs '{"num_classes": 10}')
"$BIN/python" -c "import torch; from reparam.zoo import create_model; torch.manual_seed(0);
torch.save(create_model('acb_resnet18', num_classes=10).state_dict(), '$WORK/ckpt.pth')"
"$BIN/reparam" --quiet convert "$WORK/ckpt.pth" "${ARCH[@]}" --input-shape 1x3x32x32 -o "$WORK/model.pt2" >/dev/null
"$BIN/python" - "$WORK/model.pt2.report.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
before, after = report["before"]["modules"], report["after"]["modules"]
print(f"convert: BatchNorm2d {before.get('BatchNorm2d')} -> {after.get('BatchNorm2d', 0)}, "
      f"Conv2d {before['Conv2d']} -> {after['Conv2d']}")
if before.get("BatchNorm2d") != 54 or after.get("BatchNorm2d", 0) or after["Conv2d"] != 20:
    sys.exit("convert did not fuse acb_resnet18 into 20 convs without BatchNorm")
PY
"$BIN/reparam" export onnx "$WORK/model.pt2" -o "$WORK/model.onnx"
"$BIN/reparam" verify "$WORK/ckpt.pth" "${ARCH[@]}" --deploy "$WORK/model.pt2" --onnx "$WORK/model.onnx"
echo "torch $("$BIN/python" -c 'import torch; print(torch.__version__)'): convert, export onnx and verify passed"
