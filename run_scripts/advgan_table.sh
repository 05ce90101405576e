#!/usr/bin/env bash
# Table 1 of "From Adversarial Training to Generative Adversarial Networks"
# (Rob-GAN / AdvGAN), CIFAR-10 row, or its CPU-scale Fashion-MNIST
# counterpart: co-training (eq. 9), fine-tuning (eq. 10), a PGD-AT7 baseline of
# this project, then robust accuracy of both classifiers at the table's eps
# columns with PGD-20 (step eps/5) and AutoAttack, on the TEST split, written
# next to the paper's numbers.
#
#   bash run_scripts/advgan_table.sh                       # CPU scale (Fashion-MNIST), seed 0
#   SCALE=cifar10 bash run_scripts/advgan_table.sh         # the paper's CIFAR-10 row (GPU)
#   ABLATION=1 bash run_scripts/advgan_table.sh            # also eq. 8 (AC-GAN loss): co-train, fine-tune, evaluate
#
# Env: SCALE (cpu | cifar10), OUT (default runs/advgan_<scale>), SEED (0), DATA_DIR (optional),
# EPS (eps columns in [0, 1] units; default cpu "0 0.05 0.1 0.2", cifar10 "0 0.01 0.02 0.04" = the
# paper's 0 / 0.02 / 0.04 / 0.08 in [-1, 1] units), NUM_EXAMPLES (PGD-20 examples: cpu 1000, cifar10
# all), NUM_AA (AutoAttack examples: cpu 100, cifar10 1000), BASELINE (an existing PGD-AT run to reuse),
# BASELINE_ARGS (cpu: --train_steps=1800, the real images of co-training + fine-tuning at batch 64;
# cifar10: none, the project's PGD-AT7 schedule), FEATURE_NET (a classifier export: FCD and classifier
# score of the generators), and CO_ARGS / FT_ARGS / EVAL_ARGS (extra flags, e.g. for a tiny trial).
# A finished stage (its export or results.json exists) is skipped; a killed training resumes.
# Results: $OUT/eval/<run>/eps<eps>/results.json (clean, PGD-20) and .../aa/ (AutoAttack), the
# table in $OUT/table.md, each stage's wall time in $OUT/stage_seconds.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
SCALE="${SCALE:-cpu}"
SEED="${SEED:-0}"
OUT="${OUT:-runs/advgan_${SCALE}}"
DATA=()
if [ -n "${DATA_DIR:-}" ]; then DATA=(--data_dir="$DATA_DIR" --nodownload); fi
if [ "$SCALE" = cpu ]; then
  EPS="${EPS:-0 0.05 0.1 0.2}"; NUM_EXAMPLES="${NUM_EXAMPLES:-1000}"; NUM_AA="${NUM_AA:-100}"
  BASELINE_ARGS="${BASELINE_ARGS:---train_steps=1800}"
elif [ "$SCALE" = cifar10 ]; then
  EPS="${EPS:-0 0.01 0.02 0.04}"; NUM_EXAMPLES="${NUM_EXAMPLES:-all}"; NUM_AA="${NUM_AA:-1000}"
  BASELINE_ARGS="${BASELINE_ARGS:-}"
else
  echo "SCALE must be cpu or cifar10, got $SCALE" >&2; exit 2
fi
read -r -a CO_EXTRA <<< "${CO_ARGS:-}"
read -r -a FT_EXTRA <<< "${FT_ARGS:-}"
read -r -a EVAL_EXTRA <<< "${EVAL_ARGS:-}"
read -r -a BASE_EXTRA <<< "$BASELINE_ARGS"
NUM=()
if [ "$NUM_EXAMPLES" != all ]; then NUM=(--num_examples="$NUM_EXAMPLES"); fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
mkdir -p "$OUT"
TIMES="$OUT/stage_seconds.txt"

