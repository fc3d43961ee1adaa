#!/usr/bin/env bash
# Reproduces the committed reference results from scratch (about 75 minutes on 2 CPU cores):
#   results/quick             the offline demo (lossbench compare with no arguments)
#   results/cifar10           real CIFAR-10 (the JPEG image folder), cifar10_groups, 6 losses x 3 seeds
#   results/synthetic100      100 synthetic classes with the CIFAR-100 superclass hierarchy as the score table
#   results/cifar10_lr_sweep  every loss at 5 learning rates spanning 100x (1 seed, shorter runs)
# Usage: scripts/reference_results.sh [ARCHIVE]   (default archive: ../shared/data/cifar10-jpeg.tar.gz)
set -euo pipefail
cd "$(dirname "$0")/.."
lossbench=${LOSSBENCH:-.venv/bin/lossbench}
archive=${1:-../shared/data/cifar10-jpeg.tar.gz}
root=data/cifar10  # git-ignored

for name in quick cifar10 synthetic100 cifar10_lr_sweep; do
  if [ -e "results/$name" ]; then echo "results/$name exists: remove it first" >&2; exit 2; fi
done
if [ ! -d "$root/train" ]; then
  mkdir -p data
  tar -xzf "$archive" -C data
fi

"$lossbench" compare --out results/quick
"$lossbench" compare experiment=cifar10_folder "data.root=$root" "seeds=[0,1,2]" --out results/cifar10
"$lossbench" compare experiment=synthetic100 --out results/synthetic100
"$lossbench" compare experiment=cifar10_folder "data.root=$root" data.train_size=10000 train.epochs=5 \
  optim.lr=0.01,0.03,0.1,0.3,1.0 --out results/cifar10_lr_sweep

# Checkpoints and Hydra's per-job files stay out of git (.gitignore); the rest is the committed result.
find results -name checkpoint.pt -delete