stage() {  # stage NAME COMMAND...: runs and times one stage, its output in $OUT/NAME.log
  local name="$1"; shift
  echo "== $name ($(date -u +%H:%M:%S))"
  local start; start=$(date +%s)
  if ! "$@" >> "$OUT/$name.log" 2>&1; then echo "   failed: see $OUT/$name.log"; tail -3 "$OUT/$name.log"; exit 1; fi
  echo "$name $(( $(date +%s) - start ))" >> "$TIMES"
  tail -1 "$OUT/$name.log"
}

train() {  # train NAME FLAGFILE ARGS...
  local name="$1" flagfile="$2"; shift 2
  if [ -e "$OUT/$name/export/metadata.json" ]; then echo "== $name: trained"; return; fi
  stage "$name" "$PY" -m jarn_tf.train --flagfile="$flagfile" --seed="$SEED" "${DATA[@]}" \
    --model_dir="$OUT/$name" --verbose=0 "$@"
}

evaluate() {  # evaluate RUN: PGD-20 (step eps/5) and AutoAttack at every eps column, test split
  local run="$1" eps step
  for eps in $EPS; do
    local dir="$OUT/eval/$run/eps$eps"
    if [ "$(awk "BEGIN {print ($eps == 0)}")" = 1 ]; then
      [ -e "$dir/results.json" ] || stage "eval_${run}_eps$eps" "$PY" -m jarn_tf.evaluate --model="$OUT/$run" \
        --split=test --attacks=clean --eps=0 "${NUM[@]}" --output_dir="$dir" \
        --noeps_checks --square_check_queries=0 --verbose=0 "${DATA[@]}" "${EVAL_EXTRA[@]}"
      continue
    fi
    step=$(awk "BEGIN {printf \"%.10g\", $eps / 5}")
    [ -e "$dir/results.json" ] || stage "eval_${run}_eps$eps" "$PY" -m jarn_tf.evaluate --model="$OUT/$run" \
      --split=test --attacks=clean,pgd20 --eps="$eps" --pgd_step_size="$step" "${NUM[@]}" \
      --output_dir="$dir" --noeps_checks --square_check_queries=0 --verbose=0 "${DATA[@]}" "${EVAL_EXTRA[@]}"
    [ -e "$dir/aa/results.json" ] || stage "eval_${run}_eps${eps}_aa" "$PY" -m jarn_tf.evaluate \
      --model="$OUT/$run" --split=test --attacks=autoattack --eps="$eps" --num_examples="$NUM_AA" \
      --output_dir="$dir/aa" --noeps_checks --square_check_queries=0 --verbose=0 "${DATA[@]}" "${EVAL_EXTRA[@]}"
  done
}

LOSSES="advgan"
if [ "${ABLATION:-0}" = 1 ]; then LOSSES="advgan advgan_acgan"; fi
RUNS=()
for loss in $LOSSES; do
  co="${loss}_seed$SEED"; ft="${loss}_ft_seed$SEED"
  train "$co" "flags/${SCALE}_${loss}.cfg" "${CO_EXTRA[@]}"
  train "$ft" "flags/${SCALE}_advgan_finetune.cfg" --init_from="$OUT/$co" "${FT_EXTRA[@]}"
  RUNS+=("$ft")
  if [ -n "${FEATURE_NET:-}" ] && [ ! -e "$OUT/$co/eval_gan/results.json" ]; then
    stage "fcd_$co" "$PY" -m jarn_tf.evaluate_gan --model="$OUT/$co" --metrics=fcd,classifier_score \
      --feature_network="$FEATURE_NET" --seed="$SEED" --verbose=0 "${DATA[@]}"
  fi
done
if [ -n "${BASELINE:-}" ]; then  # reused, not retrained (linked; its results go to $OUT/eval/)
  ln -sfn "$(realpath "$BASELINE")" "$OUT/pgd_at7_seed$SEED"
else
  train "pgd_at7_seed$SEED" "flags/${SCALE}_pgd_at7.cfg" "${BASE_EXTRA[@]}"
fi
RUNS+=("pgd_at7_seed$SEED")
for run in "${RUNS[@]}"; do evaluate "$run"; done

"$PY" - "$OUT" "$SCALE" "$SEED" "$EPS" "${RUNS[@]}" <<'EOF'
import json, os, sys

out, scale, seed, eps_list, runs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(), sys.argv[5:]
times = {}
if os.path.exists(os.path.join(out, "stage_seconds.txt")):
    for line in open(os.path.join(out, "stage_seconds.txt")):
        name, sec = line.split()
        times[name] = times.get(name, 0) + int(sec)


def acc(run, eps, aa):
    path = os.path.join(out, "eval", run, f"eps{eps}", "aa" if aa else "", "results.json")
    if not os.path.exists(path):
        return None, None
    r = json.load(open(path))
    key = "autoattack" if aa else ("clean" if float(eps) == 0 else "pgd20")
    return 100 * r["accuracy"][key], r["num_examples"]


def cell(run, eps):
    pgd, n = acc(run, eps, False)
    if float(eps) == 0:
        return "n/a" if pgd is None else f"{pgd:.2f}"
    aa, m = acc(run, eps, True)
    return f"{'n/a' if pgd is None else f'{pgd:.2f}'} / {'n/a' if aa is None else f'{aa:.2f}'}"


names = {"advgan": "AdvGAN (eq. 9), fine-tuned", "advgan_acgan": "AdvGAN (eq. 8, AC-GAN loss), fine-tuned",
         "pgd_at7": "PGD-AT7 (Madry et al.)"}
lines = [f"# Rob-GAN / AdvGAN, Table 1 ({'CIFAR-10' if scale == 'cifar10' else 'CPU scale: Fashion-MNIST'}, seed {seed})", "",
         "Accuracy (%) on the test split, clean at eps 0, else PGD-20 (step eps/5, random start) / AutoAttack "
         "(standard: APGD-CE, APGD-T, FAB-T, Square). eps in [0, 1] image units (the paper's [-1, 1] eps are twice "
         "these).", "",
         "| model | " + " | ".join(f"eps {e}" for e in eps_list) + " | training (s) |",
         "|---|" + "---|" * (len(eps_list) + 1)]
for run in runs:
    base = run.rsplit("_seed", 1)[0]
    label = names.get(base.replace("_ft", ""), base)
    co = base.replace("_ft", "") + f"_seed{seed}"
    seconds = times.get(run, 0) + (times.get(co, 0) if base.endswith("_ft") else 0)
    lines.append(f"| {label} (ours) | " + " | ".join(cell(run, e) for e in eps_list) + f" | {seconds or 'n/a'} |")
paper = ["81.1", "70.41", "57.43", "30.25"]
madry = ["81.45", "69.15", "53.74", "23.58"]  # the paper's numbers minus its improvements (-0.35/1.26/3.69/6.67)
if scale == "cifar10" and len(eps_list) == 4:
    lines.append("| AdvGAN, paper (PGD) | " + " | ".join(paper) + " | |")
    lines.append("| Madry et al., paper (implied) | " + " | ".join(madry) + " | |")
lines += ["", "Paper, CIFAR-10 (PGD; eps 0 / 0.02 / 0.04 / 0.08 in [-1, 1] units = 0 / 0.01 / 0.02 / 0.04 here): "
          "AdvGAN " + " / ".join(paper) + " %, Madry et al. (implied by its reported improvements) "
          + " / ".join(madry) + " %."]
if scale != "cifar10":
    lines.append("The CPU rows are Fashion-MNIST at this project's eps columns, not comparable with the paper's numbers.")
n = {}
for run in runs:
    for e in eps_list:
        for aa in (False, True):
            _, k = acc(run, e, aa)
            if k:
                n["AutoAttack" if aa else "clean / PGD-20"] = k
lines.append("Examples: " + ", ".join(f"{k} on the first {v} test images" for k, v in n.items()) + ".")
text = "\n".join(lines) + "\n"
open(os.path.join(out, "table.md"), "w").write(text)
print(text)
EOF
